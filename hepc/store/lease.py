"""Leases: one `leases/<key>` file per running step, so that two processes never run one step twice.

A lease is created complete or not at all: its JSON is written to a private file that is then
hard-linked to `leases/<key>` (link fails if the name exists, like O_EXCL, but never leaves an
empty file behind). While a step runs, a heartbeat thread touches the lease every few seconds
(`os.utime`: atomic, and it never overwrites a lease that someone else has taken over) and checks
that the file still names this holder; if not, the lease is *lost* and the step must stop.

A lease is stale when its process is gone (same host: pid absent, or reused by a process with
another start time), when its heartbeat (the file's mtime) is older than the timeout
(`$HEPC_LEASE_TIMEOUT_S`, default 60 s), or when it is not a lease at all (junk, not JSON, no
holder, a folder or FIFO where the file belongs: hepc writes leases whole, so after a short grace
period such a thing is a leftover). A lease whose heartbeat lies in the future by more than the
timeout is *suspect* (a clock far ahead, or a file someone touched): it is neither waited for
forever nor taken over silently; the run reports it with the command that clears it
(`hepc unlock`). Take-over is race-free: a taker must first create
`.takeover-<key>` exclusively; holding it, it judges the lease stale once more and renames it to a
tombstone of its own, then competes like everyone else to create the new lease (an exclusive
create: exactly one process wins). Contenders without the take-over lock wait and retry, so a lease
that another process has just created is never removed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

from hepc.store.safe_io import read_small

DEFAULT_TIMEOUT_S = 60.0
JUNK_GRACE_S = 2.0  # a lease that is not one (junk) is stale once it is this old
LEASE_LIMIT = 1 << 16  # a lease is a few hundred bytes


def lease_timeout_s() -> float:
    try:
        return max(0.5, float(os.environ.get("HEPC_LEASE_TIMEOUT_S", DEFAULT_TIMEOUT_S)))
    except ValueError:
        return DEFAULT_TIMEOUT_S


class LeaseBusy(Exception):
    """Another live process holds the lease of this step (or a suspect lease blocks it)."""

    def __init__(self, holder: dict, suspect: bool = False):
        self.holder = holder
        self.suspect = suspect
        super().__init__(f"held by pid {holder.get('pid')} on {holder.get('host')}")


class LeaseLost(Exception):
    """This process's lease was taken over (it looked stale to another process) or removed."""


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def pid_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux /proc), to tell a reused pid from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return stat[stat.rindex(")") + 2 :].split()[19]
    except (ValueError, IndexError):
        return None


_HOST = socket.gethostname()


