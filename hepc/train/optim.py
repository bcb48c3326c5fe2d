"""AdamW with decoupled weight decay on matrices only, and the per-step LR/WD setter."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: Sequence[float], eps: float
) -> torch.optim.AdamW:
    """Two groups: every ≥2-D tensor (including embeddings and lm_head) is decayed, 1-D tensors are not.

    torch's AdamW decays p ← p·(1 − lr·wd) apart from the Adam update (Loshchilov & Hutter 2019),
    the form method.md §3 uses. Our GPT has no 1-D parameters, so the second group is usually absent.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decayed = [p for p in params if p.dim() >= 2]
    not_decayed = [p for p in params if p.dim() < 2]
    groups = [{"params": decayed, "weight_decay": weight_decay, "decay": True}]
    if not_decayed:
        groups.append({"params": not_decayed, "weight_decay": 0.0, "decay": False})
    return torch.optim.AdamW(groups, lr=lr, betas=(betas[0], betas[1]), eps=eps)


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    """Set this step's LR on every group and WD on the decayed group(s)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = wd if group.get("decay", True) else 0.0
