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
from hepc.errors import HepcError, StepFailed
from hepc.execute.progress import StepProgress
from hepc.graph import StepSpec
from hepc.plan import Plan, make_plan
from hepc.steps import RunContext, body
from hepc.store import LeaseBusy, LeaseLost, Store

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
    """Check every committed object of `graph`; quarantine the damaged ones. Returns their labels."""
    damaged = []
    for step in graph.order():
        path = store.find(step)
        if path is not None and _damaged(step, path, store, note):
            damaged.append(f"{step.kind}/{path.name}")
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
    if damaged is None:
        damaged = check_committed(compiled.graph, store)
    plan = make_plan(compiled, store)
    record = store.open_record(compiled.spec.name, resolved_spec, plan.to_json())
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
        record.event("interrupted")
        raise
    except HepcError as e:
        record.event("error", error=str(e))
        raise
    finally:
        progress.close()
    store.clear_stale_leases(set(runner.done))
    record.event("finish", ran=runner.ran)
    return plan


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def _sigterm_interrupts():
    """SIGTERM (preemption, `kill`) stops a run like Ctrl-C: checkpoint, release, record, exit 130."""
    installed = threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    )
    if installed:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _Runner:
    def __init__(self, graph, store: Store, runtime: dict, record, progress: StepProgress):
        self.graph, self.store, self.runtime, self.record, self.progress = graph, store, runtime, record, progress
        self.order: list[StepSpec] = graph.order()
        self.done: dict[str, Path] = {}  # key → committed folder, as last seen
        self.waiting: dict[str, object] = {}  # key → holder we told the user about
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
                time.sleep(LEASE_POLL_S)
                store.refresh()

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
        work = store.prepare_work(step)
        staged = store.stage(step)
        progress.start(step.kind, step.name)
        record.event("begin", key=step.key, kind=step.kind, name=step.name)
        t0 = time.time()

        def report(info: dict) -> None:
            lease.check()  # a process that lost its lease stops its step here
            progress.update(info)

        ctx = RunContext(runtime=self.runtime, progress=report)
        try:
            summary = body(step.kind)(step, inputs, staged, work, ctx)
            if not lease.still_mine():
                raise LeaseLost("lease lost before commit")
        except LeaseLost as e:
            shutil.rmtree(staged, ignore_errors=True)
            record.event("lost", key=step.key, kind=step.kind, name=step.name, error=str(e))
            progress.finish(None, "stopped: lease taken over by another process")
            return "lost"
        except KeyboardInterrupt:
            shutil.rmtree(staged, ignore_errors=True)
            record.event("interrupted", key=step.key, kind=step.kind, name=step.name)
            raise
        except HepcError:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        except Exception as e:  # a step body failed: keep finished work, say which step and why
            shutil.rmtree(staged, ignore_errors=True)
            if _any_missing(inputs):  # a concurrent gc took an input away: recompute it, not a failure
                record.event("missing", key=step.key, kind=step.kind, name=step.name, error=f"{type(e).__name__}")
                progress.finish(None, "input vanished; recomputing it")
                self.store.refresh()
                for key in step.upstream():
                    self.done.pop(key, None)
                return "input"
            message = f"{type(e).__name__}: {e}"
            store.mark_failed(step, message)
            record.event("failed", key=step.key, kind=step.kind, name=step.name, error=message)
            raise StepFailed(f"step {step.kind} {step.name} ({step.key12}) failed: {message}") from e
        dest = store.commit(step, staged, summary, _provenance(t0))
        store.finish_work(step)
        record.event("done", key=step.key, kind=step.kind, name=step.name, wall_s=round(time.time() - t0, 3))
        progress.finish(summary)
        self.done[step.key] = dest
        self.ran += 1
        return "done"


def _any_missing(inputs: dict) -> bool:
    for v in inputs.values():
        for p in v if isinstance(v, list) else [v]:
            if not (Path(p) / "manifest.json").is_file():
                return True
    return False
