"""The driver: runs the steps of a graph until every one is committed, one lease per step, atomic
commits, one run record per invocation (the driver is its only writer).

Where step bodies run (hepc.execute.backends): in this process (`--jobs 1`), in N local worker
processes (`--jobs N`, hepc.execute.pool), or as Ray tasks (`--backend ray`). Each attempt at a step
(hepc.execute.attempt) takes the step's lease, so whatever runs it, a step runs once at a time.

Scheduling: a step is ready once all its inputs are committed. With one worker, ready steps are
taken in topological order (trajectory-major); with several, the step with the longest chain of
training behind it goes first (a trajectory's next cycle starts as soon as its predecessor commits,
scoring fills the gaps). A step whose lease is held by another live process is skipped in favour of
any other ready step and retried a moment later; the driver waits only when nothing else is ready.
So two `hepc run` processes on one store split the work between them.

Integrity: before a run, every committed object of the graph is checked (stat signatures, hashing
only what changed, see hepc.store.verify), and every input is checked again right before a step uses
it. A damaged object is named on stderr, moved to `quarantine/` and recomputed; an input that has
vanished (a concurrent `hepc gc`) is recomputed too. Nothing damaged is ever used.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from hepc.compile.graph import StepSpec
from hepc.compile.plan import Plan, make_plan
from hepc.errors import HepcError, StoreError
from hepc.execute.attempt import Attempt, Outcome, damaged
from hepc.execute.backends import InlineBackend, make_backend
from hepc.execute.progress import ProgressLog, StepProgress, step_costs
from hepc.store.objects import Store

LEASE_POLL_S = 1.0
POLL_S = 0.2  # how often the driver looks at its workers when nothing arrives


def check_committed(graph, store: Store, note=None) -> list[str]:
    """Check every committed object of `graph`; quarantine the damaged ones, and object folders left
    without a manifest (they would block the commit). Returns their labels.

    One pass over `verified-index.json` (see hepc.store.verify): an object whose folders and files all
    still have the signatures recorded there is intact; any other is checked the full way (manifest,
    listing, sizes, hashing what changed) and its new entry is merged into the index at the end."""
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
    store.save_index()
    return damaged


def _damaged(step: StepSpec, path: Path, store: Store, note) -> bool:
    return damaged(step, path, store, note or _stderr)


def _stderr(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def execute(
    compiled,
    store: Store,
    runtime: dict,
    resolved_spec: dict,
    *,
    quiet: bool = False,
    damaged: list[str] | None = None,
    plan: Plan | None = None,
) -> Plan:
    """Run every step of the graph that is not committed. Returns the plan it started from.

    `damaged`: what the caller's own `check_committed` found (None: check here); `plan`: the caller's
    `make_plan` made after that check (None: make it here). Where step bodies
    run (hepc.execute.backends) is chosen from `runtime`."""
    store.open_for_writing()
    if damaged is None:
        damaged, plan = check_committed(compiled.graph, store), None  # a plan from before the check is stale
    if plan is None:
        plan = make_plan(compiled, store)
    todo = plan.to_run
    if runtime.get("tensorboard") and todo:
        from hepc.execute import tensorboard

        if not tensorboard.available():  # before anything is written
            raise HepcError(f"runtime.tensorboard: {tensorboard.missing_message()}")
    # before the run record: the Ray backend first checks that its nodes see the store (nothing written)
    backend = make_backend(runtime, store, note=_stderr) if todo else InlineBackend(store, runtime)
    try:
        record = store.open_record(compiled.spec.name, resolved_spec, plan.to_json())
    except StoreError as e:
        backend.close()
        if todo:
            raise
        raise StoreError(
            f"nothing to run, but {e}; `hepc results` on the same spec shows the results without writing"
        ) from None
    record.event("start", to_run=len(todo), steps=len(plan.steps), pid=os.getpid(), host=socket.gethostname())
    for label in damaged:
        record.event("damaged", object=label)
    try:
        sinks = _sinks(record, compiled.graph, store, runtime) if todo else []
    except HepcError as e:
        record.try_event("error", error=str(e))
        backend.close()
        raise
    costs = _costs(compiled.graph, plan, store, runtime) if todo else {}
    progress = StepProgress(
        len(todo), quiet=quiet or not todo, costs={p.step.key: costs[p.step.key] for p in todo}, sinks=sinks
    )
    runner = _Runner(compiled.graph, store, runtime, record, progress, backend, costs)
    try:
        with _sigterm_interrupts():
            if todo:
                record.event("backend", **backend.describe())
            runner.run_all()
    except KeyboardInterrupt:
        record.try_event("interrupted")
        raise
    except HepcError as e:
        record.try_event("error", error=str(e))
        raise
    finally:
        try:
            backend.close()
        finally:
            progress.close()
    store.refresh()  # workers committed into the store behind this process's index
    store.save_index()  # inputs this process verified the full way
    store.clear_stale_leases(set(runner.done))
    record.event("finish", ran=runner.ran)
    return plan


def _costs(graph, plan: Plan, store: Store, runtime: dict) -> dict[str, float]:
    """Estimated cost of every step of the graph (weights of the overall progress bar); a resumable
    cycle's to-run cost is what its checkpoint leaves."""
    from hepc.observe.estimate import done_fraction

    done = {
        p.step.key: done_fraction(store.work_status(p.step.key))
        for p in plan.to_run
        if p.status == "resumable" and p.step.kind == "cycle"
    }
    full = step_costs(graph, graph.order(), store.root, runtime, required={p.step.key for p in plan.to_run})
    return {**full, **{k: full[k] * (1.0 - min(0.99, v)) for k, v in done.items() if k in full}}


