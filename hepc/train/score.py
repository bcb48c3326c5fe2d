"""Per-token probability of the correct token under one snapshot (the input of the learned prior)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hepc.sizes import param_count
from hepc.train.batches import to_device
from hepc.train.checkpoint import load_weights
from hepc.train.memory import DEFAULT_CHUNK_TOKENS, GB, physical_memory
from hepc.train.model import GPT, GPTConfig, precision_context, resolve_device


def load_net(model: dict, weights_path: Path, vocab_size: int, seq_len: int, device: torch.device) -> GPT:
    """A snapshot in eval mode (dropout off) on `device`."""
    config = GPTConfig(vocab_size, model["n_layer"], model["d_model"], model["n_head"], 0.0, seq_len)
    net = GPT(config)
    net.load_state_dict(load_weights(Path(weights_path)))
    return net.to(device).eval()


def windows(tokens: np.ndarray, seq_len: int, batch_seqs: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first target index, windows (B, t+1)) covering every target of `tokens` exactly once.

    Windows of seq_len + 1 tokens with stride seq_len (window w covers tokens[w·T : w·T + T + 1]) so every
    token but the first is a target exactly once; context restarts at each window, like the val loss of
    method.md §2. The last window may be shorter.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    n_targets = max(len(tokens) - 1, 0)
    n_full = n_targets // seq_len  # windows with a full seq_len of targets
    if n_full:  # (n_full, T+1) views, no copy
        full = np.lib.stride_tricks.sliding_window_view(tokens, seq_len + 1)[::seq_len][:n_full]
        for b in range(0, n_full, batch_seqs):
            yield b * seq_len, np.array(full[b : b + batch_seqs])  # copy: the views are read-only
    if n_full * seq_len < n_targets:  # the shorter last window
        yield n_full * seq_len, np.array(tokens[None, n_full * seq_len :])


# Windows per forward pass. The result does not depend on it (each window is scored on its own), so the GPU
# takes bigger batches; the CPU keeps the batch it always had.
CPU_BATCH_SEQS, CUDA_BATCH_SEQS = 16, 64


def _setup(runtime: dict, batch_seqs: int | None):
    """(device, precision context, windows per batch). bf16 autocast on CUDA only (precision_context);
    the softmax / log-softmax are always taken in float32."""
    device = resolve_device(runtime.get("device", "auto"))
    if runtime.get("threads"):
        torch.set_num_threads(int(runtime["threads"]))
    if batch_seqs is None:
        batch_seqs = CUDA_BATCH_SEQS if device.type == "cuda" else CPU_BATCH_SEQS
    return device, precision_context(device, runtime.get("dtype", "float32")), batch_seqs


def chunk_tokens(runtime: dict, device: torch.device) -> int:
    """runtime.loss_chunk_tokens, or its default on this device (0 on the CPU: full logits, as always)."""
    chunk = runtime.get("loss_chunk_tokens")
    return DEFAULT_CHUNK_TOKENS[device.type] if chunk is None else int(chunk)


def correct_token_probs(net: GPT, x: torch.Tensor, y: torch.Tensor, chunk: int) -> torch.Tensor:
    """P(y | x) under `net` for every position, (B, t) float32.

    chunk 0: the float32 softmax of the full logits, gathered at y (what hepc has always stored, bit for bit).
    chunk > 0: exp(−cross_entropy(reduction='none')) from the hidden states, the output projection applied
    `chunk` tokens at a time: no (B, t, V) tensor, no full softmax (equal to float32 rounding)."""
    if not chunk:
        logits = net(x)  # (B, t, V)
        return torch.softmax(logits.float(), dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    hidden = net.hidden(x)
    h, targets = hidden.reshape(-1, hidden.size(-1)), y.reshape(-1)
    parts = []
    for start in range(0, h.size(0), chunk):
        logits = F.linear(h[start : start + chunk], net.lm_head.weight).float()
        parts.append(torch.exp(-F.cross_entropy(logits, targets[start : start + chunk], reduction="none")))
    return torch.cat(parts).view_as(y)


@torch.inference_mode()
def score_tokens(
    *,
    model: dict,
    weights_path: Path,
    tokens: np.ndarray,
    vocab_size: int,
    seq_len: int,
    runtime: dict,
    batch_seqs: int | None = None,
) -> np.ndarray:
    """p[i] = P(tokens[i+1] | tokens[window start : i+1]) for i = 0 … len(tokens) − 2, float32 (see `windows`)."""
    device, autocast, batch_seqs = _setup(runtime, batch_seqs)
    chunk = chunk_tokens(runtime, device)
    net = load_net(model, weights_path, vocab_size, seq_len, device)
    out = torch.empty(max(len(tokens) - 1, 0), dtype=torch.float32, device=device)  # one copy back, at the end
    for start, window in windows(tokens, seq_len, batch_seqs):
        w = to_device(window, device)
        x, y = w[:, :-1], w[:, 1:]
        with autocast:
            p = correct_token_probs(net, x, y, chunk)  # (B, t)
        # keep p > 0 so the prior's log never sees an exact zero from float32 underflow
        out[start : start + p.numel()] = p.clamp_min(torch.finfo(torch.float32).tiny).reshape(-1)
    return out.cpu().numpy()


@torch.inference_mode()
def logit_ensemble_losses(
    *,
    model: dict,
    weights_paths: list[Path],
    ensembles: list[list[tuple[int, float]]],
    tokens: np.ndarray,
    vocab_size: int,
    seq_len: int,
    runtime: dict,
    batch_seqs: int | None = None,
    resident_bytes: float | None = None,
) -> list[float]:
    """Mean NLL (nats) of each ensemble under weighted LOGIT averaging: softmax(Σ_i w_i z_i).

    `ensembles[j]` lists (member index into `weights_paths`, weight) pairs, weights summing to 1.
    The ablation of docs/method.md §7 (the method itself averages probabilities).

    Members are streamed: per batch of windows, one member's logits at a time are added into each
    ensemble's running sum (in the order members first appear in `ensembles`; the top-K ensembles of a
    prior are prefixes of one order, so each sums in its own order) and freed, so memory holds the
    ensembles' sums and one member's logits, never every member's. The snapshots stay loaded while their
    weights fit in `resident_bytes` (default: a quarter of the device's memory); beyond that each is loaded
    again for every batch of windows (slower, bounded memory). The windows per batch shrink so that the
    sums fit in another quarter.
    """
    device, autocast, batch_seqs = _setup(runtime, batch_seqs)
    order = list(dict.fromkeys(i for ens in ensembles for i, _ in ens))
    budget = _device_bytes(device, runtime) / 4
    if resident_bytes is None:
        resident_bytes = budget
    per_window = (len(ensembles) + 1) * seq_len * vocab_size * 4  # float32 sums and one member's logits
    batch_seqs = max(1, min(batch_seqs, int(budget // max(per_window, 1))))
    weights_bytes = 4 * param_count(vocab_size, model["n_layer"], model["d_model"])  # float32, per member
    resident = weights_bytes * len(order) <= resident_bytes
    nets = {i: load_net(model, weights_paths[i], vocab_size, seq_len, device) for i in order} if resident else {}
    totals = torch.zeros(len(ensembles), dtype=torch.float64, device=device)  # summed on the device: no sync
    count = 0
    for _, window in windows(tokens, seq_len, batch_seqs):
        w = to_device(window, device)
        x, y = w[:, :-1], w[:, 1:]
        mixed: list[torch.Tensor | None] = [None] * len(ensembles)
        for i in order:
            net = nets[i] if resident else load_net(model, weights_paths[i], vocab_size, seq_len, device)
            with autocast:
                logits = net(x).float()  # (B, t, V)
            for j, ens in enumerate(ensembles):
                for member, weight in ens:
                    if member == i:
                        mixed[j] = weight * logits if mixed[j] is None else mixed[j] + weight * logits
            del logits, net
        for j, total in enumerate(mixed):
            nll = torch.nn.functional.cross_entropy(total.flatten(0, 1), y.flatten(), reduction="sum")
            totals[j] += nll.double()
        count += y.numel()
    return [t / max(count, 1) for t in totals.tolist()]


def _device_bytes(device: torch.device, runtime: dict) -> float:
    """One device's memory: runtime.device_memory_gb, the GPU's, or this machine's."""
    if runtime.get("device_memory_gb"):
        return float(runtime["device_memory_gb"]) * GB
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    return physical_memory() or 8 * GB
