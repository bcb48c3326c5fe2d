"""Data-parallel plumbing for one training cycle over N processes (`runtime.gpus_per_step: N`).

The process that calls `train_cycle` is rank 0: it keeps the step's lease, reports progress and is
the only one that writes. `launch` starts ranks 1..N-1 as `spawn`ed child processes that run the
same loop on their slice of every global batch, joins them in one process group (NCCL on CUDA, rank
r on cuda:r of the visible devices; gloo on the CPU) and always tears everything down again: the
group is destroyed and every child is joined, or killed, whatever happens.

Failure model: a child that raises writes its error into the rendezvous store and exits non-zero;
one that is killed just exits. Either way rank 0's next collective fails (gloo sees the TCP
connection close at once; NCCL is aborted by a watcher thread, or else times out after `timeout_s`)
and rank 0 raises a RuntimeError naming the rank and what happened to it. Children die with rank 0
(PR_SET_PDEATHSIG on Linux, a watcher thread elsewhere), so a killed worker leaves no orphans.
"""

from __future__ import annotations

import inspect
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

TIMEOUT_S = 600.0  # a collective that waits this long for a peer fails (a rank that hangs, not one that died)
_GRACE_S = 10.0  # after a clean end the children exit on their own; longer than this: killed
_ERROR_GRACE_S = 2.0  # the same after an exception (a clean stop: they are gone already; else they are stuck)
_FAILURE_WAIT_S = 3.0  # after a failed collective: how long to wait for the child that caused it to exit
_KEY = "hepc/"  # our keys in the rendezvous store (torch's own are prefixed by the process group)
# Newer torch renamed DDP's per-forward buffer broadcast (and warns about the old name).
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


def rows_per_rank(batch_seqs: int, world: int) -> int:
    """Rows of the global batch each rank trains on; the batch must split evenly."""
    if batch_seqs % world:
        raise ValueError(
            f"the global batch of {batch_seqs} sequences cannot be split evenly over gpus_per_step = {world} "
            f"processes (make optimizer.batch_tokens / seq_len a multiple of {world})"
        )
    return batch_seqs // world


def rank_seed(seed: int, rank: int, resumed_at: int = 0) -> int:
    """Rank r's dropout seed: rank 0 keeps the single-process seed, the others get their own streams.
    `resumed_at` re-seeds a rank that resumes from a checkpoint without its saved stream."""
    if rank == 0 and resumed_at == 0:
        return seed
    return (seed + rank * 0x9E3779B97F4A7C15 + resumed_at * 0xBF58476D1CE4E5B9) % (2**63)


