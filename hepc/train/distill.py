"""Chain-distillation loss (docs/method.md §5.2): CE toward the data plus forward KL toward the frozen teacher.

Two forms of the same numbers: from full logits (`distill_loss`, what the CPU computes by default, bit for
bit as it always did) and fused with the output projection in chunks of tokens (`chunked_loss`, the
default on CUDA: no full-vocabulary float32 tensor is ever made)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


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


def _chunk_sums(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    targets: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    teacher_weight: torch.Tensor | None,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ CE and Σ KL(teacher ‖ student) at temperature T over one chunk of tokens (n, C), from the hidden
    states: the chunk's logits (n, V) exist only inside this function."""
    logits = F.linear(hidden, head_weight).float()  # (n, V); bf16 matmul under autocast, then float32
    ce = F.cross_entropy(logits, targets, reduction="sum")
    if teacher_hidden is None:
        return ce, ce.new_zeros(())
    with torch.no_grad():
        log_p = F.log_softmax(F.linear(teacher_hidden, teacher_weight).float() / temperature, dim=-1)
    log_q = F.log_softmax(logits / temperature, dim=-1)
    return ce, F.kl_div(log_q, log_p, reduction="sum", log_target=True)


def chunked_loss(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_tokens: int,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    alpha: float = 0.0,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(loss, ce, kd) as `distill_loss` (or plain CE without a teacher) computes them from full logits, but
    with the output projection fused into the loss, `chunk_tokens` tokens at a time: no (B, T, V) tensor
    exists at any point. Each chunk runs under torch.utils.checkpoint, so backward recomputes that chunk's
    logits instead of keeping them: the memory of the loss is that of one chunk (docs/method.md §3.5).
    `hidden` (B, T, C) and `teacher_hidden` are the models' normalised last hidden states
    (`GPT.hidden`), `head_weight` / `teacher_weight` their output heads' weights (V, C)."""
    C = hidden.size(-1)
    h, y = hidden.reshape(-1, C), targets.reshape(-1)
    th = teacher_hidden.reshape(-1, C) if teacher_hidden is not None else None
    n = h.size(0)
    ce_sum = kd_sum = None
    for start in range(0, n, chunk_tokens):
        part = slice(start, start + chunk_tokens)
        args = (h[part], head_weight, y[part], th[part] if th is not None else None, teacher_weight, temperature)
        if n <= chunk_tokens:  # one chunk: nothing to gain from recomputing it
            ce, kd = _chunk_sums(*args)
        else:
            ce, kd = checkpoint(_chunk_sums, *args, use_reentrant=False)
        ce_sum = ce if ce_sum is None else ce_sum + ce
        kd_sum = kd if kd_sum is None else kd_sum + kd
    ce = ce_sum / n
    if teacher_hidden is None:
        return ce, ce, None
    kd = temperature**2 * kd_sum / n
    return (1.0 - alpha) * ce + alpha * kd, ce, kd
