"""Leases: one `leases/<key>` file per running step, so that two processes never run one step twice.

A lease is created complete or not at all: its JSON is written to a private file that is then
hard-linked to `leases/<key>` (link fails if the name exists, like O_EXCL, but never leaves an
empty file behind). While a step runs, a heartbeat thread touches the lease every few seconds
(`os.utime`: atomic, and it never overwrites a lease that someone else has taken over) and checks
that the file still names this holder; if not, the lease is *lost* and the step must stop.

A lease is stale when its process is gone (same host: pid absent, or reused by a process with
another start time) or when its heartbeat (the file's mtime) is older than the timeout
(`$HEPC_LEASE_TIMEOUT_S`, default 60 s). Take-over is race-free: a taker must first create
`.takeover-<key>` exclusively; holding it, it judges the lease stale once more and renames it to a
tombstone of its own, then competes like everyone else to create the new lease (an exclusive
create: exactly one process wins). Contenders without the take-over lock wait and retry, so a lease
that another process has just created is never removed.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

DEFAULT_TIMEOUT_S = 60.0


def lease_timeout_s() -> float:
    try:
        return max(0.5, float(os.environ.get("HEPC_LEASE_TIMEOUT_S", DEFAULT_TIMEOUT_S)))
    except ValueError:
        return DEFAULT_TIMEOUT_S


class LeaseBusy(Exception):
    """Another live process holds the lease of this step."""

    def __init__(self, holder: dict):
        self.holder = holder
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
    """The lease's content (None if absent, {} if unreadable) plus its heartbeat (the file's mtime)."""
    try:
        with open(path) as f:
            st = os.fstat(f.fileno())
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        info = json.loads(text)
        if not isinstance(info, dict):
            info = {}
    except ValueError:
        info = {}
    info["_mtime"] = st.st_mtime
    info["_ino"] = (st.st_dev, st.st_ino)
    return info


def is_stale(info: dict, timeout_s: float | None = None, now: float | None = None) -> bool:
    timeout_s = lease_timeout_s() if timeout_s is None else timeout_s
    now = time.time() if now is None else now
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
            try:
                os.utime(self.path)
            except OSError:
                pass
            if not self._mine():
                self.lost = True
                return

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

    def __enter__(self) -> "Lease":
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
                if not is_stale(holder, timeout_s):
                    raise LeaseBusy(holder) from None
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
            if other is not None and is_stale(other, TAKEOVER_LOCK_TIMEOUT_S):
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
    """Remove `path` if it is still the file described by `seen` (same token); else leave it."""
    tomb = path.parent / f".tomb-{path.name}-{uuid.uuid4().hex}"
    try:
        os.rename(path, tomb)
    except FileNotFoundError:
        return
    moved = read_lease(tomb)
    if moved is not None and moved.get("token") != seen.get("token"):
        try:  # not the one we meant: put it back
            os.link(tomb, path)
        except FileExistsError:
            pass
    tomb.unlink(missing_ok=True)
