"""One attempt at one step, in whatever process runs it (the driver itself, a local worker process
or a Ray task): take the step's lease, check its inputs, run its body into a staging folder,
commit. Everything the driver must know goes through `emit` (run-record events, progress, notes)
and the returned `Outcome`; nothing here touches the run record or the display directly, so the
same code runs in-process and in workers.

`emit(kind, **fields)` messages:
    event(name, fields)          a run-record event (the driver is the record's only writer)
    start(kind, name, key)       the step's body starts
    update(info)                 body progress: step, steps, start_step, global_step, tokens_per_s, lr,
                                 wd; at logged steps loss, ce, kd (distillation only), loss_step
    finish(summary, status)      the step is over (done, stopped, committed by another process ...)
    note(text)                   a warning for the user
    add(n)                       n more steps to run than planned (an input must be recomputed)
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hepc import __version__
from hepc.compile.graph import StepSpec
from hepc.errors import HepcError, StepFailed, StoreError
from hepc.steps import RunContext, body
from hepc.store.layout import write_json_atomic
from hepc.store.lease import LeaseBusy, LeaseLost, describe
from hepc.store.objects import Store
from hepc.store.safe_io import disk_error, os_error_message

LIVE = "live.json"  # work/<key>/live.json: what the step is doing now, for `hepc status`
LIVE_EVERY_S = 2.0
UPDATE_EVERY_S = 0.5  # progress messages to the driver, at most this often (the last one always)

Emit = Callable[..., None]


@dataclass
class Outcome:
    """What one attempt came to.

    status: done | committed (elsewhere) | busy (leased by another live process) | lost (lease
    taken over) | input (an input is gone or damaged: recompute it) | damaged (the step's own
    committed object was damaged and moved aside)."""

    status: str
    key: str
    dest: str | None = None  # the committed folder (done, committed)
    forget: list[str] = field(default_factory=list)  # upstream keys to recompute (input)
    holder: dict | None = None  # busy: who holds the lease
    suspect: str | None = None  # busy: why that lease is suspect, if it is


def provenance(t0: float, worker: str | None = None) -> dict:
    """Where and how a step ran (in its manifest; never in its key)."""
    torch = sys.modules.get("torch")
    out = {
        "hepc": __version__,
        "python": platform.python_version(),
        "torch": getattr(torch, "__version__", None),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": t0,
        "wall_s": round(time.time() - t0, 3),
    }
    if torch is not None:
        out["threads"] = torch.get_num_threads()
        out["device"] = _device_name(torch)
    if worker is not None:
        out["worker"] = worker
    return out


def _device_name(torch) -> str:
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return f"cuda:{torch.cuda.get_device_name(torch.cuda.current_device())}"
    except Exception:  # noqa: BLE001  (a broken driver: the step ran on the CPU anyway)
        return "cpu"
    return "cpu"


def damaged(step: StepSpec, path: Path, store: Store, note: Callable[[str], None], *, full: bool = False) -> bool:
    """Check a committed object; a damaged one is moved to quarantine/ and named through `note`.
    full=True hashes every byte whatever the stat signatures say (an input about to be consumed)."""
    problems = store.check(path, full=full)
    if not problems:
        return False
    moved = store.quarantine(path)
    where = f"moved to {moved}" if moved is not None else "already moved aside"
    note(f"damaged object {step.kind}/{path.name}: {'; '.join(problems)}; {where}; recomputing it")
    return True


class Attempt:
    """Runs steps of one graph into one store, in this process. `upstream` maps each key a step
    may need as an input to its StepSpec (a worker gets the steps it is sent plus their inputs)."""

    def __init__(self, store: Store, runtime: dict, emit: Emit, worker: str | None = None):
        self.store, self.runtime, self.emit, self.worker = store, runtime, emit, worker

    def note(self, text: str) -> None:
        self.emit("note", text=text)

    def event(self, name: str, /, **fields) -> None:
        self.emit("event", name=name, fields=fields)

    # ------------------------------------------------------------------ one step
    def run(self, step: StepSpec, upstream: dict[str, StepSpec]) -> Outcome:
        store = self.store
        try:
            lease = store.lease(step)
        except LeaseBusy as busy:
            holder = {k: v for k, v in busy.holder.items() if not k.startswith("_")}
            return Outcome("busy", step.key, holder=holder, suspect=describe(busy.holder) if busy.suspect else None)
        with lease:
            found = store.find(step, fresh=True)
            if found is not None:
                store.finish_work(step)  # leftovers of an attempt killed after its commit
                return self.committed_elsewhere(step, found)
            inputs, forget = self._inputs(step, upstream)
            if inputs is None:
                return Outcome("input", step.key, forget=forget)
            return self._run_leased(step, inputs, lease, upstream)

    def committed_elsewhere(self, step: StepSpec, path: Path) -> Outcome:
        """Another process committed `step` meanwhile: check it, use it, say so."""
        if damaged(step, path, self.store, self.note):
            self.event("damaged", object=f"{step.kind}/{path.name}")
            return Outcome("damaged", step.key)
        self.event("skip", key=step.key, kind=step.kind, name=step.name, reason="committed elsewhere")
        self.emit("start", kind=step.kind, name=step.name, key=step.key)
        self.emit("finish", summary=None, status="committed by another process")
        return Outcome("committed", step.key, dest=str(path))

    def _inputs(self, step: StepSpec, upstream: dict[str, StepSpec]) -> tuple[dict | None, list[str]]:
        """The committed, intact folders of the step's inputs; (None, keys to recompute) if one is not."""
        paths: dict[str, Path] = {}
        forget: list[str] = []
        for key in step.upstream():
            up = upstream[key]
            path = self.store.find(up, fresh=True)
            if path is None:
                self.note(f"input {up.kind}/{up.dirname} of {step.kind} {step.name} is gone; recomputing it")
                self.event("missing", key=up.key, kind=up.kind, name=up.name)
            elif damaged(up, path, self.store, self.note, full=True):  # bytes about to be read: hashed, not trusted
                self.event("damaged", object=f"{up.kind}/{path.name}")
            else:
                paths[key] = path
                continue
            forget.append(key)
        if forget:
            return None, forget

        def pick(v):
            return [paths[k] for k in v] if isinstance(v, list) else paths[v]

        return {role: pick(v) for role, v in step.inputs.items()}, []

    def _run_leased(self, step: StepSpec, inputs: dict, lease, upstream: dict[str, StepSpec]) -> Outcome:
        store, emit = self.store, self.emit
        self.event(
            "begin", key=step.key, kind=step.kind, name=step.name, **({"worker": self.worker} if self.worker else {})
        )
        try:
            work = store.prepare_work(step)
            staged = store.stage(step)
        except OSError as e:
            raise StoreError(f"{step.kind} {step.name}: {os_error_message(e, store.root)}") from None
        emit("start", kind=step.kind, name=step.name, key=step.key)
        t0 = time.time()
        live = _Live(work / LIVE, step, self.worker, t0)
        sent = [0.0]
        held: dict = {}  # reports not sent yet: merged, so the latest losses ride on the next one sent

        def report(info: dict) -> None:
            lease.check()  # a process that lost its lease stops its step here
            now = time.time()
            held.update(info)
            last = info.get("step") is not None and info.get("step") == info.get("steps")
            if now - sent[0] >= UPDATE_EVERY_S or last:
                sent[0] = now
                emit("update", info=dict(held))
                held.clear()
            live.update(info)

        def guard() -> None:
            """Called before a step writes into work/ or commits: only the lease holder may."""
            if not lease.still_mine():
                raise LeaseLost("lease lost")

        def note(text: str) -> None:
            self.note(text)
            self.event("note", key=step.key, kind=step.kind, name=step.name, text=text)

        ctx = RunContext(runtime=self.runtime, progress=report, note=note, guard=guard)
        try:
            summary = body(step.kind)(step, inputs, staged, work, ctx)
            guard()
        except LeaseLost as e:
            return self._lost(step, staged, str(e))
        except KeyboardInterrupt:
            shutil.rmtree(staged, ignore_errors=True)
            live.remove()
            self.event("interrupted", key=step.key, kind=step.kind, name=step.name)
            raise
        except HepcError:
            shutil.rmtree(staged, ignore_errors=True)
            live.remove()
            raise
        except Exception as e:  # a step body failed: keep finished work, say which step and why
            shutil.rmtree(staged, ignore_errors=True)
            live.remove()
            if not lease.still_mine():  # stopped, taken over, maybe committed elsewhere: not a failure
                return self._lost(step, staged, f"{type(e).__name__} after the lease was lost")
            if _any_missing(inputs):  # a concurrent gc took an input away: recompute it, not a failure
                self.event("missing", key=step.key, kind=step.kind, name=step.name, error=f"{type(e).__name__}")
                emit("finish", summary=None, status="input vanished; recomputing it")
                store.refresh()
                return Outcome("input", step.key, forget=list(step.upstream()))
            disk = disk_error(e, staged)
            if disk is not None:  # the disk, not the step: no failed.json, the step resumes later
                raise StoreError(f"{step.kind} {step.name}: {os_error_message(disk, store.root)}") from None
            message = f"{type(e).__name__}: {e}"
            store.mark_failed(step, message)
            self.event("failed", key=step.key, kind=step.kind, name=step.name, error=message)
            raise StepFailed(f"step {step.kind} {step.name} ({step.key12}) failed: {message}") from e
        try:
            prov = provenance(t0, self.worker)
            if step.kind == "cycle":  # data-parallel ranks of the cycle (per-GPU throughput: bench/gpu_report.py)
                prov["ranks"] = int(self.runtime.get("gpus_per_step") or 1)
            dest = store.commit(step, staged, summary, prov)
        except OSError as e:
            shutil.rmtree(staged, ignore_errors=True)
            raise StoreError(f"{step.kind} {step.name} not committed: {os_error_message(e, store.root)}") from None
        store.finish_work(step)
        self.event("done", key=step.key, kind=step.kind, name=step.name, wall_s=round(time.time() - t0, 3))
        emit("finish", summary=summary, status="done")
        return Outcome("done", step.key, dest=str(dest))

    def _lost(self, step: StepSpec, staged: Path, why: str) -> Outcome:
        """This process no longer holds the step's lease: drop its staging, write nothing else."""
        shutil.rmtree(staged, ignore_errors=True)
        self.event("lost", key=step.key, kind=step.kind, name=step.name, error=why)
        self.emit("finish", summary=None, status="stopped: lease taken over by another process")
        return Outcome("lost", step.key)


