"""Chain-distillation loss (docs/method.md §5.2): CE toward the data plus forward KL toward the frozen teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · mean over tokens of KL(softmax(teacher/T) ‖ softmax(student/T)).

    The T² factor (Hinton et al. 2015) keeps the gradient scale independent of T. Forward KL makes the
    student cover all the teacher's mass; "batchmean" over the flattened tokens averages per token.
    """
    V = student_logits.size(-1)
    log_q = F.log_softmax(student_logits.reshape(-1, V).float() / temperature, dim=-1)  # (N, V) student
    log_p = F.log_softmax(teacher_logits.detach().reshape(-1, V).float() / temperature, dim=-1)  # (N, V)
    kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)  # Σ p (log p − log q) / N
    return temperature**2 * kl


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, ce, kd) with loss = (1 − α)·CE + α·KD; ce and kd are returned for logging."""
    V = student_logits.size(-1)
    ce = F.cross_entropy(student_logits.reshape(-1, V).float(), targets.reshape(-1))
    kd = kd_loss(student_logits, teacher_logits, temperature)
    return (1.0 - alpha) * ce + alpha * kd, ce, kd
