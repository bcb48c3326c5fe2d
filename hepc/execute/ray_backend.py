"""`hepc run --backend ray [--address ADDR]`: each ready step is a Ray task (the optional extra
`hepc[ray]`).

- **Resources** come from the step and `runtime`: a training cycle asks for `gpus_per_step` GPUs
  (when the cluster has GPUs and `runtime.device` is not cpu) and `cpus_per_step` cores (default:
  `runtime.threads`, else 1); scoring and logits ask for one GPU on a GPU cluster; corpus, prior and
  curve steps ask for CPUs only. Ray places the task and sets its CUDA_VISIBLE_DEVICES; a cycle with
  `gpus_per_step` > 1 trains data-parallel over the GPUs it was given (hepc.train.ddp), on one node:
  its ranks meet on a loopback store, so `gpus_per_step` must fit the node with the most GPUs (checked
  before anything runs, exit 2).
- **GPU steps run in single-use worker processes** (Ray's `max_calls=1`, which `.options(num_gpus=…)`
  does not set): the worker exits after its step, so its CUDA context and cached memory go with it and
  the next step on that GPU starts from an empty device.
- **The store** must be one folder that every node sees at the same path (a shared filesystem).
  Before anything runs, a probe task on every alive node reads the store's marker and compares it
  with the driver's: a node that cannot see the store, or sees another one, stops the run with a
  message naming it, and nothing is written.
- **Failures**: a task whose worker process dies is retried by Ray (`max_retries`); the retry takes
  over the dead holder's lease and resumes the cycle from its mid-cycle checkpoint. Commits happen
  in the tasks, under the step's lease and with first-writer-wins renames, so no step is committed
  twice whatever retries or other drivers do.
- **Messages** (run-record events, progress, notes) travel from the tasks to the driver through a
  `ray.util.queue.Queue`; the driver stays the run record's only writer.
- **Ctrl-C** cancels the tasks in flight (`ray.cancel`, a KeyboardInterrupt inside the task: a
  training cycle stops at its next step boundary with a checkpoint).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

from hepc.compile.graph import StepSpec
from hepc.errors import HepcError, Problem, data_cause
from hepc.store.layout import MARKER
from hepc.store.objects import Store

MAX_RETRIES = 3  # Ray retries a task whose worker process died this many times
GPU_KINDS = {"score", "logits"}  # forward passes: worth a GPU when the cluster has them


class _Task:
    """One step in flight as a Ray task (the driver's slot for it)."""

    def __init__(self, label: str, step: StepSpec, ref, resources: dict):
        self.label, self.step, self.ref, self.resources = label, step, ref, resources


class RayBackend:
    inline = False

    def __init__(self, store: Store, runtime: dict, note: Callable[[str], None] | None = None):
        try:
            import ray
            from ray.util.queue import Queue
        except ImportError:
            raise HepcError("--backend ray needs Ray: pip install 'hepc[ray]'") from None
        self.ray = ray
        self.runtime = runtime
        self.root = Path(store.root).absolute()
        address = runtime.get("ray_address") or os.environ.get("RAY_ADDRESS") or None
        self.address = address
        try:
            ray.init(
                address=address,
                namespace="hepc",
                logging_level=logging.WARNING,
                log_to_driver=False,
                ignore_reinit_error=True,
                include_dashboard=False if address is None else None,
            )
        except Exception as e:  # noqa: BLE001  (ConnectionError, RuntimeError, ValueError by Ray version)
            where = f"at {address}" if address else "(a local one)"
            raise HepcError(f"cannot start or join the Ray cluster {where}: {_brief(e)}") from None
        self._owns_ray = True
        try:
            self._check_store_everywhere()
            total = ray.cluster_resources()
            self.cluster_cpus = float(total.get("CPU", 0.0))
            self.cluster_gpus = float(total.get("GPU", 0.0))
            self.use_gpus = self.cluster_gpus > 0 and runtime.get("device") != "cpu"
            self.cpus = float(runtime.get("cpus_per_step") or runtime.get("threads") or 1)
            per_step_gpus = int(runtime.get("gpus_per_step") or 1)
            node_gpus = [float(n.get("Resources", {}).get("GPU", 0.0)) for n in ray.nodes() if n.get("Alive")]
            largest = max(node_gpus, default=0.0)
            if self.use_gpus and per_step_gpus > largest:
                raise HepcError(
                    f"runtime.gpus_per_step is {per_step_gpus} but the Ray node with the most GPUs has {largest:g} "
                    f"(the cluster {self.cluster_gpus:g} on {len(node_gpus)} node(s)): a data-parallel cycle runs on "
                    f"one node, its ranks meet on a loopback store; use gpus_per_step {int(largest)} or less; "
                    "nothing was run or written"
                )
            capacity = int(self.cluster_cpus // self.cpus) if self.cluster_cpus else 1
            if self.use_gpus:  # whole groups of gpus_per_step on each node
                capacity = min(capacity, sum(int(g // per_step_gpus) for g in node_gpus)) or 1
            self.slots = int(runtime.get("jobs") or max(1, capacity))
            self.queue = Queue(actor_options={"num_cpus": 0})
        except BaseException:
            self.close()
            raise
        self.tasks: dict[str, _Task] = {}  # label → in flight
        self.submitted = 0
        self.remote = ray.remote(run_step)
        # GPU steps: a fresh worker process each (max_calls=1 must be given here; .options() cannot set it)
        self.remote_gpu = ray.remote(max_calls=1)(run_step)
        self.note = note

    # ------------------------------------------------------------------ checks
    def _check_store_everywhere(self) -> None:
        """Every alive node must see this very store (its marker, byte for byte) at the same path."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.ray
        mine = (self.root / MARKER).read_bytes()
        probe = ray.remote(probe_store)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = [
            probe.options(
                num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(self.root), mine)
            for n in nodes
        ]
        problems = []
        for node, ref in zip(nodes, refs):
            try:
                host, problem = ray.get(ref, timeout=120)
            except Exception as e:  # noqa: BLE001
                host, problem = node.get("NodeManagerAddress", "?"), f"the probe failed: {_brief(e)}"
            if problem:
                problems.append(f"Ray node {node.get('NodeManagerAddress', '?')} ({host}) {problem}")
        if problems:
            problems.append(
                f"every Ray node must see the store {self.root} at the same path (a shared filesystem); "
                "nothing was run or written"
            )
            raise HepcError([Problem("", "", p) for p in problems])

    # ------------------------------------------------------------------ the backend interface
    def bind(self, emit_for: Callable) -> None:
        pass

    def free(self) -> bool:
        return len(self.tasks) < self.slots

    def resources(self, step: StepSpec) -> dict:
        gpus = 0
        if self.use_gpus:
            if step.kind == "cycle":
                gpus = int(self.runtime.get("gpus_per_step") or 1)
            elif step.kind in GPU_KINDS:
                gpus = 1
        return {"num_cpus": self.cpus, "num_gpus": gpus}

    def submit(self, step: StepSpec, upstream: dict[str, StepSpec]) -> _Task:
        self.submitted += 1
        label = f"ray{self.submitted}"
        resources = self.resources(step)
        runtime = {**self.runtime, "threads": int(self.cpus)}
        remote = self.remote_gpu if resources["num_gpus"] else self.remote
        ref = remote.options(**resources, max_retries=MAX_RETRIES, retry_exceptions=False).remote(
            str(self.root), runtime, step, upstream, label, resources, self.queue
        )
        task = _Task(label, step, ref, resources)
        self.tasks[label] = task
        return task

    def poll(self, timeout: float) -> list[tuple]:
        ray = self.ray
        refs = {t.ref: t for t in self.tasks.values()}
        ready = []
        if refs:
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        else:
            time.sleep(timeout)
        out = self._drain()  # what the tasks said before they returned comes first
        for ref in ready:
            task = refs[ref]
            out.append((task, self._result(task)))
        return out

    def _drain(self) -> list[tuple]:
        out = []
        while True:
            n = self.queue.qsize()
            if n <= 0:
                return out
            for label, kind, fields in self.queue.get_nowait_batch(n):
                task = self.tasks.get(label)
                if task is not None:
                    out.append((task, ("emit", kind, fields)))

    def _result(self, task: _Task) -> tuple:
        ray = self.ray
        try:
            return ray.get(task.ref)
        except ray.exceptions.TaskCancelledError:
            return ("interrupted", task.step.key)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, KeyboardInterrupt):
                return ("interrupted", task.step.key)
            return ("crash", _brief(cause or e), str(e))
        except Exception as e:  # noqa: BLE001  (WorkerCrashedError after the retries, node died, ...)
            return ("crash", f"{type(e).__name__} after {MAX_RETRIES} retries: {_brief(e)}", traceback.format_exc())

    def finished(self, task: _Task) -> str | None:
        self.tasks.pop(task.label, None)
        return task.step.key

    def stop(self, timeout: float) -> Iterator[tuple]:
        """Cancel the tasks in flight (each stops at a checkpoint) and yield their last words."""
        for task in list(self.tasks.values()):
            with contextlib.suppress(Exception):  # already finished
                self.ray.cancel(task.ref, force=False)
        deadline = time.time() + timeout
        while self.tasks and time.time() < deadline:
            yield from self.poll(0.2)
        self.kill()

    def kill(self) -> None:
        for task in list(self.tasks.values()):
            with contextlib.suppress(Exception):  # already finished
                self.ray.cancel(task.ref, force=True)
        self.tasks.clear()

    def close(self) -> None:
        if getattr(self, "_owns_ray", False):
            self._owns_ray = False
            try:
                self.ray.shutdown()
            except Exception:  # noqa: BLE001  (never mask the error being reported)
                return

    def label(self, task) -> str:
        return task.label

    def describe(self) -> dict:
        return {
            "backend": "ray",
            "address": self.address,
            "slots": self.slots,
            "cluster_cpus": self.cluster_cpus,
            "cluster_gpus": self.cluster_gpus,
            "cpus_per_step": self.cpus,
            "gpus_per_cycle": int(self.runtime.get("gpus_per_step") or 1) if self.use_gpus else 0,
        }


def _brief(e: BaseException) -> str:
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --------------------------------------------------------------------------- inside the Ray tasks


def probe_store(root: str, marker: bytes) -> tuple[str, str | None]:
    """On one node: (host, None) if the store at `root` is the driver's store, else (host, why not)."""
    host = socket.gethostname()
    path = Path(root) / MARKER
    try:
        seen = path.read_bytes()
    except FileNotFoundError:
        return host, f"cannot see the store: {path} does not exist there"
    except OSError as e:
        return host, f"cannot read {path}: {e.strerror or e}"
    if seen != marker:
        return host, f"sees another store at {root} (its {MARKER} differs from the driver's)"
    if not os.access(root, os.W_OK):
        return host, f"cannot write into the store {root}"
    return host, None


def run_step(root: str, runtime: dict, step: StepSpec, upstream: dict, label: str, resources: dict, queue) -> tuple:
    """One step as a Ray task: the same attempt as a local worker's; messages go through `queue`."""
    from hepc.errors import HepcError
    from hepc.execute.attempt import Attempt
    from hepc.store.objects import Store

    if runtime.get("threads"):
        import torch

        torch.set_num_threads(int(runtime["threads"]))

    def emit(kind: str, /, **fields) -> None:
        queue.put((label, kind, fields))

    placed = {"host": socket.gethostname(), "pid": os.getpid(), **resources}
    gpu_ids = os.environ.get("CUDA_VISIBLE_DEVICES")
    if resources.get("num_gpus"):
        placed["gpus"] = gpu_ids
    emit("event", name="placed", fields={"key": step.key, "kind": step.kind, "name": step.name, "worker": label,
                                         **placed})  # fmt: skip
    attempt = Attempt(Store(root), runtime, emit, worker=label)
    try:
        return ("result", asdict(attempt.run(step, upstream)))
    except HepcError as e:
        return ("error", type(e).__name__, [str(p) for p in e.problems], data_cause(e))