def read_lease(path: Path) -> dict | None:
    """The lease's content (None if absent) plus its heartbeat (the file's mtime). Something that is
    not a lease (unreadable, not JSON, no holder, a folder, a FIFO) gives {"_junk": why, ...}."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return {"_junk": f"unreadable ({e.strerror})", "_mtime": 0.0}
    base = {"_mtime": st.st_mtime, "_ino": (st.st_dev, st.st_ino)}
    try:
        text = read_small(path, LEASE_LIMIT)
        info = json.loads(text.decode("utf-8"))
    except FileNotFoundError:
        return None
    except OSError as e:
        return {**base, "_junk": str(e.strerror or e)}
    except ValueError:
        return {**base, "_junk": "not a lease (unreadable content)"}
    if not isinstance(info, dict) or not isinstance(info.get("token"), str):
        return {**base, "_junk": "not a lease (no holder)"}
    return {**info, **base}


def is_suspect(info: dict, timeout_s: float | None = None, now: float | None = None) -> bool:
    """A real lease whose heartbeat is in the future by more than the timeout."""
    timeout_s = lease_timeout_s() if timeout_s is None else timeout_s
    now = time.time() if now is None else now
    return "_junk" not in info and float(info.get("_mtime", 0.0)) - now > timeout_s


def is_stale(info: dict, timeout_s: float | None = None, now: float | None = None) -> bool:
    timeout_s = lease_timeout_s() if timeout_s is None else timeout_s
    now = time.time() if now is None else now
    if "_junk" in info:  # hepc writes leases whole: junk older than a moment is a leftover
        age = now - float(info.get("_mtime", 0.0))
        return age > JUNK_GRACE_S or age < -JUNK_GRACE_S
    if info.get("host") == _HOST:
        try:
            pid = int(info.get("pid", -1))
        except (TypeError, ValueError):
            pid = -1
        if not pid_alive(pid):
            return True
        started = info.get("pid_start")
        if started is not None and pid_start_time(pid) not in (None, started):
            return True  # the pid now belongs to another process
    return now - float(info.get("_mtime", 0.0)) > timeout_s


class Lease:
    """A held lease. Use `acquire()`; `release()` (or the context manager) gives it back."""

    def __init__(self, path: Path, info: dict, heartbeat_s: float):
        self.path = path
        self.token = info["token"]
        self.info = info
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True, name="hepc-lease")
        self._thread.start()

    # -------------------------------------------------------------------- heartbeat
    def _mine(self) -> bool:
        for attempt in range(3):
            info = read_lease(self.path)
            if info is not None:
                return info.get("token") == self.token
            time.sleep(0.05 * (attempt + 1))  # absent for an instant: someone restoring a tombstone
        return False

    def _beat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            if not self._mine():  # check first: never refresh a lease another process has taken over
                self.lost = True
                return
            try:
                os.utime(self.path)
            except OSError:
                pass

    def check(self) -> None:
        """Raise LeaseLost if the heartbeat found this lease gone or taken over."""
        if self.lost:
            raise LeaseLost(f"lease {self.path.name[:12]} was taken over by another process")

    def still_mine(self) -> bool:
        return not self.lost and self._mine()

    # -------------------------------------------------------------------- release
    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        info = read_lease(self.path)
        if info is not None and info.get("token") == self.token:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(path: Path, step_label: str, *, timeout_s: float | None = None) -> Lease:
    """Create `path` as this process's lease, taking over a stale one; raise LeaseBusy if held."""
    timeout_s = lease_timeout_s() if timeout_s is None else timeout_s
    path.parent.mkdir(parents=True, exist_ok=True)
    info = _holder_info(step_label)
    private = path.parent / f".new-{path.name}-{info['token']}"
    private.write_text(json.dumps(info, sort_keys=True))
    try:
        for attempt in range(100):
            try:
                _create_exclusive(private, path)
            except FileExistsError:
                holder = read_lease(path)
                if holder is None:
                    continue  # released meanwhile: try again
                if not is_stale(holder, timeout_s):  # a dead holder on this host is stale, whatever its mtime
                    raise LeaseBusy(holder, suspect=is_suspect(holder, timeout_s)) from None
                if not _take_over(path, timeout_s):
                    time.sleep(0.01 * (1 + attempt % 5))  # another process is taking it over
                continue
            return Lease(path, info, heartbeat_s=min(5.0, timeout_s / 4))
        raise LeaseBusy(read_lease(path) or {})
    finally:
        private.unlink(missing_ok=True)


def remove_if_stale(path: Path, timeout_s: float | None = None) -> bool:
    """Remove a lease left by a dead process (e.g. killed between its commit and its release)."""
    timeout_s = lease_timeout_s() if timeout_s is None else timeout_s
    holder = read_lease(path)
    if holder is None or not is_stale(holder, timeout_s):
        return False
    return _take_over(path, timeout_s) and not path.exists()


def _holder_info(label: str) -> dict:
    return {
        "pid": os.getpid(),
        "pid_start": pid_start_time(os.getpid()),
        "host": _HOST,
        "step": label,
        "token": uuid.uuid4().hex,
        "started": time.time(),
    }


def _create_exclusive(private: Path, path: Path) -> None:
    """Make `path` a complete copy of `private`, failing with FileExistsError if it exists."""
    try:
        os.link(private, path)
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: O_EXCL, then the content (a brief empty window)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(private.read_text())


