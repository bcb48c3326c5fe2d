"""What one optimizer step computes on one device: the loss of each micro-batch, and the gradients of the
whole batch accumulated over them (docs/method.md §3.5).

`Objective` puts the student and its loss in one module, so that DDP and torch.compile see the whole
forward (the chunked loss uses the output head's weight inside it). `accumulate` runs the micro-batches:
the loss of micro-batch i is scaled by its share of the rows (n_i / n), so the accumulated gradient is the
gradient of the full batch's mean loss, and data parallelism exchanges gradients once per step (DDP's
`no_sync` on every micro-batch but the last).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from hepc.train.distill import chunked_loss, distill_loss
from hepc.train.model import GPT

Losses = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # (loss, ce, kd or None)


class Objective(nn.Module):
    """The student GPT and its training loss: `forward(x, y, teacher)` → (loss, ce, kd).

    chunk_tokens 0: full logits and `distill_loss` / `cross_entropy`, exactly the computation hepc has
    always made (the CPU default: bit-identical results). chunk_tokens > 0: `chunked_loss` from the hidden
    states (the CUDA default). `teacher` is what `teacher_outputs` returned for the same inputs, or None.
    """

    def __init__(self, net: GPT, *, chunk_tokens: int = 0, alpha: float = 0.0, temperature: float = 1.0):
        super().__init__()
        self.net = net
        self.chunk_tokens, self.alpha, self.temperature = int(chunk_tokens), float(alpha), float(temperature)

    def forward(self, x: torch.Tensor, y: torch.Tensor, teacher=None) -> Losses:
        if self.chunk_tokens:
            hidden = self.net.hidden(x)
            th, tw = teacher if teacher is not None else (None, None)
            return chunked_loss(hidden, self.net.lm_head.weight, y, chunk_tokens=self.chunk_tokens,
                                teacher_hidden=th, teacher_weight=tw, alpha=self.alpha,
                                temperature=self.temperature)  # fmt: skip
        logits = self.net(x)  # (B, T, V); local: freed once the loss holds what backward needs
        if teacher is None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
            return loss, loss, None
        return distill_loss(logits, teacher, y, self.alpha, self.temperature)


def teacher_outputs(teacher: Callable, x: torch.Tensor, chunked: bool, head_weight: torch.Tensor | None):
    """What `Objective.forward` takes from the frozen teacher for inputs x: its full logits, or (chunked)
    its hidden states and output-head weight. `teacher` is the teacher's forward (`GPT.forward`, or
    `GPT.hidden` when chunked; either possibly compiled)."""
    with torch.no_grad():
        out = teacher(x)
    return (out, head_weight) if chunked else out


def micro_batches(rows: int, micro: int) -> list[slice]:
    """The row slices of one device's batch: `micro` rows each, the last one possibly fewer."""
    micro = max(1, min(int(micro), rows))
    return [slice(start, min(start + micro, rows)) for start in range(0, rows, micro)]


def accumulate(
    forward: Callable[[torch.Tensor, torch.Tensor], Losses],
    x: torch.Tensor,
    y: torch.Tensor,
    micro: int,
    no_sync: Callable[[], object] | None = None,
) -> Losses:
    """Forward and backward over the micro-batches of (x, y); returns the batch's (loss, ce, kd), detached:
    the row-weighted means over the micro-batches, which are the full batch's means.

    With one micro-batch this is exactly `loss.backward()` on the whole batch (no scaling, same bits).
    Otherwise micro-batch i's loss is scaled by n_i / n before its backward, so the gradients summed in
    `.grad` are those of the full batch's mean loss; `no_sync` (DDP's) is entered for every micro-batch but
    the last, so that the ranks average the accumulated gradients once per step.
    """
    rows = x.size(0)
    parts = micro_batches(rows, micro)
    if len(parts) == 1:
        loss, ce, kd = forward(x, y)
        loss.backward()
        return loss.detach(), ce.detach(), kd.detach() if kd is not None else None
    totals: list[torch.Tensor] | None = None
    for i, part in enumerate(parts):
        share = (part.stop - part.start) / rows
        last = i == len(parts) - 1
        with no_sync() if no_sync is not None and not last else nullcontext():
            loss, ce, kd = forward(x[part], y[part])
            (loss * share).backward()
        values = [v.detach() * share for v in (loss, ce, kd) if v is not None]
        totals = values if totals is None else [a + b for a, b in zip(totals, values)]
        del loss, ce, kd  # this micro-batch's graph is gone; nothing of it lives into the next
    assert totals is not None
    return totals[0], totals[1], totals[2] if len(totals) == 3 else None
