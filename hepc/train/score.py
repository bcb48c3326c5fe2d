"""Per-token probability of the correct token under one snapshot (the input of the learned prior)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hepc.train.checkpoint import load_weights
from hepc.train.model import GPT, GPTConfig, precision_context, resolve_device


@torch.no_grad()
def score_tokens(
    *,
    model: dict,
    weights_path: Path,
    tokens: np.ndarray,
    vocab_size: int,
    seq_len: int,
    runtime: dict,
    batch_seqs: int = 16,
) -> np.ndarray:
    """p[i] = P(tokens[i+1] | tokens[window start : i+1]) for i = 0 … len(tokens) − 2, float32.

    Windows of seq_len + 1 tokens with stride seq_len (window w covers tokens[w·T : w·T + T + 1]) so every
    token but the first is a target exactly once; context restarts at each window, like the val loss of
    method.md §2. The last window may be shorter.
    """
    device = resolve_device(runtime.get("device", "auto"))
    autocast = precision_context(device, runtime.get("dtype", "float32"))
    if runtime.get("threads"):
        torch.set_num_threads(int(runtime["threads"]))
    config = GPTConfig(vocab_size, model["n_layer"], model["d_model"], model["n_head"], 0.0, seq_len)
    net = GPT(config)
    net.load_state_dict(load_weights(Path(weights_path)))
    net.to(device).eval()

    tokens = np.asarray(tokens, dtype=np.int64)
    n_targets = max(len(tokens) - 1, 0)
    out = np.empty(n_targets, dtype=np.float32)
    n_full = n_targets // seq_len  # windows with a full seq_len of targets
    if n_full:  # (n_full, T+1) views, no copy
        full = np.lib.stride_tricks.sliding_window_view(tokens, seq_len + 1)[::seq_len][:n_full]

    def probs(window: np.ndarray) -> np.ndarray:  # window (B, t+1) -> (B, t)
        w = torch.from_numpy(np.array(window)).to(device)  # copy: the windows are read-only views
        x, y = w[:, :-1], w[:, 1:]
        with autocast:
            logits = net(x)  # (B, t, V)
        p = torch.softmax(logits.float(), dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)  # (B, t)
        # keep p > 0 so the prior's log never sees an exact zero from float32 underflow
        return p.clamp_min(torch.finfo(torch.float32).tiny).cpu().numpy()

    for b in range(0, n_full, batch_seqs):
        chunk = full[b : b + batch_seqs]
        out[b * seq_len : (b + len(chunk)) * seq_len] = probs(chunk).reshape(-1)
    if n_full * seq_len < n_targets:  # the shorter last window
        out[n_full * seq_len :] = probs(tokens[None, n_full * seq_len :])[0]
    return out