def _sinks(record, graph, store: Store, runtime: dict) -> list:
    """Where progress figures are recorded besides the display: the run record's progress.jsonl,
    and TensorBoard event files when runtime.tensorboard asks for them."""
    sinks = []
    try:
        sinks.append(ProgressLog(record.folder / "progress.jsonl"))
    except OSError as e:  # a display aid: the run goes on without it
        _stderr(f"progress is not recorded in {record.folder / 'progress.jsonl'}: {e.strerror or e}")
    if runtime.get("tensorboard"):
        from hepc.execute.tensorboard import TensorBoardSink

        sinks.append(TensorBoardSink(record.folder / "tensorboard", graph, store))
    return sinks


def _raise_interrupt(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one interrupt is enough: let the clean-up finish
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def _sigterm_interrupts():
    """SIGTERM (preemption, `kill`) stops a run like Ctrl-C: checkpoint, release, record, exit 130.

    The handler stays installed after the run (a second SIGTERM during the clean-up must not kill
    the process with the default action, exit 143); the CLI ignores further signals once it exits."""
    from hepc.execute.early_signals import terminated_early

    if threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, _raise_interrupt, terminated_early)
    ):
        signal.signal(signal.SIGTERM, _raise_interrupt)
    yield


class _Runner:
    """The scheduling loop: hands ready steps to the backend, turns what comes back into the run
    record, the display and the set of committed steps."""

    def __init__(self, graph, store: Store, runtime: dict, record, progress: StepProgress, backend,
                 costs: dict[str, float]):  # fmt: skip
        self.graph, self.store, self.runtime, self.record, self.progress = graph, store, runtime, record, progress
        self.backend = backend
        self.order: list[StepSpec] = graph.order()
        self.rank = _priorities(self.order, graph) if backend.slots > 1 else None
        self.done: dict[str, Path] = {}  # key → committed folder, as last seen
        self.in_flight: dict[str, object] = {}  # key → the slot running it
        self.retry_at: dict[str, float] = {}  # busy elsewhere: not before then
        self.waiting: dict[str, object] = {}  # key → holder we told the user about
        self.suspect: dict[str, str] = {}  # key → why its lease is suspect (see store_lease)
        self.ran = 0
        self.costs = costs  # key → estimated cost of every step (a recomputed input is added at its cost)
        self.here = Attempt(store, runtime, self._emit_for(None))  # the driver's own checks
        backend.bind(self._emit_for)

    # ------------------------------------------------------------------ the loop
    def run_all(self) -> None:
        store = self.store
        for step in self.order:  # what is committed already (and was checked by execute)
            found = store.find(step)
            if found is not None:
                self.done[step.key] = found
        try:
            self._loop()
        except KeyboardInterrupt:
            self._stop_workers("interrupted")
            raise
        except BaseException:
            self._stop_workers("stopped")
            raise

    def _loop(self) -> None:
        store = self.store
        while True:
            pending = [s for s in self.order if s.key not in self.done]
            if not pending and not self.in_flight:
                return
            now = time.time()
            ready = [
                s for s in pending
                if s.key not in self.in_flight and self.retry_at.get(s.key, 0.0) <= now
                and all(u in self.done for u in s.upstream())
            ]  # fmt: skip
            if self.rank is not None:
                ready.sort(key=lambda s: self.rank[s.key])
            started = False
            for step in ready:
                if not self.backend.free():
                    break
                found = store.find(step)
                if found is not None:
                    self.waiting.pop(step.key, None)
                    self._outcome(self.here.committed_elsewhere(step, found), None)
                    started = True
                    continue
                slot = self.backend.submit(step, self._upstream(step))
                self.in_flight[step.key] = slot
                started = True
                if self.backend.inline:
                    break  # it ran already: look at the graph again (keeps the topological preference)
            if not self.in_flight and not started:
                self._give_up_on_suspects(pending)
                time.sleep(LEASE_POLL_S)
                store.refresh()
                continue
            for slot, message in self.backend.poll(0.0 if started and self.backend.inline else POLL_S):
                self._message(slot, message)

    def _upstream(self, step: StepSpec) -> dict[str, StepSpec]:
        return {k: self.graph[k] for k in step.upstream()}

    def _stop_workers(self, why: str) -> None:
        """Stop every step in flight cleanly (checkpoints), keep what they report, then close."""
        if not self.in_flight:
            return
        if self.backend.slots > 1:
            self.progress.note(f"{why}: stopping {len(self.in_flight)} running step(s) at a checkpoint")
        try:
            for slot, message in self.backend.stop(timeout=120.0):
                self._message(slot, message, stopping=True)
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once (mid-cycle checkpoints still resume)
            self.backend.kill()

    # ------------------------------------------------------------------ what the workers say
    def _emit_for(self, slot):
        def emit(kind: str, /, **fields) -> None:
            self._emitted(slot, kind, fields)

        return emit

    def _emitted(self, slot, kind: str, fields: dict) -> None:
        progress = self.progress
        if kind == "event":
            name, data = fields["name"], fields["fields"]
            if name in ("interrupted", "lost", "error", "note"):
                self.record.try_event(name, **data)
            else:
                self.record.event(name, **data)
        elif kind == "start":
            progress.start(fields["kind"], fields["name"], slot=self._slot_label(slot), key=fields.get("key"))
        elif kind == "update":
            progress.update(fields["info"], slot=self._slot_label(slot))
        elif kind == "finish":
            progress.finish(fields["summary"], fields.get("status", "done"), slot=self._slot_label(slot))
        elif kind == "note":
            progress.note(fields["text"])

    def _slot_label(self, slot):
        if slot is None or self.backend.slots <= 1:
            return None
        return self.backend.label(slot)

    def _message(self, slot, message: tuple, *, stopping: bool = False) -> None:
        kind = message[0]
        if kind == "emit":
            self._emitted(slot, message[1], message[2])
            return
        key = self.backend.finished(slot)
        if kind == "result":
            self.in_flight.pop(key, None)
            self._outcome(Outcome(**message[1]), slot)
        elif kind == "interrupted":
            self.in_flight.pop(key, None)
            if not stopping:  # a worker interrupted on its own (its parent watch, a signal sent to it)
                raise KeyboardInterrupt(f"worker {self.backend.label(slot)} was interrupted")
        elif kind == "error":
            self.in_flight.pop(key, None)
            from hepc import errors
            from hepc.errors import Problem

            cls = getattr(errors, message[1], HepcError)
            cls = cls if isinstance(cls, type) and issubclass(cls, HepcError) else HepcError
            error = cls([Problem("", "", p) for p in message[2]])
            if len(message) > 3 and message[3]:  # a data problem the spec can locate (hepc.errors.data_cause)
                from hepc.data.identity import DataError

                error.__cause__ = DataError(message[3][1], message[3][0])
            if stopping:
                self.progress.note(str(error))
                return
            raise error
        elif kind == "crash":
            self.in_flight.pop(key, None)
            self.record.try_event(
                "crash", key=key, worker=self.backend.label(slot), error=message[1], traceback=message[2]
            )
            error = HepcError(
                f"worker {self.backend.label(slot)} failed unexpectedly: {message[1]} (traceback in the run record)"
            )
            if stopping:
                self.progress.note(str(error))
                return
            raise error
        elif kind == "died":
            if key is None:
                return
            self.in_flight.pop(key, None)
            step = self.graph[key]
            code = message[1]
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            self.record.try_event("worker-died", key=key, kind=step.kind, name=step.name,
                                  worker=self.backend.label(slot), exitcode=code)  # fmt: skip
            self.progress.finish(None, f"worker died ({how})", slot=self._slot_label(slot))
            if not stopping:
                self.progress.note(
                    f"worker {self.backend.label(slot)} died during {step.kind} {step.name} ({how}); "
                    "the step runs again and resumes from its last checkpoint"
                )

    def _outcome(self, outcome: Outcome, slot) -> None:
        key = outcome.key
        step = self.graph[key]
        status = outcome.status
        if status in ("done", "committed"):
            self.done[key] = Path(outcome.dest)
            self.waiting.pop(key, None)
            self.suspect.pop(key, None)
            if status == "done":
                self.ran += 1
        elif status == "busy":
            holder = outcome.holder or {}
            if outcome.suspect is not None:
                self.suspect[key] = outcome.suspect
            else:
                self.suspect.pop(key, None)
            self.retry_at[key] = time.time() + LEASE_POLL_S
            if self.waiting.get(key) != holder:
                self.waiting[key] = holder
                self.record.event("wait", key=key, kind=step.kind, name=step.name, holder=holder)
                self.progress.note(
                    f"{step.kind} {step.name} is running in pid {holder.get('pid')} on {holder.get('host')}; "
                    "doing other work meanwhile"
                )
        elif status == "input":
            for up in outcome.forget:
                if self.done.pop(up, None) is not None:
                    self.progress.add(1, self.costs.get(up))
            self.store.refresh()
        # lost / damaged: not done; the loop looks at the step again

    def _give_up_on_suspects(self, pending: list[StepSpec]) -> None:
        """Nothing can progress: if what blocks the run is suspect leases only, say so and stop
        (waiting would be forever); finished steps stay committed."""
        blocked = {s.key for s in pending if all(u in self.done for u in s.upstream())}
        if not blocked or not blocked <= set(self.suspect):
            return
        root = self.store.root
        keys = " ".join(k[:12] for k in sorted(blocked))
        lines = [
            f"{self.graph[k].kind} {self.graph[k].name}: lease {k[:12]} is suspect ({self.suspect[k]})"
            for k in sorted(blocked)
        ]
        raise StoreError(
            "; ".join(lines) + f"; if no hepc process holds it, clear it with `hepc unlock {keys} --store {root}` "
            "and run again (finished steps are committed)"
        )


def _priorities(order: list[StepSpec], graph) -> dict[str, tuple]:
    """Sort key per step: the longest chain of training (in epochs) that waits on it first, then the
    topological order. Cycles of a trajectory form the critical path; scoring fills the gaps."""
    children: dict[str, list[str]] = {s.key: [] for s in order}
    for s in order:
        for u in s.upstream():
            children.setdefault(u, []).append(s.key)
    chain: dict[str, float] = {}
    for s in reversed(order):
        own = float(s.context.get("epochs", 0.0)) if s.kind == "cycle" else 0.0
        chain[s.key] = own + max((chain[c] for c in children.get(s.key, [])), default=0.0)
    return {s.key: (-chain[s.key], i) for i, s in enumerate(order)}
