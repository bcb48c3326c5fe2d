"""The driver: runs the steps of a graph until every one is committed, one lease per step, atomic
commits, one run record per invocation. Step bodies run in this process (the local backend).

Scheduling: steps are taken in topological order (trajectory-major), but a step whose lease is held
by another live process is skipped in favour of any other ready step; the driver waits only when
nothing else is ready. So two `hepc run` processes on one store split the work between them.

Integrity: before a run, every committed object of the graph is checked (stat signatures, hashing
only what changed, see hepc.verify), and every input is checked again right before a step uses
it. A damaged object is named on stderr, moved to `quarantine/` and recomputed; an input that has
vanished (a concurrent `hepc gc`) is recomputed too. Nothing damaged is ever used.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from hepc import __version__
from hepc.errors import HepcError, StepFailed, StoreError
from hepc.execute.progress import StepProgress
from hepc.graph import StepSpec
from hepc.plan import Plan, make_plan
from hepc.safe_io import os_error_message
from hepc.steps import RunContext, body
from hepc.store import LeaseBusy, LeaseLost, Store
from hepc.store_lease import describe

LEASE_POLL_S = 1.0


def _provenance(t0: float) -> dict:
    torch = sys.modules.get("torch")
    return {
        "hepc": __version__,
        "python": platform.python_version(),
        "torch": getattr(torch, "__version__", None),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": t0,
        "wall_s": round(time.time() - t0, 3),
    }


def check_committed(graph, store: Store, note=None) -> list[str]:
    """Check every committed object of `graph`; quarantine the damaged ones, and object folders left
    without a manifest (they would block the commit). Returns their labels."""
    damaged = []
    for step in graph.order():
        path = store.find(step)
        if path is not None and _damaged(step, path, store, note):
            damaged.append(f"{step.kind}/{path.name}")
        elif path is None and (orphan := store.orphan(step)) is not None:
            moved = store.quarantine(orphan, recheck=False)
            (note or _stderr)(
                f"object folder {step.kind}/{orphan.name} has no manifest.json (incomplete or damaged); "
                f"moved to {moved}; recomputing it"
            )
            damaged.append(f"{step.kind}/{orphan.name}")
    return damaged


def _damaged(step: StepSpec, path: Path, store: Store, note) -> bool:
    problems = store.check(path)
    if not problems:
        return False
    moved = store.quarantine(path)
    where = f"moved to {moved}" if moved is not None else "already moved aside"
    message = f"damaged object {step.kind}/{path.name}: {'; '.join(problems)}; {where}; recomputing it"
    (note or _stderr)(message)
    return True


def _stderr(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def execute(
    compiled, store: Store, runtime: dict, resolved_spec: dict, *, quiet: bool = False, damaged: list[str] | None = None
) -> Plan:
    """Run every step of the graph that is not committed. Returns the plan it started from.

    `damaged`: what the caller's own `check_committed` found (None: check here)."""
    store.open_for_writing()
    if damaged is None:
        damaged = check_committed(compiled.graph, store)
    plan = make_plan(compiled, store)
    try:
        record = store.open_record(compiled.spec.name, resolved_spec, plan.to_json())
    except StoreError as e:
        if plan.to_run:
            raise
        raise StoreError(
            f"nothing to run, but {e}; `hepc results` on the same spec shows the results without writing"
        ) from None
    todo = plan.to_run
    record.event("start", to_run=len(todo), steps=len(plan.steps), pid=os.getpid(), host=socket.gethostname())
    for label in damaged:
        record.event("damaged", object=label)
    progress = StepProgress(len(todo), quiet=quiet or not todo)
    runner = _Runner(compiled.graph, store, runtime, record, progress)
    try:
        with _sigterm_interrupts():
            runner.run_all()
    except KeyboardInterrupt:
        record.try_event("interrupted")
        raise
    except HepcError as e:
        record.try_event("error", error=str(e))
        raise
    finally:
        progress.close()
    store.clear_stale_leases(set(runner.done))
    record.event("finish", ran=runner.ran)
    return plan


def _raise_interrupt(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one interrupt is enough: let the clean-up finish
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def _sigterm_interrupts():
    """SIGTERM (preemption, `kill`) stops a run like Ctrl-C: checkpoint, release, record, exit 130.

    The handler stays installed after the run (a second SIGTERM during the clean-up must not kill
    the process with the default action, exit 143); the CLI ignores further signals once it exits."""
    if threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, _raise_interrupt)
    ):
        signal.signal(signal.SIGTERM, _raise_interrupt)
    yield