@dataclass(frozen=True)
class Rank:
    """This process's place in the data-parallel group, and the few collectives the loop needs."""

    rank: int
    world: int
    device: torch.device

    @property
    def lead(self) -> bool:
        """Rank 0: the only one that writes and reports."""
        return self.rank == 0

    def rows(self, batch: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of the global batch's rows."""
        n = rows_per_rank(batch.shape[0], self.world)
        return batch[self.rank * n : (self.rank + 1) * n]

    def wrap(self, net: nn.Module) -> DistributedDataParallel:
        """DDP averages the gradients over ranks during backward; building it broadcasts rank 0's weights.
        The only buffers are the constant RoPE tables: no need to re-broadcast them every forward. The
        gradients are views into DDP's communication buckets (no second copy of them in memory); with
        micro-batches the loop enters `no_sync()` for all but the last, so they are exchanged once a step."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=device_ids, gradient_as_bucket_view=True, **_NO_BUFFER_SYNC)

    def mean(self, *values: torch.Tensor) -> list[torch.Tensor]:
        """The global-batch mean of per-rank means (equal shares), for each scalar; no host sync on CUDA."""
        stacked = torch.stack([v.detach().float() for v in values])
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)  # gloo has no AVG
        return list((stacked / self.world).unbind())

    def agree_stop(self, requested: bool, due: bool) -> bool:
        """Rank 0's stop request (Ctrl-C), shared so every rank stops after the same step (`agree`)."""
        return self.agree(requested, False, due)[0]

    def agree(self, stop: bool, checkpoint: bool, due: bool) -> tuple[bool, bool]:
        """Rank 0's stop request (Ctrl-C) and its wish for a checkpoint now (wall-time cadence), shared so
        every rank stops or checkpoints after the same step.

        On the CPU this runs every step (a tiny gloo all-reduce, cheap next to a step). On CUDA reading
        the result is a host sync, so it happens only at steps that sync anyway (`due`: a logged step or a
        checkpoint); a Ctrl-C there is honoured at the next such step instead of the next step.
        """
        if self.device.type == "cuda" and not due:
            return False, False
        flags = torch.tensor([1.0 if stop and self.lead else 0.0, 1.0 if checkpoint and self.lead else 0.0],
                             device=self.device)  # fmt: skip
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        wanted = flags.tolist()
        return bool(wanted[0]), bool(wanted[1])

    def broadcast_int(self, value: int) -> int:
        """Rank 0's `value` on every rank."""
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.broadcast(t, src=0)
        return int(t.item())

    def gather_rng(self) -> list[list[torch.Tensor | None]]:
        """Every rank's [CPU, CUDA] RNG state, in rank order (saved with a checkpoint so that the dropout
        streams of all ranks resume exactly)."""
        mine = [torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None]
        states: list = [None] * self.world
        dist.all_gather_object(states, mine)
        return states

    def restore_rng(self, saved: object, seed: int, resumed_at: int) -> None:
        """Resume this rank's dropout stream from a checkpoint's per-rank states; a checkpoint written by
        another number of ranks has none for it, so it gets a fresh deterministic stream instead."""
        mine = saved[self.rank] if isinstance(saved, list) and len(saved) == self.world else None
        ok = isinstance(mine, list) and len(mine) == 2 and isinstance(mine[0], torch.Tensor)
        if not ok or mine[0].dtype != torch.uint8:
            torch.manual_seed(rank_seed(seed, self.rank, resumed_at))
            return
        torch.set_rng_state(mine[0])
        if self.device.type == "cuda" and mine[1] is not None:
            torch.cuda.set_rng_state(mine[1], self.device)


def check_devices(device: torch.device, world: int) -> None:
    """N ranks need torch.distributed, a process free to start them, and N visible GPUs on CUDA."""
    if not dist.is_available():
        raise RuntimeError(f"runtime.gpus_per_step is {world} but this torch build has no torch.distributed")
    if dist.is_initialized():
        raise RuntimeError(f"runtime.gpus_per_step is {world} but this process is already in a process group")
    if multiprocessing.current_process().daemon:
        raise RuntimeError(f"runtime.gpus_per_step is {world} but a daemonic process cannot start ranks")
    if device.type == "cuda" and torch.cuda.device_count() < world:
        raise RuntimeError(
            f"runtime.gpus_per_step is {world} but {torch.cuda.device_count()} CUDA device(s) are visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})"
        )


@contextmanager
def launch(
    world: int,
    device_type: str,
    target: Callable[[Rank, dict], None],
    payload: dict,
    *,
    timeout_s: float = TIMEOUT_S,
) -> Iterator[Rank]:
    """In rank 0: start ranks 1..world-1 running `target(rank, payload)` (a module-level function, so
    that `spawn` can import it), join the process group with them and yield rank 0's `Rank`.

    On leaving, whatever the reason: the group is destroyed and every child joined (killed if it
    does not end on its own). A collective that failed because a child died is raised as a
    RuntimeError naming that child, chained to the backend's error.
    """
    timeout = timedelta(seconds=timeout_s)
    # Port 0: the OS picks a free loopback port, no race with other runs on this machine.
    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False, timeout=timeout)
    spawn = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA or threads
    children: list[multiprocessing.process.BaseProcess] = []
    finished = threading.Event()
    in_body = ended = False
    try:
        for r in range(1, world):
            child = spawn.Process(
                target=_child_main,
                args=(r, world, store.port, device_type, timeout_s, os.getpid(), target, payload),
                name=f"hepc-rank{r}",
                daemon=True,
            )
            child.start()
            children.append(child)
        _await_children(store, children, world, timeout_s)
        rank = _join_group(store, 0, world, device_type, timeout)
        if device_type == "cuda":
            _abort_when_a_child_fails(children, finished)
        in_body = True
        yield rank
        ended = True
    except RuntimeError as e:
        failure = _child_failure(store, children, world) if in_body else None
        if failure is not None:
            raise failure from e
        raise
    finally:
        finished.set()
        # Children first: rank 0's group may be kept alive (and a stuck child with it) by the frames of a
        # traceback that still reference the DDP module.
        _reap(children, _GRACE_S if ended else _ERROR_GRACE_S)
        if dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------- inside every rank


def _join_group(store: dist.Store, rank: int, world: int, device_type: str, timeout: timedelta) -> Rank:
    if device_type == "cuda":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", store=store, rank=rank, world_size=world, timeout=timeout, device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    return Rank(rank=rank, world=world, device=device)


