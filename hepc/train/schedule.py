"""Learning-rate / weight-decay multipliers inside a cycle, and the per-boundary perturbation scale.

Pure math (no torch) so the compiler can print schedules without importing a deep-learning stack.
All functions depend only on their arguments, never on the total number of cycles: a population
grown from 8 to 12 cycles reuses the first 8 unchanged (prefix stability).
"""

from __future__ import annotations

import math


def cyclic_multipliers(step: int, steps_in_cycle: int, lr_floor: float, wd_floor: float) -> tuple[float, float]:
    """q0's sawtooth (docs/method.md §4.2): LR falls linearly from 1 to ~lr_floor, WD rises from wd_floor to ~1.

    The two are exact affine images of each other, so their correlation over a cycle is −1: WD is low
    while the LR explores and high while it settles, which pulls the weight norm down before the snapshot.
    wd_floor = 1 turns the anti-correlation off (flat WD ablation).
    """
    _check_step(step, steps_in_cycle)
    f, g = lr_floor, wd_floor
    lr_mult = f + (1.0 - f) * (1.0 - step / steps_in_cycle)
    if f == 1.0:
        # A flat LR has nothing to anti-correlate with: keep WD at its floor for the whole cycle.
        return lr_mult, g
    wd_mult = g + (1.0 - g) * (1.0 - lr_mult) / (1.0 - f)
    return lr_mult, wd_mult


def constant_multipliers(step: int, steps_in_cycle: int, warmdown: float) -> tuple[float, float]:
    """Constant LR with a linear warmdown over the last `warmdown` fraction of the steps; flat WD.

    The LR would reach 0 one step after the last, so the last step still moves (lr = 1/W > 0).
    This is the single-model / ensemble-baseline schedule of docs/method.md §4.6.
    """
    _check_step(step, steps_in_cycle)
    if not 0.0 <= warmdown <= 1.0:
        raise ValueError(f"warmdown must be in [0, 1], got {warmdown}")
    warmdown_steps = warmdown * steps_in_cycle
    if warmdown_steps == 0:
        return 1.0, 1.0
    return min(1.0, (steps_in_cycle - step) / warmdown_steps), 1.0


def perturb_scale(cycle_index: int, start: float, end: float, decay_cycles: int) -> float:
    """Noise scale applied at the start of cycle `cycle_index` (1-based) to the weights of cycle_index − 1.

    Cycle 1 starts from a fresh init, so 0. Boundary b = cycle_index − 1 gets a cosine decay from `start`
    (b = 1) to `end` (b ≥ decay_cycles), as in the leaderboard code (docs/method.md §4.3) but with the decay
    length given explicitly instead of derived from the total cycle count.
    """
    if cycle_index < 1:
        raise ValueError(f"cycle_index is 1-based, got {cycle_index}")
    if decay_cycles < 1:
        raise ValueError(f"decay_cycles must be >= 1, got {decay_cycles}")
    if cycle_index == 1:
        return 0.0
    boundary = cycle_index - 1
    progress = min(boundary - 1, decay_cycles - 1) / max(decay_cycles - 1, 1)  # 0 → 1
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def multipliers(schedule: dict, step: int, steps_in_cycle: int) -> tuple[float, float]:
    """(LR, WD) multipliers of a spec's `population.schedule` (as a dict) at one step of a cycle."""
    if schedule["kind"] == "cyclic":
        return cyclic_multipliers(step, steps_in_cycle, schedule.get("lr_floor", 0.08), schedule.get("wd_floor", 0.7))
    return constant_multipliers(step, steps_in_cycle, schedule.get("warmdown", 0.2))


def decay_efolds(schedule: dict, steps_in_cycle: int, lr: float, weight_decay: float) -> float:
    """e-folds of decoupled weight decay over one cycle: Σ_s lr·lr_mult(s) · weight_decay·wd_mult(s).

    Each step multiplies a decayed weight by (1 − lr_s·wd_s), so with no gradient a weight shrinks by
    about exp(−this) over the cycle; the LR sawtooth counts (a cycle's late steps decay little)."""
    total = sum(a * b for a, b in (multipliers(schedule, s, steps_in_cycle) for s in range(steps_in_cycle)))
    return lr * weight_decay * total


def steps_per_cycle(epochs_per_cycle: float, train_tokens: int, batch_tokens: int) -> int:
    """Optimizer steps that make one cycle cover `epochs_per_cycle` passes over the train split."""
    if batch_tokens <= 0:
        raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
    return max(1, round(epochs_per_cycle * train_tokens / batch_tokens))


def _check_step(step: int, steps_in_cycle: int) -> None:
    if steps_in_cycle < 1:
        raise ValueError(f"steps_in_cycle must be >= 1, got {steps_in_cycle}")
    if not 0 <= step < steps_in_cycle:
        raise ValueError(f"step {step} outside the cycle [0, {steps_in_cycle})")
