"""Where step bodies run: the driver's scheduling loop (hepc.execute.driver) talks to a backend.

    InlineBackend   in the driver's own process, one step at a time (`--jobs 1`, the default on CPU)
    LocalBackend    N worker processes on this machine (`--jobs N`; default one per visible GPU)
    RayBackend      Ray tasks on a cluster (`--backend ray`, hepc.execute.ray_backend)

A backend takes a step (`submit`) when it has a `free` slot, and `poll` returns what its slots said
since: ("emit", kind, fields) for the run record and the display, then one of ("result", outcome),
("error", class, problems), ("crash", message, traceback), ("interrupted", key) or ("died", exitcode).
`finished(slot)` frees a slot once its step's last word is in and returns that step's key.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict

from hepc.compile.graph import StepSpec
from hepc.errors import HepcError
from hepc.execute.attempt import Attempt
from hepc.store.objects import Store


class InlineBackend:
    """Steps run in this process: `submit` runs the step before it returns (exceptions propagate)."""

    inline = True
    slots = 1

    def __init__(self, store: Store, runtime: dict):
        self.store, self.runtime = store, runtime
        self.step: StepSpec | None = None
        self.queue: list[tuple] = []
        self.attempt: Attempt | None = None

    def bind(self, emit_for: Callable) -> None:
        self.attempt = Attempt(self.store, self.runtime, emit_for(0))

    def free(self) -> bool:
        return self.step is None

    def submit(self, step: StepSpec, upstream: dict[str, StepSpec]) -> int:
        self.step = step
        outcome = self.attempt.run(step, upstream)
        self.queue.append((0, ("result", asdict(outcome))))
        return 0

    def poll(self, timeout: float) -> list[tuple]:
        out, self.queue = self.queue, []
        return out

    def finished(self, slot) -> str | None:
        key = self.step.key if self.step is not None else None
        self.step = None
        return key

    def stop(self, timeout: float) -> Iterator[tuple]:
        self.step = None
        return iter(())

    def kill(self) -> None:
        pass

    def close(self) -> None:
        pass

    def label(self, slot) -> str:
        return "main"

    def describe(self) -> dict:
        return {"backend": "local", "jobs": 1, "threads": self.runtime.get("threads")}


class LocalBackend:
    """N worker processes (hepc.execute.pool), each pinned to its GPUs or its share of the cores."""

    inline = False

    def __init__(self, store: Store, runtime: dict, slots: list[dict]):
        from hepc.execute.pool import LocalPool, Worker

        self.slots = len(slots)
        self.layout = slots
        workers = [
            Worker(i, s["label"], s["env"], {**runtime, **s["runtime"]}, store.root) for i, s in enumerate(slots)
        ]
        self.pool = LocalPool(workers)

    def bind(self, emit_for: Callable) -> None:
        pass

    def free(self) -> bool:
        return bool(self.pool.idle())

    def submit(self, step: StepSpec, upstream: dict[str, StepSpec]):
        worker = self.pool.idle()[0]
        worker.submit(step, upstream)
        return worker

    def poll(self, timeout: float) -> list[tuple]:
        return self.pool.poll(timeout)

    def finished(self, slot) -> str | None:
        key = slot.step.key if slot.step is not None else None
        slot.step = None
        return key

    def stop(self, timeout: float) -> Iterator[tuple]:
        """Interrupt every busy worker (each checkpoints at its next step boundary) and yield what
        they say until all are idle or `timeout` passes; then the rest are killed."""
        for w in self.pool.busy():
            w.interrupt()
        deadline = time.time() + timeout
        while self.pool.busy() and time.time() < deadline:
            yield from self.pool.poll(0.2)
        self.kill()

    def kill(self) -> None:
        for w in self.pool.workers:
            if w.proc is not None and w.proc.is_alive():
                w.proc.kill()
        for w in self.pool.workers:
            w.close(timeout=2)
            w.step = None

    def close(self) -> None:
        self.pool.close()

    def label(self, slot) -> str:
        return slot.label

    def describe(self) -> dict:
        return {
            "backend": "local",
            "jobs": self.slots,
            "slots": [{k: s[k] for k in ("label", "env")} for s in self.layout],
        }


# --------------------------------------------------------------------------- choosing one


def visible_gpus(runtime: dict) -> list[str]:
    """The CUDA devices this run may use, as CUDA_VISIBLE_DEVICES entries ([] on CPU)."""
    if runtime.get("device") == "cpu":
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = [x.strip() for x in listed.split(",") if x.strip()]
        if not ids or ids[0].startswith("-"):
            return []
        return ids
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def slot_layout(runtime: dict, gpus: list[str], cores: int) -> tuple[list[dict], list[str]]:
    """One entry per worker: its label, environment and runtime additions; plus notes for the user.

    GPUs: each worker gets `gpus_per_step` devices of its own (CUDA_VISIBLE_DEVICES), one worker per
    group unless `jobs` asks for fewer. CPU: each worker gets threads = cores / jobs (or
    `runtime.threads` / `cpus_per_step`), divided among its data-parallel ranks."""
    per_step = int(runtime.get("gpus_per_step") or 1)
    jobs = runtime.get("jobs")
    notes: list[str] = []
    if runtime.get("device") == "cuda" and not gpus:
        raise HepcError("runtime.device is cuda but no CUDA device is visible (CUDA_VISIBLE_DEVICES, drivers)")
    if gpus:
        groups = len(gpus) // per_step
        if groups < 1:
            raise HepcError(
                f"runtime.gpus_per_step is {per_step} but {len(gpus)} GPU(s) are visible "
                f"(CUDA_VISIBLE_DEVICES={','.join(gpus)})"
            )
        if jobs is None:
            jobs = groups
        elif jobs > groups:
            notes.append(f"--jobs {jobs} needs {jobs * per_step} GPUs; {len(gpus)} visible: running {groups} at once")
            jobs = groups
        threads = runtime.get("threads") or runtime.get("cpus_per_step") or max(1, cores // jobs)
        return [
            {
                "label": f"gpu{','.join(gpus[i * per_step : (i + 1) * per_step])}",
                "env": {"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * per_step : (i + 1) * per_step])},
                "runtime": {"threads": threads},
            }
            for i in range(jobs)
        ], notes
    jobs = jobs or 1
    threads = runtime.get("threads") or runtime.get("cpus_per_step") or max(1, cores // (jobs * per_step))
    if jobs * per_step * threads > cores:
        notes.append(f"{jobs} worker(s) × {per_step} rank(s) × {threads} thread(s) on {cores} core(s): oversubscribed")
    return [
        {"label": f"w{i + 1}", "env": {"CUDA_VISIBLE_DEVICES": ""} if runtime.get("device") == "cpu" else {},
         "runtime": {"threads": threads}}
        for i in range(jobs)
    ], notes  # fmt: skip


def make_backend(runtime: dict, store: Store, note: Callable[[str], None] | None = None):
    """The backend `runtime` asks for (`backend`, `jobs`, `gpus_per_step`, `threads`)."""
    if runtime.get("backend") == "ray":
        from hepc.execute.ray_backend import RayBackend

        return RayBackend(store, runtime, note=note)
    gpus = visible_gpus(runtime)
    if runtime.get("jobs") in (None, 1) and len(gpus) // int(runtime.get("gpus_per_step") or 1) <= 1:
        if runtime.get("device") == "cuda" and not gpus:
            slot_layout(runtime, gpus, cpu_cores())  # the same clear error
        return InlineBackend(store, runtime)
    slots, notes = slot_layout(runtime, gpus, cpu_cores())
    for text in notes:
        if note is not None:
            note(text)
    if len(slots) == 1:
        return InlineBackend(store, {**runtime, **slots[0]["runtime"]})
    return LocalBackend(store, runtime, slots)