def _child_main(
    rank: int,
    world: int,
    port: int,
    device_type: str,
    timeout_s: float,
    parent: int,
    target: Callable[[Rank, dict], None],
    payload: dict,
) -> None:
    """A child rank's process: join the group, run `target`, report an error through the store."""
    # Ctrl-C in a terminal reaches the whole process group, a scheduler's SIGTERM often every process of
    # the job: rank 0 alone decides when to stop (at a step boundary, with a checkpoint) and tells the others.
    # To end a rank for good, rank 0 (or a user) sends SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with(parent)
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=timeout)
    code = 0
    try:
        store.set(f"{_KEY}joined/{rank}", "1")
        target(_join_group(store, rank, world, device_type, timeout), payload)
    except BaseException as e:  # noqa: BLE001  (reported to rank 0, which raises it)
        code = 1
        with suppress(Exception):  # rank 0 may be gone: nobody to tell
            store.set(f"{_KEY}error/{rank}", _describe_error(e))
    finally:
        with suppress(Exception):
            if dist.is_initialized():
                dist.destroy_process_group()
    # Nothing to clean up beyond this (a rank writes no files); skipping the interpreter's own shutdown
    # (torch's takes about a second) lets rank 0 join it at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _describe_error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    frames = traceback.extract_tb(e.__traceback__)
    if frames:
        text += f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno} in {frames[-1].name})"
    return text if len(text) <= 2000 else text[:1997] + "..."


def _die_with(parent: int) -> None:
    """End this child when rank 0's process goes away (kill -9 of the worker), never run on alone."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        else:
            if os.getppid() != parent:  # it died before the prctl
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="hepc-rank-parent-watch").start()


# --------------------------------------------------------------------------- rank 0's side


def _await_children(store: dist.Store, children: list, world: int, timeout_s: float) -> None:
    """Wait until every child is about to join the group, failing at once if one dies on the way there
    (init_process_group itself would wait the whole timeout for it)."""
    keys = [f"{_KEY}joined/{r}" for r in range(1, world)]
    deadline = time.monotonic() + timeout_s
    while not store.check(keys):
        for r, child in enumerate(children, 1):
            if child.exitcode is not None:
                raise RuntimeError(_describe_child(store, r, child, world) + " before joining the process group")
        if time.monotonic() > deadline:
            raise TimeoutError(f"data-parallel ranks did not start within {timeout_s:.0f} s")
        time.sleep(0.02)


def _child_failure(store: dist.Store, children: list, world: int) -> RuntimeError | None:
    """After a failed collective: the child behind it, if one failed or died (it may take a moment to exit)."""
    deadline = time.monotonic() + _FAILURE_WAIT_S
    while True:
        for r, child in enumerate(children, 1):
            if child.exitcode not in (None, 0):
                return RuntimeError(_describe_child(store, r, child, world))
        if time.monotonic() > deadline or not any(c.is_alive() for c in children):
            return None
        time.sleep(0.05)


def _describe_child(store: dist.Store, r: int, child, world: int) -> str:
    key = f"{_KEY}error/{r}"
    try:
        error = store.get(key).decode(errors="replace") if store.check([key]) else None
    except Exception:  # noqa: BLE001
        error = None
    if error:
        return f"data-parallel rank {r} of {world} failed: {error}"
    code = child.exitcode
    how = f"exited with code {code}"
    if code is not None and code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    return f"data-parallel rank {r} of {world} (pid {child.pid}) {how}"


def _abort_when_a_child_fails(children: list, finished: threading.Event) -> None:
    """NCCL only: a collective whose peer died waits out the whole timeout (gloo fails at once, as its TCP
    connection closes), so a watcher aborts the group as soon as a child exits with an error, and rank
    0's pending collective raises now. (Needs a GPU per rank; not exercised by the CPU tests.)"""
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    if abort is None:
        return  # this torch has no abort: the timeout stays the backstop

    def watch() -> None:
        running = list(children)
        while running and not finished.is_set():
            multiprocessing.connection.wait([c.sentinel for c in running], timeout=1.0)
            if any(c.exitcode not in (None, 0) for c in running):
                if not finished.is_set():
                    abort()
                return
            running = [c for c in running if c.exitcode is None]  # ended cleanly: stop watching it

    threading.Thread(target=watch, daemon=True, name="hepc-rank-watch").start()


def _reap(children: list, grace: float) -> None:
    """Join every child, killing those that do not end within `grace` seconds (a rank ignores SIGTERM, and
    has nothing to save)."""
    deadline = time.monotonic() + grace
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
    for child in children:
        if child.is_alive():
            child.kill()
            child.join()
        child.close()
