"""The driver: runs the steps of a plan in topological order, one lease per step, atomic commits,
one run record per invocation. Step bodies run in this process (the local backend)."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import sys
import time
from pathlib import Path

from hepc import __version__
from hepc.compile import Compiled
from hepc.errors import HepcError, StepFailed
from hepc.execute.progress import StepProgress
from hepc.graph import StepSpec
from hepc.plan import Plan, make_plan
from hepc.steps import RunContext, body
from hepc.store import LeaseBusy, Store

LEASE_POLL_S = 1.0


def _input_paths(step: StepSpec, compiled: Compiled, store: Store) -> dict:
    def path(key: str) -> Path:
        found = store.find(compiled.graph[key])
        if found is None:
            raise HepcError(f"{step.kind} {step.name}: input {compiled.graph[key].dirname} is missing from the store")
        return found

    return {role: [path(k) for k in v] if isinstance(v, list) else path(v) for role, v in step.inputs.items()}


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


def execute(compiled: Compiled, store: Store, runtime: dict, resolved_spec: dict, *, quiet: bool = False) -> Plan:
    """Run every step of the plan that is not cached. Returns the plan it executed."""
    plan = make_plan(compiled, store)
    record = store.open_record(compiled.spec.name, resolved_spec, plan.to_json())
    todo = plan.to_run
    record.event("start", to_run=len(todo), steps=len(plan.steps))
    progress = StepProgress(len(todo), quiet=quiet or not todo)
    try:
        for planned in todo:
            _run_one(planned.step, compiled, store, runtime, record, progress)
    except KeyboardInterrupt:
        record.event("interrupted")
        raise
    finally:
        progress.close()
    record.event("finish", ran=len(todo))
    return plan


def _run_one(step, compiled, store, runtime, record, progress) -> None:
    while True:
        if store.find(step) is not None:  # committed meanwhile by another process
            record.event("skip", key=step.key, kind=step.kind, name=step.name, reason="committed elsewhere")
            progress.start(step.kind, step.name)
            progress.finish(None, "cached")
            return
        try:
            with store.lease(step):
                if store.find(step) is not None:
                    continue
                _run_leased(step, compiled, store, runtime, record, progress)
                return
        except LeaseBusy as busy:
            record.event("wait", key=step.key, holder=busy.holder)
            time.sleep(LEASE_POLL_S)
            store._index.pop(step.kind, None)  # rescan: the holder may have committed


def _run_leased(step, compiled, store, runtime, record, progress) -> None:
    inputs = _input_paths(step, compiled, store)
    work = store.prepare_work(step)
    staged = store.stage(step)
    progress.start(step.kind, step.name)
    record.event("begin", key=step.key, kind=step.kind, name=step.name)
    t0 = time.time()
    ctx = RunContext(runtime=runtime, progress=progress.update)
    try:
        summary = body(step.kind)(step, inputs, staged, work, ctx)
    except KeyboardInterrupt:
        shutil.rmtree(staged, ignore_errors=True)
        record.event("interrupted", key=step.key, kind=step.kind, name=step.name)
        raise
    except HepcError:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    except Exception as e:  # a step body failed: keep finished work, say which step and why
        shutil.rmtree(staged, ignore_errors=True)
        message = f"{type(e).__name__}: {e}"
        store.mark_failed(step, message)
        record.event("failed", key=step.key, kind=step.kind, name=step.name, error=message)
        raise StepFailed(f"step {step.kind} {step.name} ({step.key12}) failed: {message}") from e
    store.commit(step, staged, summary, _provenance(t0))
    store.finish_work(step)
    record.event("done", key=step.key, kind=step.kind, name=step.name, wall_s=round(time.time() - t0, 3))
    progress.finish(summary)
