"""Resuming a cycle from its mid-cycle checkpoint (work/<key>/ckpt.pt): what a checkpoint must hold, the
fingerprint that ties it to one cycle, and the checks it passes before it is trusted (else it is
discarded, said, and the cycle restarts from its start)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import xxhash
from torch import nn

from hepc.store.ckpt_digest import check_digest
from hepc.train.checkpoint import (
    load_state,
)

CKPT_KEYS = (
    "model", "optimizer", "rng_cpu", "step", "steps", "global_step_start", "step_losses", "records", "wall_s",
    "fingerprint",
)  # fmt: skip


def cycle_fingerprint(**identity) -> str:
    """A digest of what defines one cycle (settings, seeds, position, inputs), kept in its checkpoints."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=repr)
    return xxhash.xxh3_128_hexdigest(text.encode())


def load_checkpoint(path: Path, *, steps: int, global_step_start: int, fingerprint: str) -> dict | str:
    """The checkpoint at `path` if it is intact and belongs to this cycle, else why not (for the user)."""
    problem = check_digest(path)
    if problem is not None:
        return f"cannot be trusted ({problem})" if problem.startswith("no digest") else f"is damaged ({problem})"
    try:
        ckpt = load_state(path)
    except Exception as e:  # noqa: BLE001  (truncated, junk, not a weights-only pickle, ...)
        return f"is damaged (unreadable: {brief_error(e)})"
    if not isinstance(ckpt, dict):
        return "does not fit this cycle (not a checkpoint)"
    missing = [k for k in CKPT_KEYS if k not in ckpt]
    if missing:
        return f"does not fit this cycle (no {', '.join(missing)})"
    their_steps, their_start = ckpt["steps"], ckpt["global_step_start"]
    if type(their_steps) is not int or type(their_start) is not int:
        return "does not fit this cycle (no step counts)"
    if their_steps != steps or their_start != global_step_start:
        return (
            f"belongs to a different cycle ({their_steps} steps from global step {their_start}; "
            f"this one: {steps} from {global_step_start})"
        )
    if ckpt["fingerprint"] != fingerprint:
        return "belongs to a different cycle (other settings, seed or inputs)"
    step, losses, records, wall = ckpt["step"], ckpt["step_losses"], ckpt["records"], ckpt["wall_s"]
    if type(step) is not int or not 0 <= step <= steps:
        return f"does not fit this cycle (step {step!r} of {steps})"
    if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != (steps,):
        return "does not fit this cycle (step losses)"
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        return "does not fit this cycle (metrics records)"
    if type(wall) not in (int, float) or not math.isfinite(wall):
        return "does not fit this cycle (wall time)"
    if not isinstance(ckpt["model"], dict) or not isinstance(ckpt["optimizer"], dict):
        return "does not fit this cycle (model or optimizer state)"
    if not isinstance(ckpt["rng_cpu"], torch.Tensor) or ckpt["rng_cpu"].dtype != torch.uint8:
        return "does not fit this cycle (RNG state)"
    return ckpt


def check_optimizer_state(net: nn.Module, opt: torch.optim.Optimizer) -> None:
    """load_state_dict checks group sizes only; per-parameter moments must have the parameters' shapes."""
    for p in net.parameters():
        for name, value in opt.state.get(p, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                raise ValueError(f"optimizer {name} has shape {tuple(value.shape)}, parameter {tuple(p.shape)}")


def brief_error(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 100 else text[:97] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def ckpt_label(ckpt_path: Path) -> str:
    """work/<key12>/ckpt.pt for a store's work folder."""
    work = ckpt_path.parent
    name = work.name
    if len(name) > 12 and all(c in "0123456789abcdef" for c in name):
        name = name[:12]
    return f"{work.parent.name}/{name}/{ckpt_path.name}"


def say(note: Callable[[str], None] | None, text: str) -> None:
    if note is not None:
        note(text)
    else:
        print(f"warning: {text}", file=sys.stderr, flush=True)
