"""Local worker processes for `hepc run --jobs N`: each worker is a fresh Python process that runs
one step at a time (hepc.execute.attempt) and talks to the driver over its own socket pair.

Fresh, not forked (a forked copy of a driver that has imported torch and started threads is not
safe), and started with this module's own entry point rather than multiprocessing's `spawn`
bootstrap: that bootstrap reads its start-up data from the driver before any of our code runs, so
a driver killed in that instant left a traceback from every starting worker. Here the first thing
a worker reads is its arguments, and a driver gone by then just ends it quietly.

One socket per worker, not a shared queue: a worker killed with SIGKILL can never leave a lock held
that other workers then wait on; its end of the socket just closes, and its process sentinel tells
the driver it died. Its step's lease names a dead pid, so the next attempt takes the lease over
and resumes the step from its mid-cycle checkpoint.

Signals: a worker ignores SIGINT (a Ctrl-C in the terminal reaches the whole process group; the
driver decides) and turns SIGTERM into an interrupt, which a training cycle honours at its next
step boundary with a checkpoint. The driver sends SIGTERM once to stop a worker cleanly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_any
from pathlib import Path

from hepc.compile.graph import StepSpec


class Worker:
    """The driver's handle on one worker process (started on first use, restarted after a death)."""

    def __init__(self, slot: int, label: str, env: dict[str, str], runtime: dict, root: Path):
        self.slot, self.label, self.env, self.runtime, self.root = slot, label, env, runtime, root
        self.proc: Child | None = None
        self.conn = None
        self.step: StepSpec | None = None  # in flight
        self.stopping = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def start(self) -> None:
        if self.proc is not None:  # a dead worker not yet reported: let go of its handles
            self.proc.release()
            self.conn.close()
        here, there = socket.socketpair()
        popen = subprocess.Popen(
            worker_command(there.fileno()),
            pass_fds=(there.fileno(),),
            env={**os.environ, **self.env},  # before anything imports torch: devices, thread counts
        )
        there.close()
        self.proc = Child(popen)
        self.conn = Connection(here.detach())
        self.conn.send((str(self.root), self.runtime, self.label))
        self.stopping = False

    def submit(self, step: StepSpec, upstream: dict[str, StepSpec]) -> None:
        if not self.alive():
            self.start()
        self.step = step
        self.conn.send((step, upstream))

    def interrupt(self) -> None:
        """Stop the step in flight cleanly (a checkpoint at the next step boundary), then exit."""
        if self.alive() and not self.stopping:
            self.stopping = True
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def close(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.alive() and self.step is None:
            try:
                self.conn.send(None)  # idle: exit now
            except (OSError, ValueError):
                pass
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(2)
        try:
            self.conn.close()
        except OSError:
            pass
        self.proc.release()
        self.proc = None


class Child:
    """A worker process, with what the driver needs of it: liveness, a handle that becomes ready
    when it exits (a pidfd, where the system has them), its exit code (minus the signal that
    killed it), and ways to stop it."""

    def __init__(self, popen: subprocess.Popen):
        self.popen, self.pid = popen, popen.pid
        self.sentinel = os.pidfd_open(popen.pid) if hasattr(os, "pidfd_open") else None

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def join(self, timeout: float) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def terminate(self) -> None:
        self.popen.terminate()  # nothing once it has been reaped (Popen checks)

    def kill(self) -> None:
        self.popen.kill()

    def release(self) -> None:
        if self.sentinel is not None:
            os.close(self.sentinel)
            self.sentinel = None


class LocalPool:
    """N workers; `poll` returns what they said (and which died) since the last call."""

    def __init__(self, workers: list[Worker]):
        self.workers = workers

    def idle(self) -> list[Worker]:
        return [w for w in self.workers if w.step is None]

    def busy(self) -> list[Worker]:
        return [w for w in self.workers if w.step is not None]

    def poll(self, timeout: float) -> list[tuple[Worker, tuple]]:
        """Messages as (worker, message); a worker that died gives (worker, ("died", exitcode))."""
        live = [w for w in self.workers if w.proc is not None]
        if not live:
            time.sleep(timeout)
            return []
        handles = {}
        for w in live:
            handles[w.conn] = w
            if w.proc.sentinel is not None:  # elsewhere a death shows as the pipe closing
                handles[w.proc.sentinel] = w
        ready = wait_any(list(handles), timeout)
        out: list[tuple[Worker, tuple]] = []
        dead: list[Worker] = []
        for h in ready:
            w = handles[h]
            if h is w.conn:
                try:
                    while w.conn.poll():
                        out.append((w, w.conn.recv()))
                except (EOFError, OSError):
                    if w not in dead:
                        dead.append(w)
            elif w not in dead:
                dead.append(w)
        for w in dead:
            if w.proc is None:
                continue
            try:  # what it said before it went
                while w.conn.poll():
                    out.append((w, w.conn.recv()))
            except (EOFError, OSError):
                pass
            w.proc.join(5)
            code = w.proc.exitcode
            try:
                w.conn.close()
            except OSError:
                pass
            w.proc.release()
            w.proc = None
            out.append((w, ("died", code)))
        return out

    def close(self) -> None:
        for w in self.workers:
            w.close()


# --------------------------------------------------------------------------- the worker process


def worker_command(fd: int) -> list[str]:
    """The command line of a worker talking over descriptor `fd`: this interpreter, its flags and
    its module path; SIGINT ignored from the first line (the driver decides about Ctrl-C)."""
    boot = (
        "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); import sys; "
        f"sys.path[:] = {sys.path!r}; from hepc.execute.pool import child_main; child_main()"
    )
    return [sys.executable, *subprocess._args_from_interpreter_flags(), "-c", boot, str(fd)]


def child_main() -> None:
    """The worker's entry point: its socket's descriptor is its one argument, and the driver's first
    message its arguments. A driver that died before sending them leaves nothing to do."""
    conn = Connection(int(sys.argv[1]))
    try:
        args = conn.recv()
    except (EOFError, OSError):
        return
    worker_main(conn, *args)


def worker_main(conn, root: str, runtime: dict, label: str) -> None:
    """Run steps sent by the driver until it sends None, goes away, or interrupts this worker. An
    interrupt or a vanished driver at any point (even while torch is still being imported) ends the
    worker quietly: the driver, if alive, reports; an orphan has no one to report to. (Its
    environment and ignored SIGINT come from `Worker.start` and `worker_command`.)"""
    signal.signal(signal.SIGTERM, _interrupt)
    _watch_parent(os.getppid())
    try:
        _serve(conn, root, runtime, label)
    except (KeyboardInterrupt, EOFError, BrokenPipeError, ConnectionResetError):
        return  # interrupted while idle or starting, or the driver is gone


def _serve(conn, root: str, runtime: dict, label: str) -> None:
    if runtime.get("threads"):
        import torch

        torch.set_num_threads(int(runtime["threads"]))

    from hepc.errors import HepcError, data_cause
    from hepc.execute.attempt import Attempt
    from hepc.store.objects import Store

    lock = threading.Lock()

    def emit(kind: str, /, **fields) -> None:
        with lock:
            conn.send(("emit", kind, fields))

    attempt = Attempt(Store(root), runtime, emit, worker=label)
    while True:
        task = conn.recv()
        if task is None:
            return
        step, upstream = task
        try:
            outcome = attempt.run(step, upstream)
        except HepcError as e:
            conn.send(("error", type(e).__name__, [str(p) for p in e.problems], data_cause(e)))
            continue
        except KeyboardInterrupt:
            conn.send(("interrupted", step.key))
            return
        except Exception as e:  # noqa: BLE001  (a bug: the driver names it and stops the run)
            conn.send(("crash", f"{type(e).__name__}: {e}", traceback.format_exc()))
            continue
        conn.send(("result", asdict(outcome)))


def _interrupt(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the clean-up must finish
    raise KeyboardInterrupt(f"signal {signum}")


def _watch_parent(parent: int) -> None:
    """If the driver dies (kill -9), stop this worker's step cleanly instead of running on alone."""

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, daemon=True, name="hepc-parent-watch").start()
