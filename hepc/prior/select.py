"""Top-K selection (the K largest weights, renormalised, no refit; docs/method.md §6.5) and the loss of
any number of weighted ensembles on val."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hepc.prior.rows import check_probs, check_weights, nll_rows, stream_nll

# ---------------------------------------------------------------------------------------------
# selection and scoring


def top_k(weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The K largest weights and their renormalisation (docs/method.md §6.5, no refit).

        S_K = indices of the K largest w_i,    w̃_i = w_i / Σ_{j∈S_K} w_j   for i ∈ S_K

    ``k`` is clipped to M (k ≥ M keeps every member). Indices come in decreasing weight order; equal
    weights go to the lower index (a stable sort), so the choice is deterministic. Returns
    (indices int64, renormalised float64 weights summing to 1).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1:
        raise ValueError(f"weights must be a vector, got shape {w.shape}")
    w = check_weights(w, w.shape[0], normalised=False)
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    k = min(k, w.shape[0])
    idx = np.argsort(-w, kind="stable")[:k].astype(np.int64)
    sel = w[idx]
    total = sel.sum()
    if not total > 0.0:
        raise ValueError("the selected members all have zero weight")
    return idx, sel / total


def _check_ensemble(m: int, indices: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.shape[0] < 1:
        raise ValueError("need at least one member")
    if np.any(idx < 0) or np.any(idx >= m):
        raise ValueError(f"indices must lie in [0, {m})")
    if np.unique(idx).shape[0] != idx.shape[0]:
        raise ValueError("indices must be distinct")
    w = check_weights(weights, idx.shape[0], normalised=True)
    return idx, w


def ensemble_loss(P_val, indices: np.ndarray, weights: np.ndarray) -> float:
    """Validation loss of the chosen members combined by weighted probability averaging.

        loss = −(1/T) Σ_t log( max( Σ_{r} w̃_r P_val[indices[r], t], 1e-12 ) )

    ``indices`` are distinct rows of ``P_val``; ``weights`` (w̃, same length, summing to 1) are aligned
    with them, e.g. the output of ``top_k``. Only the chosen rows are read, a column block at a time
    (``P_val`` may be a memory map or a ``RowStack``). Several ensembles: ``ensemble_losses``.
    """
    P_val = check_probs(P_val, "P_val")
    idx, w = _check_ensemble(P_val.shape[0], indices, weights)
    nz = w > 0.0
    return nll_rows(P_val, idx[nz], w[nz])


def ensemble_losses(P_val, ensembles: Sequence[tuple[np.ndarray, np.ndarray]], *,
                    chunk: int | None = None) -> list[float]:
    """``ensemble_loss`` of every (indices, weights) pair in ``ensembles``, in one pass over ``P_val``.

    The rows any ensemble uses are read once per column block (``chunk`` columns; default a fixed
    grid of ``_SCORE_COLUMNS``), so scoring E ensembles on T tokens reads P_val once, whether it is an
    array, a memory map or a ``RowStack`` of per-member files; memory is bounded by the block, never
    T. Each value is bit for bit what ``ensemble_loss`` gives for that pair alone (see ``stream_nll``).
    """
    P_val = check_probs(P_val, "P_val")
    if chunk is not None and int(chunk) < 1:
        raise ValueError(f"chunk must be ≥ 1 columns, got {chunk}")
    checked = [_check_ensemble(P_val.shape[0], i, w) for i, w in ensembles]
    if not checked:
        return []
    nonzero = [(idx[w > 0.0], w[w > 0.0]) for idx, w in checked]
    return [float(x) for x in stream_nll(P_val, nonzero, "P_val", chunk)]