class _Live:
    """work/<key>/live.json, rewritten whole at most every LIVE_EVERY_S: read by `hepc status`."""

    FIELDS = ("step", "steps", "loss", "ce", "kd", "tokens_per_s")

    def __init__(self, path: Path, step: StepSpec, worker: str | None, started: float):
        self.path, self.last, self.stepped, self.known = path, 0.0, False, {}
        self.base = {
            "key": step.key, "kind": step.kind, "name": step.name, "worker": worker, "host": socket.gethostname(),
            "pid": os.getpid(), "started": started,
        }  # fmt: skip
        self.update({})

    def update(self, info: dict) -> None:
        now = time.time()
        self.known.update({k: info[k] for k in self.FIELDS if k in info})  # losses: the last logged ones
        first_step = info.get("step") is not None and not self.stepped  # the first progress is shown at once
        if self.last and now - self.last < LIVE_EVERY_S and not first_step:
            return
        self.stepped = self.stepped or info.get("step") is not None
        self.last = now
        value = {**self.base, "t": now, **{k: self.known.get(k) for k in self.FIELDS}}
        try:
            write_json_atomic(self.path, value)
        except OSError:
            pass  # a display aid: never fail a step for it

    def remove(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass


def _any_missing(inputs: dict) -> bool:
    for v in inputs.values():
        for p in v if isinstance(v, list) else [v]:
            if not (Path(p) / "manifest.json").is_file():
                return True
    return False
