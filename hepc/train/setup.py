"""What a cycle sets up around its step loop: deferred interrupts, seeds and the perturbation, the
schedule's multipliers, the device's memory plan (micro-batches, loss chunks), deterministic kernels,
what it reports as progress, and the tokens it trains on."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hepc.train import memory
from hepc.train.schedule import constant_multipliers, cyclic_multipliers


class CycleInterrupted(Exception):
    """Raised (tests only, via runtime["stop_after_steps"]) right after a mid-cycle checkpoint is written."""


@contextmanager
def deferred_interrupts() -> Iterator[Callable[[], bool]]:
    """Inside the training loop, Ctrl-C (SIGINT, or SIGTERM where a handler turns it into an
    interrupt) only sets a flag, so the loop can stop at a step boundary with a consistent checkpoint
    instead of mid-update. A second signal interrupts at once. Yields `pending() -> bool`."""
    caught: list[int] = []
    previous: dict[int, object] = {}

    def handler(signum, frame):
        if caught:
            raise KeyboardInterrupt
        caught.append(signum)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            current = signal.getsignal(sig)
            if callable(current):  # Python's default SIGINT handler, or one installed by the driver
                previous[sig] = current
                signal.signal(sig, handler)
    try:
        yield lambda: bool(caught)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if caught:  # arrived after the last boundary check
        raise KeyboardInterrupt


def cycle_seed(trajectory_seed: int, cycle_index: int, salt: int) -> int:
    """A hash-free deterministic seed (Python's hash() of str is salted per process, so not that)."""
    return (trajectory_seed * 1_000_003 + cycle_index * 10_007 + salt * 101) % (2**63)


def perturb_weights(model: nn.Module, scale: float, seed: int) -> None:
    """Add N(0, (std(W)·scale)²) to every tensor with more than one element (docs/method.md §4.3).

    The noise is drawn on the CPU from its own generator, so it is the same on every device and
    does not touch the global RNG that drives dropout.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # fixed order → fixed noise
            if p.numel() <= 1:
                continue
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            p.add_(noise.to(p.device, p.dtype) * (p.std() * scale))


def schedule_multipliers(schedule: dict, steps: int) -> Callable[[int], tuple[float, float]]:
    kind = schedule.get("kind")
    if kind == "cyclic":
        return lambda s: cyclic_multipliers(s, steps, schedule["lr_floor"], schedule["wd_floor"])
    if kind == "constant":
        return lambda s: constant_multipliers(s, steps, schedule["warmdown"])
    raise ValueError(f"unknown schedule kind {kind!r} (expected cyclic or constant)")


def progress_info(done: int, steps: int, first_step: int, global_step_start: int, lr: float, wd: float,
                   tokens_per_s: float, record: dict | None) -> dict:  # fmt: skip
    """What a cycle reports to `progress`: where it is (`start_step`: where this attempt began, a resumed
    cycle's checkpoint), its rate since the last report, LR/WD, and at a logged step its losses: `loss`
    (the objective), `ce` (cross-entropy toward the data, what val measures) and during distillation
    `kd`; `loss_step` is the global step they were measured at."""
    info = {
        "step": done, "steps": steps, "start_step": first_step, "global_step": global_step_start + done,
        "lr": lr, "wd": wd, "tokens_per_s": tokens_per_s,
    }  # fmt: skip
    if record is not None:
        info.update(loss=record["loss"], ce=record["ce"], loss_step=record["global_step"])
        if record["kd"] is not None:
            info["kd"] = record["kd"]
    return info


def device_capacity(device: torch.device, runtime: dict, world: int = 1) -> memory.Capacity:
    """One device's memory for the micro-batch choice: runtime.device_memory_gb, else what torch reports for
    the GPU, else this machine's memory shared by the step's ranks."""
    given = runtime.get("device_memory_gb")
    if given:
        return memory.Capacity(device.type, float(given) * memory.GB, "runtime.device_memory_gb")
    if device.type == "cuda":
        return memory.Capacity("cuda", float(torch.cuda.get_device_properties(device).total_memory), "torch")
    ram = memory.physical_memory() or 8 * memory.GB
    return memory.Capacity("cpu", ram / max(1, world), "physical memory")


def memory_plan(model: dict, optimizer: dict, distill: dict | None, seq_len: int, vocab: int, rows: int,
                device: torch.device, runtime: dict, world: int = 1) -> tuple[memory.Choice, int]:  # fmt: skip
    """(micro-batch choice, loss chunk tokens) of a cycle on this device (hepc/train/memory.py). A configuration
    that cannot fit is an error here (`hepc validate` and `run` refuse it earlier, against the planned
    device; this is the device the step really got)."""
    shape = memory.Shape(vocab, model["n_layer"], model["d_model"], model["n_head"], seq_len,
                         bool(model.get("dropout", 0.0)), optimizer.get("kind", "adamw"), distill is not None)  # fmt: skip
    chunk = runtime.get("loss_chunk_tokens")
    chunk = memory.DEFAULT_CHUNK_TOKENS[device.type] if chunk is None else int(chunk)
    capacity = device_capacity(device, runtime, world)
    bf16 = device.type == "cuda" and runtime.get("dtype") == "bfloat16"
    choice = memory.choose(shape, rows, capacity.usable, device=device.type, bf16=bf16,
                           micro=runtime.get("micro_batch") or "auto",
                           checkpointing=runtime.get("activation_checkpointing", "auto"), chunk_tokens=chunk,
                           snapshots=bool(runtime.get("checkpoint_every_steps") or runtime.get("checkpoint_every_minutes")))  # fmt: skip
    if not choice.fits:
        raise MemoryError(
            f"a cycle with micro-batches of {choice.micro} sequences needs about {memory.human(choice.estimate.total)} "
            f"per device ({choice.estimate.describe()}), more than the {memory.human(capacity.usable)} usable of "
            f"{capacity.describe().split(',')[0]}; set runtime.micro_batch lower (or auto), or see `hepc plan`"
        )
    return choice, chunk


@contextmanager
def deterministic_mode(on: bool) -> Iterator[None]:
    """runtime.deterministic: torch's deterministic kernels (a warning where an operation has none), cuDNN
    without autotuning, cuBLAS's fixed workspace; restored afterwards (steps may share a process)."""
    if not on:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS makes its handle
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)  # fmt: skip
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


def batch_sequences(optimizer: dict, seq_len: int) -> int:
    batch_seqs = optimizer["batch_tokens"] // seq_len
    if batch_seqs < 1:
        raise ValueError(f"batch_tokens {optimizer['batch_tokens']} is smaller than one sequence of {seq_len}")
    return batch_seqs


def training_tokens(corpus_dir: Path, splits: tuple[str, ...] = ("train",)) -> tuple[np.ndarray, np.ndarray]:
    """The token ids a cycle trains on and the start offsets of their pieces: the corpus's train split,
    followed by its held-out slice when `splits` names it too (data.train_on_heldout)."""
    arrays = [np.load(corpus_dir / f"{name}.npy", mmap_mode="r") for name in splits]
    starts = [np.load(corpus_dir / f"{name}_docs.npy") for name in splits]
    if len(arrays) == 1:
        return arrays[0], starts[0]
    offsets = np.cumsum([0] + [a.size for a in arrays[:-1]])
    return np.concatenate(arrays), np.concatenate([s + o for s, o in zip(starts, offsets)]).astype(np.int64)