class _Runner:
    def __init__(self, graph, store: Store, runtime: dict, record, progress: StepProgress):
        self.graph, self.store, self.runtime, self.record, self.progress = graph, store, runtime, record, progress
        self.order: list[StepSpec] = graph.order()
        self.done: dict[str, Path] = {}  # key → committed folder, as last seen
        self.waiting: dict[str, object] = {}  # key → holder we told the user about
        self.suspect: dict[str, str] = {}  # key → why its lease is suspect (see store_lease)
        self.ran = 0

    # ------------------------------------------------------------------ the loop
    def run_all(self) -> None:
        store = self.store
        for step in self.order:  # what is committed already (and was checked by execute)
            found = store.find(step)
            if found is not None:
                self.done[step.key] = found
        while True:
            pending = [s for s in self.order if s.key not in self.done]
            if not pending:
                return
            progressed = False
            for step in pending:
                found = store.find(step)
                if found is not None:
                    self._committed_elsewhere(step, found)
                    progressed = True
                    continue
                if not all(u in self.done for u in step.upstream()):
                    continue
                outcome = self._attempt(step)
                if outcome != "busy":
                    progressed = True
                    break  # rescan from the start: keeps the topological preference
            if not progressed:
                self._give_up_on_suspects(pending)
                time.sleep(LEASE_POLL_S)
                store.refresh()

    def _give_up_on_suspects(self, pending: list[StepSpec]) -> None:
        """Nothing can progress: if what blocks the run is suspect leases only, say so and stop
        (waiting would be forever); finished steps stay committed."""
        blocked = {s.key for s in pending if all(u in self.done for u in s.upstream())}
        if not blocked or not blocked <= set(self.suspect):
            return
        root = self.store.root
        keys = " ".join(k[:12] for k in sorted(blocked))
        lines = [f"{self.graph[k].kind} {self.graph[k].name}: lease {k[:12]} is suspect ({self.suspect[k]})"
                 for k in sorted(blocked)]
        raise StoreError(
            "; ".join(lines) + f"; if no hepc process holds it, clear it with `hepc unlock {keys} --store {root}` "
            "and run again (finished steps are committed)"
        )

    def _lost(self, step: StepSpec, staged: Path, why: str) -> str:
        """This process no longer holds the step's lease: drop its staging, write nothing else."""
        shutil.rmtree(staged, ignore_errors=True)
        self.record.try_event("lost", key=step.key, kind=step.kind, name=step.name, error=why)
        self.progress.finish(None, "stopped: lease taken over by another process")
        return "lost"

    def _committed_elsewhere(self, step: StepSpec, path: Path) -> None:
        """Another process committed `step` while this one was busy: check it, use it, say so."""
        self.waiting.pop(step.key, None)
        if _damaged(step, path, self.store, self.progress.note):
            self.record.event("damaged", object=f"{step.kind}/{path.name}")
            return
        self.done[step.key] = path
        self.record.event("skip", key=step.key, kind=step.kind, name=step.name, reason="committed elsewhere")
        self.progress.start(step.kind, step.name)
        self.progress.finish(None, "committed by another process")

    # ------------------------------------------------------------------ one step
    def _attempt(self, step: StepSpec) -> str:
        """Try to run `step`: 'done', 'committed' (elsewhere), 'busy' (leased), 'lost', 'input'."""
        store = self.store
        try:
            lease = store.lease(step)
        except LeaseBusy as busy:
            holder = {k: v for k, v in busy.holder.items() if not k.startswith("_")}
            if busy.suspect:
                self.suspect[step.key] = describe(busy.holder)
            else:
                self.suspect.pop(step.key, None)
            if self.waiting.get(step.key) != holder:
                self.waiting[step.key] = holder
                self.record.event("wait", key=step.key, kind=step.kind, name=step.name, holder=holder)
                self.progress.note(
                    f"{step.kind} {step.name} is running in pid {holder.get('pid')} on {holder.get('host')}; "
                    "doing other work meanwhile"
                )
            return "busy"
        with lease:
            found = store.find(step, fresh=True)
            if found is not None:
                store.finish_work(step)  # leftovers of an attempt killed after its commit
                self._committed_elsewhere(step, found)
                return "committed"
            inputs = self._inputs(step)
            if inputs is None:
                return "input"
            return self._run_leased(step, inputs, lease)

    def _inputs(self, step: StepSpec) -> dict | None:
        """The committed, intact folders of the step's inputs; None (and forgotten) if one is not."""
        paths: dict[str, Path] = {}
        bad = False
        for key in step.upstream():
            up = self.graph[key]
            path = self.store.find(up, fresh=True)
            if path is None:
                self.progress.note(f"input {up.kind}/{up.dirname} of {step.kind} {step.name} is gone; recomputing it")
                self.record.event("missing", key=up.key, kind=up.kind, name=up.name)
                bad = True
            elif _damaged(up, path, self.store, self.progress.note):
                self.record.event("damaged", object=f"{up.kind}/{path.name}")
                bad = True
            else:
                paths[key] = path
                continue
            self.done.pop(key, None)
            self.progress.add(1)
        if bad:
            return None

        def pick(v):
            return [paths[k] for k in v] if isinstance(v, list) else paths[v]

        return {role: pick(v) for role, v in step.inputs.items()}

    def _run_leased(self, step: StepSpec, inputs: dict, lease) -> str:
        store, record, progress = self.store, self.record, self.progress
        record.event("begin", key=step.key, kind=step.kind, name=step.name)
        try:
            work = store.prepare_work(step)
            staged = store.stage(step)
        except OSError as e:
            raise StoreError(f"{step.kind} {step.name}: {os_error_message(e, store.root)}") from None
        progress.start(step.kind, step.name)
        t0 = time.time()

        def report(info: dict) -> None:
            lease.check()  # a process that lost its lease stops its step here
            progress.update(info)

        def guard() -> None:
            """Called before a step writes into work/ or commits: only the lease holder may."""
            if not lease.still_mine():
                raise LeaseLost("lease lost")

        def note(text: str) -> None:
            progress.note(text)
            record.try_event("note", key=step.key, kind=step.kind, name=step.name, text=text)

        ctx = RunContext(runtime=self.runtime, progress=report, note=note, guard=guard)
        try:
            summary = body(step.kind)(step, inputs, staged, work, ctx)
            guard()
        except LeaseLost as e:
            return self._lost(step, staged, str(e))
        except KeyboardInterrupt:
            shutil.rmtree(staged, ignore_errors=True)
            record.try_event("interrupted", key=step.key, kind=step.kind, name=step.name)
            raise
        except HepcError:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        except Exception as e:  # a step body failed: keep finished work, say which step and why
            shutil.rmtree(staged, ignore_errors=True)
            if not lease.still_mine():  # stopped, taken over, maybe committed elsewhere: not a failure
                return self._lost(step, staged, f"{type(e).__name__} after the lease was lost")
            if _any_missing(inputs):  # a concurrent gc took an input away: recompute it, not a failure
                record.event("missing", key=step.key, kind=step.kind, name=step.name, error=f"{type(e).__name__}")
                progress.finish(None, "input vanished; recomputing it")
                self.store.refresh()
                for key in step.upstream():
                    self.done.pop(key, None)
                return "input"
            disk = _disk_error(e)
            if disk is not None:  # the disk, not the step: no failed.json, the step resumes later
                record.try_event("error", key=step.key, kind=step.kind, name=step.name, error=str(disk))
                raise StoreError(f"{step.kind} {step.name}: {os_error_message(disk, store.root)}") from None
            message = f"{type(e).__name__}: {e}"
            store.mark_failed(step, message)
            record.event("failed", key=step.key, kind=step.kind, name=step.name, error=message)
            raise StepFailed(f"step {step.kind} {step.name} ({step.key12}) failed: {message}") from e
        try:
            dest = store.commit(step, staged, summary, _provenance(t0))
        except OSError as e:
            shutil.rmtree(staged, ignore_errors=True)
            raise StoreError(f"{step.kind} {step.name} not committed: {os_error_message(e, store.root)}") from None
        store.finish_work(step)
        record.event("done", key=step.key, kind=step.kind, name=step.name, wall_s=round(time.time() - t0, 3))
        progress.finish(summary)
        self.done[step.key] = dest
        self.ran += 1
        return "done"


def _disk_error(e: BaseException) -> OSError | None:
    """The OSError behind `e` if the disk is full or read-only (also when a writer wraps it)."""
    import errno

    from hepc.safe_io import DISK_FULL, os_error_behind

    found = os_error_behind(e)
    return found if found is not None and (found.errno in DISK_FULL or found.errno == errno.EROFS) else None


def _any_missing(inputs: dict) -> bool:
    for v in inputs.values():
        for p in v if isinstance(v, list) else [v]:
            if not (Path(p) / "manifest.json").is_file():
                return True
    return False