TAKEOVER_LOCK_TIMEOUT_S = 10.0  # a take-over lasts milliseconds; a lock this old is a leftover


def _take_over(path: Path, timeout_s: float) -> bool:
    """Remove the stale lease at `path` so that the caller can create its own. Returns False if
    another process is taking it over right now.

    Only the holder of `.takeover-<key>` (created exclusively) may remove somebody else's lease,
    and only after judging it stale again while holding that lock; so no two processes can both
    remove a lease and both believe they won, and a fresh lease is never removed."""
    lock = path.parent / f".takeover-{path.name}"
    info = _holder_info("take-over")
    private = path.parent / f".new-takeover-{path.name}-{info['token']}"
    private.write_text(json.dumps(info, sort_keys=True))
    try:
        try:
            _create_exclusive(private, lock)
        except FileExistsError:
            other = read_lease(lock)
            if other is not None and (
                is_stale(other, TAKEOVER_LOCK_TIMEOUT_S) or is_suspect(other, TAKEOVER_LOCK_TIMEOUT_S)
            ):  # a take-over lasts milliseconds: a lock with a heartbeat far in the future is bogus
                _remove_if_same(lock, other)  # its taker died mid-way
            return False
    finally:
        private.unlink(missing_ok=True)
    try:
        holder = read_lease(path)
        if holder is not None and is_stale(holder, timeout_s):
            _remove_if_same(path, holder)
        return True
    finally:
        _remove_if_same(lock, {"token": info["token"]})


def _remove_if_same(path: Path, seen: dict) -> None:
    """Remove `path` if it is still the file described by `seen` (same token); else leave it.
    Something that is not a lease file (a folder, a FIFO) is moved to the store's quarantine/."""
    tomb = path.parent / f".tomb-{path.name}-{uuid.uuid4().hex}"
    try:
        os.rename(path, tomb)
    except FileNotFoundError:
        return
    if tomb.is_dir() and not tomb.is_symlink():
        dest = path.parent.parent / "quarantine" / f"{time.strftime('%Y%m%d-%H%M%S')}-lease-{uuid.uuid4().hex[:6]}"
        try:
            dest.mkdir(parents=True, exist_ok=True)
            os.rename(tomb, dest / path.name)
        except OSError:
            shutil.rmtree(tomb, ignore_errors=True)
        return
    moved = read_lease(tomb)
    if moved is not None and moved.get("token") != seen.get("token"):
        try:  # not the one we meant: put it back
            os.link(tomb, path)
        except FileExistsError:
            pass
        except OSError:
            pass
    tomb.unlink(missing_ok=True)


def force_remove(path: Path) -> dict | None:
    """Remove the lease at `path` whoever holds it (`hepc unlock`); returns what it held, None if absent."""
    holder = read_lease(path)
    if holder is None:
        return None
    _remove_if_same(path, holder)
    return holder


def describe(info: dict, now: float | None = None) -> str:
    """`pid 123 on host-a, heartbeat 4 s ago` (or what is wrong with a lease that is not one)."""
    now = time.time() if now is None else now
    if "_junk" in info:
        return info["_junk"]
    age = now - float(info.get("_mtime", 0.0))
    beat = f"heartbeat {age:.0f} s ago" if age >= 0 else f"heartbeat {-age:.0f} s in the future"
    pid, host = info.get("pid"), info.get("host")
    if pid is None or host is None:
        return f"a lease that names no {'holder' if pid is None and host is None else 'pid' if pid is None else 'host'}, {beat}"
    return f"pid {pid} on {host}, {beat}"


def held_here(info: dict, timeout_s: float | None = None, now: float | None = None) -> bool:
    """A real lease held by a live process on this host whose heartbeat is current: a running step."""
    return "_junk" not in info and info.get("host") == _HOST and not is_stale(info, timeout_s, now) \
        and not is_suspect(info, timeout_s, now)
