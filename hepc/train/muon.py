"""Muon (MomentUm Orthogonalized by Newton–Schulz) for torch builds that lack `torch.optim.Muon` (< 2.9).

hepc uses torch's own Muon whenever it exists (`muon_class()`); this module is the stand-in for
older torch, written from Keller Jordan's published description (kellerjordan.github.io/posts/muon):

    B ← μ·B + (1 − μ)·G                     momentum as an exponential average of the gradients
    U ← (1 − μ)·G + μ·B   (Nesterov)        or U ← B without Nesterov
    O ← NS₅(U)                              ≈ the orthogonal factor of U (U = A·S·Cᵀ ↦ ≈ A·Cᵀ)
    W ← W·(1 − lr·λ) − lr·√max(1, rows/cols)·O

NS₅ is five steps of the quintic Newton–Schulz map X ← a·X + (b·XXᵀ + c·(XXᵀ)²)·X with
(a, b, c) = (3.4445, −4.7750, 2.0315), run in bfloat16 after X is divided by its Frobenius norm
(≥ the spectral norm, so every singular value starts in [0, 1]). Each step maps a singular value
σ to a·σ + b·σ³ + c·σ⁵; the coefficients make the slope at 0 large, so five steps lift even tiny
singular values into a band around 1 (about 0.68 to 1.14, not exactly 1: that suffices and keeps the
step count low). Only the singular values change; the singular vectors are those of U. Iterating
on the wide orientation keeps the Gram matrix XXᵀ the small one. The √max(1, rows/cols) factor
gives tall matrices the same per-element update size as square ones.

The state ("momentum_buffer" per parameter) and the group settings have the same names as in
torch's Muon, so a state_dict saved by either loads into the other.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7


def orthogonalize(
    update: torch.Tensor, steps: int = 5, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = NS_EPS,
) -> torch.Tensor:  # fmt: skip
    """≈ A·Cᵀ for update = A·S·Cᵀ (2-D): `steps` quintic Newton–Schulz steps in bfloat16 (see the module)."""
    if update.dim() != 2:
        raise ValueError(f"Muon orthogonalises matrices, got a tensor of shape {tuple(update.shape)}")
    a, b, c = coefficients
    x = update.bfloat16()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b·XXᵀ + c·(XXᵀ)²
        x = torch.addmm(x, poly, x, beta=a)  # a·X + poly·X
    return x.T if tall else x


def update_scale(shape: torch.Size) -> float:
    """√max(1, rows/cols): the learning-rate factor of a rows × cols matrix."""
    rows, cols = shape[0], shape[1]
    return math.sqrt(max(1.0, rows / cols))


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters (the stand-in for torch.optim.Muon; same arguments, state and groups).

    lr: step size of the orthogonalised update (scaled per matrix by √max(1, rows/cols));
    weight_decay: decoupled, W ← W·(1 − lr·weight_decay) before the update, as in AdamW;
    momentum, nesterov: the momentum average and whether the update looks one step ahead;
    ns_coefficients, ns_steps, eps: the Newton–Schulz iteration. Only the "original" (Keller Jordan)
    learning-rate adjustment is implemented.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = NS_EPS,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
    ) -> None:
        if lr < 0 or weight_decay < 0 or momentum < 0:
            raise ValueError(f"Muon needs lr, weight_decay and momentum >= 0 (got {lr}, {weight_decay}, {momentum})")
        if adjust_lr_fn not in (None, "original"):
            raise ValueError(f"learning-rate adjustment {adjust_lr_fn!r} is not implemented here (only 'original')")
        defaults = {
            "lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
            "ns_coefficients": tuple(ns_coefficients), "eps": eps, "ns_steps": ns_steps, "adjust_lr_fn": adjust_lr_fn,
        }  # fmt: skip
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon only takes 2-D parameters, got one of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - mu)
                update = grad.lerp(buf, mu) if group["nesterov"] else buf
                ortho = orthogonalize(update, group["ns_steps"], group["ns_coefficients"], group["eps"])
                p.mul_(1 - lr * wd)
                p.add_(ortho, alpha=-lr * update_scale(p.shape))
        return loss


def muon_class() -> type[torch.optim.Optimizer]:
    """torch.optim.Muon where this torch has it (2.9 and later), else this module's Muon."""
    return getattr(torch.optim, "Muon", None) or Muon
