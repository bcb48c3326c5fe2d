"""Generation from the mixture distribution (never from one member).

Each new token is drawn from the ensemble's next-token distribution (``Ensemble.next_token_probs``:
weighted probability averaging) given the last seq_len tokens: with every member resident, from the
members' key/value caches (`Ensemble.cached`, one batched step of the K members per token; the window
slides as `generate_ids` says), else recomputed in full at every step. The prompt is a document start
(end-of-text, then its text), as every document of the corpus was. Transformations, in order:
temperature T (p ∝ p^(1/T); T = 0 is greedy), top-k (the k most likely tokens), top-p (the smallest
set of most likely tokens holding at least p of the mass). The draw uses a torch.Generator seeded with
`seed` on the CPU, so a seed gives the same text on any device the probabilities agree on.
Generation stops after `max_tokens` tokens, or at end-of-text (the document ends).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from hepc.errors import HepcError
from hepc.use.text import encode_document


def check_options(prompt: str, max_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    problems = []
    if not prompt:
        problems.append("--prompt: empty; give the text to continue (generation starts a document with it)")
    else:
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:  # bytes the shell passed that are not UTF-8 (Python keeps them as surrogates)
            problems.append(f"--prompt: not UTF-8 text (an undecodable byte at character {e.start + 1}); "
                            "give the prompt in UTF-8")
    if max_tokens < 1:
        problems.append(f"--max-tokens: must be at least 1 (got {max_tokens})")
    if not (temperature >= 0.0) or temperature == float("inf"):
        problems.append(f"--temperature: must be a finite number ≥ 0 (got {temperature})")
    if top_k is not None and top_k < 1:
        problems.append(f"--top-k: must be at least 1 (got {top_k})")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        problems.append(f"--top-p: must lie in (0, 1] (got {top_p})")
    if problems:
        from hepc.errors import Problem

        raise HepcError([Problem("", "", p) for p in problems])


def filter_probs(p: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """The distribution to draw from (float64, sums to 1): temperature, then top-k, then top-p."""
    p = p.double().clamp_min(0.0)
    if temperature == 0.0:
        out = torch.zeros_like(p)
        out[int(torch.argmax(p))] = 1.0
        return out
    if temperature != 1.0:
        logp = torch.log(p.clamp_min(1e-300)) / temperature
        p = torch.softmax(logp, dim=-1)
    if top_k is not None and top_k < p.numel():
        kth = torch.topk(p, top_k).values[-1]
        p = torch.where(p >= kth, p, torch.zeros_like(p))
    if top_p is not None and top_p < 1.0:
        sorted_p, order = torch.sort(p, descending=True)
        cum = torch.cumsum(sorted_p, 0) / sorted_p.sum()
        keep = cum - sorted_p / sorted_p.sum() < top_p  # every token until the mass reaches top_p
        mask = torch.zeros_like(p, dtype=torch.bool)
        mask[order[keep]] = True
        p = torch.where(mask, p, torch.zeros_like(p))
    return p / p.sum()


def generate_ids(ensemble, ids: np.ndarray, *, max_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 0, stop_at_eot: bool = True,
                 cache: bool = True) -> Iterator[int]:
    """Token ids drawn one at a time after `ids` (a document's ids, end-of-text first).

    With `cache` (and every member resident) each member keeps its keys and values: a new token costs
    one position per member. The context is the last seq_len tokens; when it fills, the cache starts
    again from the last seq_len / 2 tokens (a sliding window that moves by half a window at a time, so
    past seq_len the context holds between seq_len / 2 and seq_len tokens). Without the cache every
    token recomputes the last seq_len tokens. While the text fits in seq_len both give the same tokens."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    ctx = [int(t) for t in np.asarray(ids).reshape(-1)]
    eot = getattr(ensemble.tokenizer, "eot_id", None)
    mixture = ensemble.cached() if cache else None
    window_len = ensemble.seq_len
    for _ in range(max_tokens):
        if mixture is None:
            window = np.asarray(ctx[-window_len:], dtype=np.int64)
            p = ensemble.next_token_probs(window[None])[0, -1].cpu()
        elif not mixture.started or mixture.length >= window_len:
            keep = window_len if not mixture.started else window_len // 2
            p = mixture.start(np.asarray(ctx[-keep:], dtype=np.int64)[None]).cpu()
        else:
            p = mixture.push(ctx[-1]).cpu()
        q = filter_probs(p, temperature, top_k, top_p)
        tok = int(torch.multinomial(q, 1, generator=gen)) if temperature > 0.0 else int(torch.argmax(q))
        if stop_at_eot and tok == eot:
            return
        ctx.append(tok)
        yield tok


def generate(ensemble, prompt: str, *, max_tokens: int = 200, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int = 0) -> Iterator[str]:
    """Text pieces that continue `prompt`, as soon as they decode (a UTF-8 character split over
    byte tokens comes out whole); the pieces joined are the continuation."""
    check_options(prompt, max_tokens, temperature, top_k, top_p)
    ids = encode_document(ensemble.tokenizer, prompt)
    new: list[int] = []
    shown = ""
    for tok in generate_ids(ensemble, ids, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, seed=seed):
        new.append(tok)
        text = ensemble.tokenizer.decode(new)
        if text.endswith("\ufffd"):  # an incomplete character: wait for its next bytes
            continue
        if text.startswith(shown):
            piece, shown = text[len(shown):], text
            if piece:
                yield piece
    text = ensemble.tokenizer.decode(new) if new else ""
    if text != shown and text.startswith(shown):
        yield text[len(shown):]
