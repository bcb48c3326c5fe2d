"""Ensemble mathematics: the learned prior, top-K selection and the loss-vs-budget curve.

Everything here works on cached per-token probabilities of the correct token (docs/method.md §6.1):
row i of a matrix ``P`` (shape M×N) holds p_{i,n} = softmax(logits_{i,n})[y_n] of snapshot i on
token n. Members are combined by **weighted probability averaging** (docs/method.md §6.2):

    loss(w) = −(1/N) Σ_n log( max( Σ_i w_i p_{i,n}, FLOOR ) ),    FLOOR = 1e-12,

accumulated in float64. The prior (docs/method.md §6.3) is the maximum-likelihood mixture weight vector
on the held-out slice (``fit_prior``, AdamW as in the paper; ``fit_prior_em``); a budget of K members
keeps the K largest weights, renormalised, without a refit (§6.5). On a small held-out slice that fit
overfits its M weights, so ``fit_prior_shrinkage`` pulls it toward uniform with a strength chosen by
cross-validation over held-out documents (§6.4). ``loss_curve`` walks the snapshots in the order they
become available (§4.5) and scores the top-K ensemble at each point (§8.1).

Scale (the paper: 480 snapshots, 131K held-out and 10M val tokens): val is never held in memory
whole. Scoring reads ``P`` a column block at a time, from an array, a memory map or a ``RowStack`` of
rows read from disk (one ``probs.npy`` per member), and ``ensemble_losses`` scores any number of
ensembles in one pass. The curve's prior fits on every prefix of the availability order run batched
(``fit_prior_prefixes``): the same AdamW runs as ``fit_prior`` on each prefix, advanced together.

numpy only: this module must stay cheap to import (no torch).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "FLOOR",
    "SHRINKAGE_EM_ITERS",
    "SHRINKAGE_FOLDS",
    "SHRINKAGE_STRENGTHS",
    "FitResult",
    "Folds",
    "NpyRow",
    "RowStack",
    "ShrinkageFit",
    "availability_costs",
    "cv_folds",
    "document_units",
    "ensemble_loss",
    "ensemble_losses",
    "fit_prior",
    "fit_prior_em",
    "fit_prior_prefixes",
    "fit_prior_shrinkage",
    "loss_curve",
    "mixture_nll",
    "population_index",
    "round_points",
    "top_k",
    "uniform_weights",
]

FLOOR = 1e-12
"""Lower clamp on a mixed probability before the log: a token nobody predicts costs −log(1e-12) ≈ 27.6 nats."""

_CHUNK_ELEMENTS = 1 << 22  # float64 elements per column block when scoring (≈32 MiB)
_SCORE_COLUMNS = 1 << 14  # columns per block when scoring: a fixed grid (an ensemble's loss never depends on it)
_SUM_TOL = 1e-6  # how far Σw may stray from 1 where weights must already be normalised
_P_MAX = 1.0 + 1e-5  # fp32 softmax can round a hair above 1; anything larger is not a probability


# ---------------------------------------------------------------------------------------------
# validation helpers


class RowStack:
    """A population matrix kept as separate rows, read a column block at a time.

    ``rows`` are 1-D arrays of equal length N, or ``NpyRow`` files (``RowStack.from_npy``: one
    ``probs.npy`` per member, read from disk a block at a time), so an M×N val matrix is never held
    in memory. It
    supports what the scoring functions here read: ``shape``, ``dtype``, ``ndim`` and
    ``P[rows, start:stop]`` (rows a slice, an int or an integer array) returning an in-memory block.
    Values are checked a block at a time while scoring, not up front.
    """

    ndim = 2

    def __init__(self, rows: Sequence[np.ndarray]):
        rows = list(rows)
        if not rows:
            raise ValueError("a RowStack needs at least one row")
        n = None
        for i, r in enumerate(rows):
            if getattr(r, "ndim", None) != 1:
                raise ValueError(f"row {i} must be 1-D, got shape {getattr(r, 'shape', None)}")
            if n is None:
                n = r.shape[0]
            elif r.shape[0] != n:
                raise ValueError(f"rows must have equal length: row 0 has {n}, row {i} has {r.shape[0]}")
        self._rows = rows
        self.shape = (len(rows), int(n))
        self.dtype = np.result_type(*[r.dtype for r in rows])

    @classmethod
    def from_npy(cls, paths) -> RowStack:
        """The rows of 1-D ``.npy`` files, each read from disk a column block at a time (``NpyRow``)."""
        return cls([NpyRow(p) for p in paths])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[1], slice)):
            raise TypeError("a RowStack is read as P[rows, start:stop]")
        rows, cols = key
        if isinstance(rows, slice):
            idx = range(*rows.indices(self.shape[0]))
        else:
            idx = np.atleast_1d(np.asarray(rows, dtype=np.int64)).tolist()
        block = np.stack([np.asarray(self._rows[i][cols]) for i in idx]) if len(idx) else \
            np.empty((0, len(range(*cols.indices(self.shape[1])))), dtype=self.dtype)
        return block[0] if np.ndim(rows) == 0 and not isinstance(rows, slice) else block


class NpyRow:
    """A 1-D ``.npy`` file read a slice at a time, straight from disk (``row[start:stop]``).

    Unlike a memory map it holds no open file (a population of thousands of members stays within
    the open-file limit) and maps no pages (what the process reads is all it holds).
    """

    ndim = 1

    def __init__(self, path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            self.offset = f.tell()
        if len(shape) != 1 or dtype.hasobject:
            raise ValueError(f"{self.path}: expected a 1-D numeric array, got shape {shape}, dtype {dtype}")
        self.shape, self.dtype = (int(shape[0]),), dtype

    def __getitem__(self, cols: slice) -> np.ndarray:
        start, stop, step = cols.indices(self.shape[0])
        if step != 1:
            raise TypeError("an NpyRow is read as row[start:stop]")
        count, size = max(0, stop - start), self.dtype.itemsize
        fd = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(fd, count * size, self.offset + start * size)
        finally:
            os.close(fd)
        if len(data) != count * size:
            raise ValueError(f"{self.path}: file is shorter than its header says")
        return np.frombuffer(data, dtype=self.dtype)


def _is_streamed(P) -> bool:
    """True for sources read a block at a time (a RowStack or a memory map): values checked while read."""
    return isinstance(P, (RowStack, np.memmap))


def _check_block(block: np.ndarray, name: str) -> None:
    # NaN fails both comparisons, so this also rejects NaN.
    if not (np.all(block >= 0.0) and np.all(block <= _P_MAX)):
        raise ValueError(f"{name} must hold probabilities in [0, 1] (no NaN)")


def _check_probs(P, name: str = "P"):
    """Return ``P`` as a 2-D float source with M ≥ 1 rows and N ≥ 1 columns, entries in [0, 1].

    An in-memory array is checked here, a column block at a time (bounded temporaries); a
    ``RowStack`` or a memory map is returned as is and its values are checked as they are scored.
    """
    if not _is_streamed(P):
        P = np.asarray(P)
    if P.ndim != 2:
        raise ValueError(f"{name} must be 2-D (members × tokens), got shape {P.shape}")
    if P.shape[0] < 1 or P.shape[1] < 1:
        raise ValueError(f"{name} must have at least one member and one token, got shape {P.shape}")
    if not np.issubdtype(P.dtype, np.floating):
        if _is_streamed(P):
            raise ValueError(f"{name} must hold floating-point probabilities, got {P.dtype}")
        P = P.astype(np.float64)
    if not _is_streamed(P):
        step = max(1, _CHUNK_ELEMENTS // P.shape[0])
        for start in range(0, P.shape[1], step):
            _check_block(P[:, start:start + step], name)
    return P


def _fit_matrix(P, name: str = "P") -> np.ndarray:
    """``P`` checked and in memory as float64 (a fit reads every entry many times)."""
    P = _check_probs(P, name)
    if _is_streamed(P):
        P = np.array(P[:, 0:P.shape[1]], dtype=np.float64)
        _check_block(P, name)
    return np.asarray(P, dtype=np.float64)


def _check_weights(weights: np.ndarray, m: int, *, normalised: bool) -> np.ndarray:
    """Return ``weights`` as a finite, non-negative float64 vector of length ``m``.

    With ``normalised`` the weights must already sum to 1 (within 1e-6); otherwise only Σw > 0.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != m:
        raise ValueError(f"weights must be a vector of length {m}, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0.0):
        raise ValueError("weights must be finite and non-negative")
    total = float(w.sum())
    if normalised and abs(total - 1.0) > _SUM_TOL:
        raise ValueError(f"weights must sum to 1, got {total!r}")
    if total <= 0.0:
        raise ValueError("weights must not all be zero")
    return w


# ---------------------------------------------------------------------------------------------
# the mixture loss


def _row_log_sums(mix: np.ndarray) -> np.ndarray:
    """Σ_n log mix[e, n] for each row e of a float64 matrix whose entries lie in [FLOOR, 1 + 1e-5].

    Products of 16 neighbours are formed first (pairwise, ≥ 1e-192, no underflow) and their logs
    summed: the same sum to within a few ulps per term, at a sixteenth of the logarithms.
    """
    n = mix.shape[1]
    n16 = n - n % 16
    total = np.log(mix[:, n16:]).sum(axis=1) if n16 < n else np.zeros(mix.shape[0])
    if n16:
        v = mix[:, :n16]
        for _ in range(4):
            h = v.shape[1] // 2
            v = v[:, :h] * v[:, h:]
        total += np.log(v).sum(axis=1)
    return total


def _stream_nll(P, ensembles: Sequence[tuple[np.ndarray, np.ndarray]], name: str = "P",
                chunk: int | None = None) -> np.ndarray:
    """−(1/N) Σ_n log max(Σ_r w_r P[idx_r, n], FLOOR) for every ensemble (idx, w), in float64.

    One pass over the columns of ``P`` (an array, a memory map or a ``RowStack``), a block of
    ``chunk`` columns at a time (default ``_SCORE_COLUMNS``, a fixed grid): only the rows some
    ensemble uses are read, each block is converted to float64 and checked when ``P`` is streamed.
    Each ensemble's mixture is summed over its own rows in the order it lists them, one row at a
    time (elementwise, no matrix product), so an ensemble's value depends only on its rows, their
    order and weights: never on the other ensembles scored in the same pass, on rows it does not
    use, or on the number of threads. The prior step, the curve and ``hepc.load_ensemble`` (members
    in ``top_k`` order) therefore give the same number bit for bit. Memory: the block, never N.
    """
    n_tokens = P.shape[1]
    chunk = _SCORE_COLUMNS if chunk is None else int(chunk)
    checked = [(np.asarray(i, dtype=np.int64), np.asarray(w, dtype=np.float64)) for i, w in ensembles]
    used = np.unique(np.concatenate([i for i, _ in checked])) if checked else np.zeros(0, dtype=np.int64)
    rows = None if used.shape[0] == P.shape[0] else used
    plans = [(np.searchsorted(used, i) if rows is not None else i, w) for i, w in checked]
    streamed = _is_streamed(P)
    total = np.zeros(len(checked))
    for start in range(0, n_tokens, chunk):
        stop = min(n_tokens, start + chunk)
        block = P[:, start:stop] if rows is None else P[rows, start:stop]
        block = np.asarray(block).astype(np.float64, copy=False)
        if streamed:
            _check_block(block, name)
        mix, term = np.empty((1, stop - start)), np.empty(stop - start)
        for e, (pos, w) in enumerate(plans):
            np.multiply(block[pos[0]], w[0], out=mix[0])
            for r, wr in zip(pos[1:].tolist(), w[1:].tolist()):
                np.multiply(block[r], wr, out=term)
                mix[0] += term
            np.maximum(mix, FLOOR, out=mix)
            total[e] += _row_log_sums(mix)[0]
    return -total / n_tokens


def _nll_rows(P, rows: np.ndarray | None, w: np.ndarray) -> float:
    """−(1/N) Σ_n log max(Σ_r w_r P[rows[r], n], FLOOR), in float64, a column block at a time."""
    idx = np.arange(P.shape[0]) if rows is None else rows
    return float(_stream_nll(P, [(idx, w)])[0])


def mixture_nll(P: np.ndarray, weights: np.ndarray) -> float:
    """Mean negative log-likelihood of the probability mixture with ``weights``.

        mixture_nll(P, w) = −(1/N) Σ_n log( max( Σ_i w_i P[i,n], 1e-12 ) )

    ``P`` is M×N (any float dtype; accumulated in float64), ``weights`` a length-M vector summing to 1
    (zeros allowed: zero-weight rows are never read). A token with zero mixed probability costs
    −log(1e-12) ≈ 27.63 nats rather than infinity. ``P`` may also be a memory map or a ``RowStack``:
    it is read a column block at a time, so memory stays bounded whatever N is.
    """
    P = _check_probs(P)
    w = _check_weights(weights, P.shape[0], normalised=True)
    nz = np.flatnonzero(w)
    if nz.shape[0] == w.shape[0]:
        return _nll_rows(P, None, w)
    return _nll_rows(P, nz, w[nz])


def uniform_weights(m: int) -> np.ndarray:
    """The uniform prior over ``m`` members: w_i = 1/m (float64, length m, m ≥ 1)."""
    m = int(m)
    if m < 1:
        raise ValueError(f"need at least one member, got m={m}")
    return np.full(m, 1.0 / m, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# fitting the prior


@dataclass
class FitResult:
    """Outcome of fitting the prior on a held-out matrix P (M×N).

    weights      float64, length M, sums to 1: the best candidate seen (see ``fit_prior``).
    nll          mixture_nll(P, weights): the fit objective J at the returned weights.
    uniform_nll  mixture_nll(P, uniform_weights(M)); always nll ≤ uniform_nll.
    steps        optimizer steps (AdamW) or iterations (EM) actually run.
    history      J at every iterate: history[0] at the starting point, history[t] after t steps.
    best_step    index into ``history`` of the returned weights, or −1 when the exact uniform won.
    solver       "adamw" or "em".
    """

    weights: np.ndarray
    nll: float
    uniform_nll: float
    steps: int
    history: list[float] = field(default_factory=list)
    best_step: int = -1
    solver: str = "adamw"


def _softmax(a: np.ndarray) -> np.ndarray:
    """w_i = exp(a_i − max a) / Σ_j exp(a_j − max a)."""
    e = np.exp(a - a.max())
    return e / e.sum()


def _objective_and_grad(P64: np.ndarray, a: np.ndarray) -> tuple[float, np.ndarray]:
    """J(a) and ∂J/∂a for the softmax-parameterised mixture, full batch, float64.

    With w = softmax(a) and m_n = Σ_i w_i p_{i,n}:

        J(a)       = −(1/N) Σ_n log max(m_n, FLOOR)
        ∂J/∂w_i    = g_i = −(1/N) Σ_n p_{i,n} / m_n · 1[m_n ≥ FLOOR]   (the clamp passes no gradient)
        ∂w_i/∂a_j  = w_i (δ_ij − w_j)
        ∂J/∂a_j    = Σ_i g_i w_i (δ_ij − w_j) = w_j (g_j − Σ_i w_i g_i)
    """
    w = _softmax(a)
    m = w @ P64
    live = m >= FLOOR
    mc = np.maximum(m, FLOOR)
    n = P64.shape[1]
    J = -float(np.log(mc).sum()) / n
    r = np.where(live, 1.0 / mc, 0.0)
    g_w = -(P64 @ r) / n
    g_a = w * (g_w - float(w @ g_w))
    return J, g_a


def _finish(P64: np.ndarray, best_w: np.ndarray, best_step: int, history: list[float], steps: int,
            solver: str) -> FitResult:
    """Compare the best iterate with the exact uniform prior using ``mixture_nll`` and keep the better.

    Both numbers come from the same function on the same data, so the returned fit is never worse
    than uniform on its fit data (ties go to the uniform prior).
    """
    uni = uniform_weights(P64.shape[0])
    uniform_nll = mixture_nll(P64, uni)
    best_w = best_w / best_w.sum()
    nll = mixture_nll(P64, best_w)
    if not nll < uniform_nll:
        best_w, nll, best_step = uni, uniform_nll, -1
    return FitResult(weights=best_w, nll=nll, uniform_nll=uniform_nll, steps=steps,
                     history=history, best_step=best_step, solver=solver)


def _adamw_settings(steps, lr: float, clip: float) -> int:
    """The AdamW fit's settings checked (shared by ``fit_prior`` and ``fit_prior_prefixes``); the step count."""
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps must be ≥ 0, got {steps}")
    if not (lr > 0.0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    if not clip > 0.0:
        raise ValueError(f"clip must be > 0 (math.inf disables clipping), got {clip}")
    return steps


def fit_prior(P: np.ndarray, *, steps: int = 300, lr: float = 0.5, clip: float = 1.0,
              seed: int = 0) -> FitResult:
    """Fit the learned prior on held-out probabilities P (M×N), docs/method.md §6.3.

        a ∈ R^M,  a_0 = 1e-4 · N(0, 1)   (np.random.default_rng(seed)),   w = softmax(a)
        minimise  J(a) = −(1/N) Σ_n log( max( Σ_i w_i p_{i,n}, 1e-12 ) )

    Optimizer: AdamW with PyTorch's update rule (β1 = 0.9, β2 = 0.999, eps = 1e-8, weight decay 0),
    full-batch analytic gradient (see ``_objective_and_grad``), gradient-norm clipping to ``clip``
    before each update exactly as ``torch.nn.utils.clip_grad_norm_`` (g ← g · min(1, clip/(‖g‖+1e-6));
    ``clip=math.inf`` disables it), ``steps`` updates:

        m_t = β1 m_{t−1} + (1−β1) g_t,   v_t = β2 v_{t−1} + (1−β2) g_t²
        a_t = a_{t−1} − (lr / (1−β1^t)) · m_t / ( sqrt(v_t) / sqrt(1−β2^t) + eps )

    Returns the best iterate seen by J — a_0 … a_steps — or the exact uniform prior if that is at
    least as good, so ``result.nll ≤ result.uniform_nll`` always. Memory: one float64 copy of P.
    """
    P64 = _fit_matrix(P)
    steps = _adamw_settings(steps, lr, clip)
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    M = P64.shape[0]
    a = np.random.default_rng(seed).standard_normal(M) * 1e-4
    m1 = np.zeros(M)
    m2 = np.zeros(M)
    history: list[float] = []
    best_J, best_a, best_step = math.inf, a.copy(), 0
    for t in range(steps + 1):
        J, g = _objective_and_grad(P64, a)
        history.append(J)
        if J < best_J:
            best_J, best_a, best_step = J, a.copy(), t
        if t == steps:
            break
        if math.isfinite(clip):
            norm = float(np.sqrt(g @ g))
            g = g * min(1.0, clip / (norm + 1e-6))
        step = t + 1
        m1 = beta1 * m1 + (1.0 - beta1) * g
        m2 = beta2 * m2 + (1.0 - beta2) * g * g
        denom = np.sqrt(m2) / math.sqrt(1.0 - beta2 ** step) + eps
        a = a - (lr / (1.0 - beta1 ** step)) * m1 / denom
    return _finish(P64, _softmax(best_a), best_step, history, steps, "adamw")


_BATCH_ELEMENTS = 1 << 22  # float64 elements per (fits × tokens) array of a batched fit (32 MiB)
_BATCH_MIN_ELEMENTS = 1 << 20  # batch prefix fits only when P[:j_max] has at least this many entries


def fit_prior_prefixes(P: np.ndarray, lengths: Sequence[int], *, steps: int = 300, lr: float = 0.5,
                       clip: float = 1.0, seed: int = 0, batch: bool | None = None) -> list[FitResult]:
    """``fit_prior(P[:j], steps=steps, lr=lr, clip=clip, seed=seed)`` for every j in ``lengths``, batched.

    The loss curve (``loss_curve``) fits the prior on every prefix of the availability order. Each
    fit is the same AdamW run as ``fit_prior`` — same start a_0 = 1e-4·N(0, 1) (the first j draws of
    one seeded stream), same clipping, same ``steps`` updates, best iterate or uniform — but the
    fits of up to 2^22 / N prefixes advance together: their mixtures are one matrix product with
    P[:j_max] and their gradients another, instead of two matrix-vector passes over P per fit and
    step. The results equal separate ``fit_prior`` calls to within floating-point rounding (a
    batched fit sums in another order; the per-step J also adds logarithms of products of 16
    mixtures, ``_row_log_sums``), and like them each is never worse than uniform on P[:j].
    A length on its own in its batch is fit by ``fit_prior`` itself. ``batch``: None (default) batches
    only where it pays, when P[:j_max] has at least 2^20 entries (below that the small matrix products
    cost more than the matrix-vector passes they replace, and each length is fit by ``fit_prior``);
    True or False forces either way. Memory: one float64 copy of P plus a few (batch × N) float64
    arrays, 32 MiB each. At paper scale (96 prefixes of 480 × 131,072) batched fits take about a
    fifth of the time of separate ones (docs/benchmarks.md).
    """
    P64 = np.ascontiguousarray(_fit_matrix(P))
    M, N = P64.shape
    js = [int(j) for j in lengths]
    if any(j < 1 or j > M for j in js):
        raise ValueError(f"lengths must be prefix lengths in [1, {M}], got {list(lengths)!r}")
    steps = _adamw_settings(steps, lr, clip)
    unique = sorted(set(js))
    if batch is None:
        batch = max(js) * N >= _BATCH_MIN_ELEMENTS
    per_batch = max(1, _BATCH_ELEMENTS // N) if batch else 1
    done: dict[int, FitResult] = {}
    for b in range(0, len(unique), per_batch):
        group = unique[b:b + per_batch]
        if len(group) == 1:
            done[group[0]] = fit_prior(P64[:group[0]], steps=steps, lr=lr, clip=clip, seed=seed)
        else:
            done.update(zip(group, _adamw_batch(P64, group, steps, lr, clip, seed)))
    return [done[j] for j in js]


def _adamw_batch(P64: np.ndarray, js: list[int], steps: int, lr: float, clip: float, seed: int) -> list[FitResult]:
    """``fit_prior`` on P64[:j] for each j in ``js``, advanced together (see ``fit_prior_prefixes``).

    Row g of every (G × J) array is the fit on the first js[g] rows; entries past js[g] hold weight 0
    (logit −inf), get a zero gradient and stay put, so each row follows its own AdamW run.
    """
    G, J, N = len(js), max(js), P64.shape[1]
    Pj = P64[:J]
    mask = np.arange(J)[None, :] < np.asarray(js)[:, None]
    A = np.full((G, J), -np.inf)
    for g, j in enumerate(js):
        A[g, :j] = np.random.default_rng(seed).standard_normal(j) * 1e-4
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    m1, m2 = np.zeros((G, J)), np.zeros((G, J))
    histories: list[list[float]] = [[] for _ in range(G)]
    best_J, best_A, best_step = np.full(G, np.inf), A.copy(), np.zeros(G, dtype=np.int64)
    for t in range(steps + 1):
        E = np.exp(A - A.max(axis=1, keepdims=True))
        W = E / E.sum(axis=1, keepdims=True)
        mix = W @ Pj  # (G, N)
        live = mix >= FLOOR
        np.maximum(mix, FLOOR, out=mix)
        Jt = -_row_log_sums(mix) / N
        for g in range(G):
            histories[g].append(float(Jt[g]))
        better = Jt < best_J
        best_J[better], best_A[better], best_step[better] = Jt[better], A[better], t
        if t == steps:
            break
        r = np.reciprocal(mix, out=mix)
        r[~live] = 0.0
        g_w = -(Pj @ r.T).T / N  # (G, J)
        grad = W * (g_w - (W * g_w).sum(axis=1, keepdims=True))
        grad[~mask] = 0.0
        if math.isfinite(clip):
            norm = np.sqrt((grad * grad).sum(axis=1))
            grad = grad * np.minimum(1.0, clip / (norm + 1e-6))[:, None]
        step = t + 1
        m1 = beta1 * m1 + (1.0 - beta1) * grad
        m2 = beta2 * m2 + (1.0 - beta2) * grad * grad
        denom = np.sqrt(m2) / math.sqrt(1.0 - beta2 ** step) + eps
        A = np.where(mask, A - (lr / (1.0 - beta1 ** step)) * m1 / denom, -np.inf)
    out = []
    for g, j in enumerate(js):
        w = _softmax(best_A[g, :j])
        out.append(_finish(Pj[:j], w, int(best_step[g]), histories[g], steps, "adamw"))
    return out


def fit_prior_em(P: np.ndarray, iters: int = 1000, tol: float = 1e-10) -> FitResult:
    """Fit the same prior by expectation-maximisation, starting from the uniform weights.

        r_{i,n} = w_i p_{i,n} / max(Σ_j w_j p_{j,n}, 1e-12)        (responsibilities)
        w_i    ← (1/N) Σ_n r_{i,n},   then renormalised to Σ w = 1

    Without the floor each update never increases J (EM for mixture weights is monotone, and J is
    convex in w, so it converges to the same optimum as ``fit_prior``). Stops after ``iters``
    iterations or when one iteration improves J by less than ``tol``. Like ``fit_prior`` it returns
    the best iterate, or the exact uniform prior, so ``nll ≤ uniform_nll``.
    """
    P64 = _fit_matrix(P)
    iters = int(iters)
    if iters < 0:
        raise ValueError(f"iters must be ≥ 0, got {iters}")
    M, N = P64.shape
    w = uniform_weights(M)
    history: list[float] = []
    best_J, best_w, best_step = math.inf, w, 0
    done = 0
    for t in range(iters + 1):
        mix = np.maximum(w @ P64, FLOOR)
        J = -float(np.log(mix).sum()) / N
        history.append(J)
        if J < best_J:
            best_J, best_w, best_step = J, w, t
        if t == iters or (t > 0 and history[-2] - J < tol):
            break
        w = w * (P64 @ (1.0 / mix)) / N
        total = w.sum()
        if not total > 0.0:  # every token floored: nothing to learn
            break
        w = w / total
        done = t + 1
    return _finish(P64, best_w, best_step, history, done, "em")


# ---------------------------------------------------------------------------------------------
# the shrinkage prior: MAP-EM toward uniform, strength by cross-validation over documents

SHRINKAGE_STRENGTHS = (0.0, 0.01, 0.03, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.0)
"""Default grid of shrinkage strengths λ: 0 is the plain maximum-likelihood fit, 1 the uniform prior."""
SHRINKAGE_FOLDS = 5
"""Default number of cross-validation folds (groups of whole held-out documents)."""
SHRINKAGE_EM_ITERS = 100
"""Default cap on accelerated EM cycles per strength (each cycle is at most three EM updates)."""
_EM_TOL = 1e-7  # a cycle that lowers the penalised objective by less than this (nats/token) ends the fit


@dataclass
class ShrinkageFit(FitResult):
    """A ``FitResult`` of ``fit_prior_shrinkage``, with the cross-validation that chose the strength.

    strength       the chosen λ (0 = maximum likelihood, 1 = uniform).
    strengths      the grid, ascending; cv_nll[g] is the cross-validated NLL of strengths[g] and
                   cv_se[g] the standard error of cv_nll[g] − cv_nll at ``min_strength``.
    min_strength   the strength with the lowest cv_nll.
    rule           "one-se" (the largest strength within one standard error of the minimum) or "min".
    folds          folds actually used (fewer than asked with fewer documents; 0 = no CV).
    fold_rule      "documents" (folds are groups of whole documents), "token-blocks" (contiguous
                   blocks of tokens: no document boundaries known, or a single document) or "none"
                   (fewer than two tokens, or one member: the uniform prior, strength 1).
    documents      held-out documents seen (None when their boundaries are unknown).
    fold_sizes     tokens in each fold.
    """

    strength: float = 1.0
    strengths: list[float] = field(default_factory=list)
    cv_nll: list[float] = field(default_factory=list)
    cv_se: list[float] = field(default_factory=list)
    min_strength: float = 1.0
    rule: str = "one-se"
    folds: int = 0
    fold_rule: str = "none"
    documents: int | None = None
    fold_sizes: list[int] = field(default_factory=list)


def document_units(n: int, doc_starts: np.ndarray) -> np.ndarray:
    """Where each held-out document starts in a score step's probability vector (length ``n``).

    ``doc_starts`` are document start offsets into ``heldout.npy`` (the format of ``train_docs.npy``).
    Entry t of ``probs.npy`` is the probability of token t + 1 (``hepc.train.score.score_tokens``), so
    document d, tokens [s_d, s_{d+1}), owns the entries [s_d − 1, s_{d+1} − 1) (its first token is
    predicted from what precedes it, but it is that document's token). Returns strictly increasing
    int64 starts beginning with 0; documents with no entry (empty, or past the end) are dropped.
    """
    s = np.asarray(doc_starts)
    if s.ndim != 1 or not (np.issubdtype(s.dtype, np.integer) or s.size == 0):
        raise ValueError(f"document starts must be a 1-D integer array, got {s.dtype} {s.shape}")
    if s.size and int(s.min()) < 0:
        raise ValueError("document starts must be ≥ 0")
    starts = np.unique(np.maximum(s.astype(np.int64) - 1, 0))
    starts = starts[starts < n]
    if starts.size == 0 or starts[0] != 0:
        starts = np.concatenate([[0], starts]).astype(np.int64)
    return starts


_BLOCKS_PER_FOLD = 8  # without document boundaries: the units of the standard error, per fold


@dataclass(frozen=True)
class Folds:
    """Contiguous cross-validation folds over the N held-out probabilities (``cv_folds``).

    bounds     fold f is entries [bounds[f], bounds[f+1]); bounds[0] = 0, bounds[-1] = N.
    units      starts of the units each fold is a union of: documents, or blocks of tokens; the
               standard error of a difference of cross-validated losses treats them as independent.
    rule       "documents", "token-blocks", or "none" (fewer than two folds possible).
    documents  held-out documents with at least one entry (None: boundaries unknown).
    """

    bounds: np.ndarray
    units: np.ndarray
    rule: str
    documents: int | None

    @property
    def count(self) -> int:
        return 0 if self.rule == "none" else int(self.bounds.shape[0] - 1)


def cv_folds(n: int, folds: int, doc_starts: np.ndarray | None = None) -> Folds:
    """Contiguous cross-validation folds over ``n`` held-out probabilities, never splitting a document.

    With ``doc_starts`` (document starts in ``heldout.npy``, see ``document_units``) each inner fold
    boundary is the document start nearest to an equal-token split f·n/folds, so folds hold whole
    documents and about n/folds tokens each; the documents of ``heldout.npy`` come in the corpus's
    shuffled document order, so contiguous groups of them are random groups. Fewer documents than
    folds give fewer folds. Without document starts (or with a single document) the folds are
    ``folds`` equal contiguous blocks of tokens, each cut into 8 blocks as units.
    """
    n, folds = int(n), int(folds)
    if folds < 2:
        raise ValueError(f"folds must be ≥ 2, got {folds}")
    documents = None
    if doc_starts is not None:
        units = document_units(n, doc_starts)
        documents = int(units.size)
        if units.size >= 2:
            targets = np.arange(1, folds) * (n / folds)
            right = np.minimum(np.searchsorted(units, targets), units.size - 1)
            left = np.maximum(right - 1, 0)
            pick = np.where(targets - units[left] <= units[right] - targets, units[left], units[right])
            bounds = np.unique(np.concatenate([[0], pick, [n]])).astype(np.int64)
            return Folds(bounds, units, "documents", documents)
    k = min(folds, n)
    if k < 2:
        return Folds(np.array([0, n], dtype=np.int64), np.zeros(1, dtype=np.int64), "none", documents)
    bounds = np.unique(np.round(np.arange(k + 1) * (n / k)).astype(np.int64))
    units = np.unique(np.concatenate([
        np.floor(np.linspace(a, b, _BLOCKS_PER_FOLD, endpoint=False)).astype(np.int64)
        for a, b in itertools.pairwise(bounds)
    ]))
    return Folds(bounds, units, "token-blocks", documents)


def _map_em_update(P64: np.ndarray, W: np.ndarray, lam: np.ndarray, held: np.ndarray,
                   n_fit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One MAP-EM update of each row of W (R×M), and each row's objectives at W.

    Row r is fit on every column of P64 outside ``held[r]`` = [start, stop) (start = stop: none
    held out), ``n_fit[r]`` columns. With r̄_i = (1/n) Σ_n w_i p_{i,n} / max(Σ_j w_j p_{j,n}, FLOOR)
    (mean responsibilities over the fit columns):

        w_i ← (1 − λ) r̄_i + λ / M,   renormalised

    Returns (updated W, penalised objective, plain NLL), both objectives at the input W.
    """
    M = P64.shape[0]
    mix = W @ P64  # (R, N)
    np.maximum(mix, FLOOR, out=mix)
    inv = np.reciprocal(mix)
    logs = np.log(mix, out=mix)
    for r, (a, b) in enumerate(held):
        if b > a:
            inv[r, a:b] = 0.0
            logs[r, a:b] = 0.0
    nll = -logs.sum(axis=1) / n_fit
    obj = nll.copy()
    pull = lam > 0.0  # + λ/(1−λ) · KL(uniform ‖ w); w_i ≥ λ/M > 0 after the first update
    if pull.any():
        with np.errstate(divide="ignore"):
            kl = -math.log(M) - np.log(W[pull]).mean(axis=1)
        obj[pull] += lam[pull] / (1.0 - lam[pull]) * kl
    resp = W * (inv @ P64.T) / n_fit[:, None]  # (R, M) mean responsibilities
    new = (1.0 - lam)[:, None] * resp + (lam / M)[:, None]
    total = new.sum(axis=1, keepdims=True)
    ok = (total[:, 0] > 0.0) & np.isfinite(total[:, 0])  # every fit token floored: keep W
    new[ok] /= total[ok]
    new[~ok] = W[~ok]
    return new, obj, nll


def _squarem(P64: np.ndarray, W: np.ndarray, lam: np.ndarray, held: np.ndarray, n_fit: np.ndarray,
             iters: int, tol: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Minimise each row's MAP objective from the start W by EM accelerated with SQUAREM.

    One cycle (Varadhan & Roland 2008, scheme S3, in log-weight coordinates x = log w so that every
    extrapolation stays a positive weight vector): W1 = F(W0), W2 = F(W1), r = x1 − x0,
    v = x2 − x1 − r, α = clip(−‖r‖/‖v‖, −α_max, −1), x′ = x0 − 2αr + α²v, W′ = softmax(x′), then
    the stabilising update F(W′). A row whose extrapolation raised its objective above the cycle's
    start continues from W2 instead and quarters its α_max; one that used the full α_max quadruples
    it. A row stops when a cycle lowers its objective by less than ``tol``, or after ``iters``
    cycles. Returns (the best evaluated iterate of each row, its plain NLL, EM updates run).
    """
    R = W.shape[0]
    best_W, best_obj, best_nll = W.copy(), np.full(R, np.inf), np.full(R, np.inf)
    alpha_max = np.full(R, 4.0)
    active = np.arange(R)
    W = W.copy()
    updates = 0

    def keep_best(rows, Ws, obj, nll):
        better = obj < best_obj[rows]
        best_W[rows[better]] = Ws[better]
        best_obj[rows[better]] = obj[better]
        best_nll[rows[better]] = nll[better]

    def log_w(Ws):
        return np.log(np.maximum(Ws, 1e-300))

    for _ in range(iters):
        W0 = W[active]
        h, nf, la = held[active], n_fit[active], lam[active]
        W1, o0, n0 = _map_em_update(P64, W0, la, h, nf)
        W2, o1, n1 = _map_em_update(P64, W1, la, h, nf)
        keep_best(active, W0, o0, n0)
        keep_best(active, W1, o1, n1)
        x0 = log_w(W0)
        r = log_w(W1) - x0
        v = log_w(W2) - x0 - 2.0 * r
        rn, vn = np.sqrt((r * r).sum(axis=1)), np.sqrt((v * v).sum(axis=1))
        alpha = -rn / np.where(vn > 0.0, vn, 1.0)
        alpha = np.where(vn > 0.0, alpha, -1.0)
        amax = alpha_max[active]
        alpha = np.clip(alpha, -amax, -1.0)
        xp = x0 - 2.0 * alpha[:, None] * r + (alpha * alpha)[:, None] * v
        Wp = np.exp(xp - xp.max(axis=1, keepdims=True))
        Wp /= Wp.sum(axis=1, keepdims=True)
        bad = ~np.all(np.isfinite(Wp), axis=1)
        Wp[bad] = W2[bad]
        W3, op, n_p = _map_em_update(P64, Wp, la, h, nf)
        updates += 3
        keep_best(active, Wp, op, n_p)
        worse = ~(op <= o0)
        W3[worse] = W2[worse]
        W[active] = W3
        alpha_max[active] = np.where(worse, np.maximum(1.0, amax / 4.0), np.where(alpha <= -amax, amax * 4.0, amax))
        done = ~(o0 - np.minimum(o1, op) >= tol)
        active = active[~done]
        if active.size == 0:
            break
    if active.size:  # the last cycle's result has not been scored yet
        _, o, nl = _map_em_update(P64, W[active], lam[active], held[active], n_fit[active])
        updates += 1
        keep_best(active, W[active], o, nl)
    return best_W, best_nll, updates


def fit_prior_shrinkage(P: np.ndarray, doc_starts: np.ndarray | None = None, *,
                        folds: int = SHRINKAGE_FOLDS, strengths: Sequence[float] = SHRINKAGE_STRENGTHS,
                        iters: int = SHRINKAGE_EM_ITERS, tol: float = _EM_TOL,
                        rule: str = "one-se") -> ShrinkageFit:
    """The prior shrunk toward uniform, its strength λ chosen by K-fold cross-validation.

    For a strength λ ∈ [0, 1] the weights minimise the held-out NLL plus a pull toward uniform,

        J_λ(w) = −(1/N) Σ_n log max(Σ_i w_i p_{i,n}, 1e-12)  +  λ/(1−λ) · KL(uniform ‖ w),

    the MAP estimate under a Dirichlet(α) prior with α − 1 = λN / ((1−λ)M) pseudo-counts per member:
    a λ share of all counts is spread evenly. J_λ is strictly convex for λ > 0; its EM update is
    w ← (1−λ)·r̄(w) + λ·uniform (r̄ = mean responsibilities, ``_map_em_update``), so λ = 0 is the
    plain maximum-likelihood fit (the objective of ``fit_prior``) and λ = 1 the uniform prior.

    Cross-validation: ``cv_folds`` splits the N tokens into contiguous folds of whole documents
    (``doc_starts``: document starts in ``heldout.npy``; None: equal blocks of tokens). For every
    strength below 1 the weights are fit on all folds but one and scored on that one; cv_nll(λ) is
    the mean NLL over all N tokens, each scored by the fit that did not see it (cv_nll(1) is the
    uniform prior's NLL: nothing is fit).

    Choice (``rule``): "one-se" (default) takes the largest λ whose cv_nll is within one standard
    error of the lowest, the standard error of the difference computed from its per-unit (document,
    or block of tokens) sums, units taken as independent: the one-standard-error rule of Breiman et
    al. (1984), on paired differences. A gain that noise could explain is not taken, so held-out data
    with no signal gives the uniform prior. "min" takes the lowest cv_nll (ties: the larger λ).

    The returned weights are the fit at the chosen λ on all N tokens (run alongside the fold fits).
    Like ``fit_prior`` the result is never worse than uniform on P (``nll ≤ uniform_nll``). With
    fewer than two folds possible (one token) or one member the uniform prior is returned, strength 1.

    Solver: EM with SQUAREM acceleration (``_squarem``) in float64, every fit (strengths × (folds +
    1)) a row of one matrix, so each EM update is two matrix products with P; a fit leaves the batch
    when a cycle improves its objective by less than ``tol`` nats/token, or after ``iters`` cycles.
    Every fit starts from uniform weights. Memory: one float64 copy of P plus a few float64 arrays
    of (fits × N). ``steps`` of the result counts EM updates (matrix-product pairs), ``history`` is
    empty and ``solver`` is "map-em". Its time depends on the data: at paper scale (480 members ×
    131,072 tokens, float32 P, the default 11 strengths and 5 folds: 60 fits) one set of
    probabilities took 48 updates and 12 s on one CPU core, the synthetic ones of
    ``bench/prior_scale.py`` 90 updates and 161 s on a loaded machine (docs/benchmarks.md); peak
    memory about 0.9 GiB with P itself.
    """
    P64 = np.ascontiguousarray(_fit_matrix(P))
    M, N = P64.shape
    grid = sorted({float(s) for s in strengths})
    if not grid or not (grid[0] >= 0.0 and grid[-1] <= 1.0):
        raise ValueError(f"strengths must be values in [0, 1], got {list(strengths)!r}")
    iters = int(iters)
    if iters < 1:
        raise ValueError(f"iters must be ≥ 1, got {iters}")
    if rule not in ("one-se", "min"):
        raise ValueError(f"rule must be 'one-se' or 'min', got {rule!r}")
    cvf = cv_folds(N, folds, doc_starts)
    K, bounds = cvf.count, cvf.bounds
    info = {"strengths": grid, "rule": rule, "folds": K, "fold_rule": cvf.rule, "documents": cvf.documents,
            "fold_sizes": np.diff(bounds).astype(int).tolist()}
    uni = uniform_weights(M)
    if K < 2 or M == 1:  # nothing to cross-validate, or to weigh
        fit = _finish(P64, uni, -1, [], 0, "map-em")
        return ShrinkageFit(**vars(fit), strength=1.0, min_strength=1.0, **info)

    # per strength: each token's loss under the fit that did not see it, summed per unit
    unit_loss: dict[float, np.ndarray] = {}
    full: dict[float, np.ndarray] = {}
    if grid[-1] == 1.0:
        loss = -np.log(np.maximum(uni @ P64, FLOOR))
        unit_loss[1.0], full[1.0] = np.add.reduceat(loss, cvf.units), uni
    fitted = [s for s in grid if s < 1.0]
    updates = 0
    if fitted:
        # fit (g, r) is row g·(K+1) + r: strength fitted[g]; r < K leaves fold r out, r = K sees all
        held = np.tile(np.array([[bounds[r], bounds[r + 1]] for r in range(K)] + [[0, 0]], dtype=np.int64),
                       (len(fitted), 1))
        n_fit = (N - (held[:, 1] - held[:, 0])).astype(np.float64)
        lam = np.repeat(np.asarray(fitted, dtype=np.float64), K + 1)
        W, _, updates = _squarem(P64, np.tile(uni, (lam.shape[0], 1)), lam, held, n_fit, iters, tol)
        for g, s in enumerate(fitted):
            rows = W[g * (K + 1):(g + 1) * (K + 1)]
            loss = np.concatenate([rows[r] @ P64[:, bounds[r]:bounds[r + 1]] for r in range(K)])
            loss = -np.log(np.maximum(loss, FLOOR))
            unit_loss[s], full[s] = np.add.reduceat(loss, cvf.units), rows[K].copy()
    cv = {s: float(unit_loss[s].sum()) / N for s in grid}
    best = max(grid, key=lambda s: (-cv[s], s))  # lowest cv_nll; ties go to the larger strength
    U = cvf.units.shape[0]
    se = {s: float(np.sqrt(U) * np.std(unit_loss[s] - unit_loss[best], ddof=1)) / N for s in grid}
    chosen = best
    if rule == "one-se":
        chosen = max(s for s in grid if cv[s] - cv[best] <= se[s])
    fit = _finish(P64, full[chosen], 0 if chosen < 1.0 else -1, [], updates, "map-em")
    return ShrinkageFit(**vars(fit), strength=chosen, cv_nll=[cv[s] for s in grid], cv_se=[se[s] for s in grid],
                        min_strength=best, **info)


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
    w = _check_weights(w, w.shape[0], normalised=False)
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
    w = _check_weights(weights, idx.shape[0], normalised=True)
    return idx, w


def ensemble_loss(P_val, indices: np.ndarray, weights: np.ndarray) -> float:
    """Validation loss of the chosen members combined by weighted probability averaging.

        loss = −(1/T) Σ_t log( max( Σ_{r} w̃_r P_val[indices[r], t], 1e-12 ) )

    ``indices`` are distinct rows of ``P_val``; ``weights`` (w̃, same length, summing to 1) are aligned
    with them, e.g. the output of ``top_k``. Only the chosen rows are read, a column block at a time
    (``P_val`` may be a memory map or a ``RowStack``). Several ensembles: ``ensemble_losses``.
    """
    P_val = _check_probs(P_val, "P_val")
    idx, w = _check_ensemble(P_val.shape[0], indices, weights)
    nz = w > 0.0
    return _nll_rows(P_val, idx[nz], w[nz])


def ensemble_losses(P_val, ensembles: Sequence[tuple[np.ndarray, np.ndarray]], *,
                    chunk: int | None = None) -> list[float]:
    """``ensemble_loss`` of every (indices, weights) pair in ``ensembles``, in one pass over ``P_val``.

    The rows any ensemble uses are read once per column block (``chunk`` columns; default a fixed
    grid of ``_SCORE_COLUMNS``), so scoring E ensembles on T tokens reads P_val once, whether it is an
    array, a memory map or a ``RowStack`` of per-member files; memory is bounded by the block, never
    T. Each value is bit for bit what ``ensemble_loss`` gives for that pair alone (see ``_stream_nll``).
    """
    P_val = _check_probs(P_val, "P_val")
    if chunk is not None and int(chunk) < 1:
        raise ValueError(f"chunk must be ≥ 1 columns, got {chunk}")
    checked = [_check_ensemble(P_val.shape[0], i, w) for i, w in ensembles]
    if not checked:
        return []
    nonzero = [(idx[w > 0.0], w[w > 0.0]) for idx, w in checked]
    return [float(x) for x in _stream_nll(P_val, nonzero, "P_val", chunk)]


# ---------------------------------------------------------------------------------------------
# budgets and the curve


def population_index(p: int, c: int, C: int) -> int:
    """Row of snapshot (trajectory p, cycle c), both 1-based, in a population of C cycles: (p−1)·C + (c−1)."""
    if not (1 <= c <= C and p >= 1):
        raise ValueError(f"need p ≥ 1 and 1 ≤ c ≤ C, got p={p}, c={c}, C={C}")
    return (p - 1) * C + (c - 1)


def availability_costs(P: int, C: int, E: float) -> list[tuple[int, int, float]]:
    """When each snapshot becomes available under the round-robin order (docs/method.md §4.5).

        cost(p, c) = ((c − 1)·P + p) · E   epochs,   p = 1..P trajectories, c = 1..C cycles

    i.e. the trajectories advance one cycle at a time in turn. Returns [(p, c, cost)] sorted by cost
    (cycle-major, then trajectory). The last cost is P·C·E, the population's whole budget.
    Snapshot (p, c) is row ``population_index(p, c, C)`` = (p−1)·C + (c−1) of the population matrices.
    """
    P, C, E = int(P), int(C), float(E)
    if P < 1 or C < 1:
        raise ValueError(f"need P ≥ 1 and C ≥ 1, got P={P}, C={C}")
    if not (E > 0.0 and math.isfinite(E)):
        raise ValueError(f"E must be a positive finite number of epochs, got {E}")
    return [(p, c, ((c - 1) * P + p) * E) for c in range(1, C + 1) for p in range(1, P + 1)]


def round_points(m: int, P: int) -> list[int]:
    """Prefix lengths at which a full round of P trajectories completes (P, 2P, …), plus m itself.

    The cheap set of curve points for a large population: pass it as ``loss_curve(points=...)``.
    """
    m, P = int(m), int(P)
    if m < 1 or P < 1:
        raise ValueError(f"need m ≥ 1 and P ≥ 1, got m={m}, P={P}")
    pts = list(range(P, m + 1, P))
    if not pts or pts[-1] != m:
        pts.append(m)
    return pts


def _check_ks(ks: Sequence[int | str]) -> list[int | str]:
    out: list[int | str] = []
    for k in ks:
        if isinstance(k, str):
            if k != "all":
                raise ValueError(f"k must be a positive int or 'all', got {k!r}")
        elif isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1:
            k = int(k)
        else:
            raise ValueError(f"k must be a positive int or 'all', got {k!r}")
        out.append(k)
    if not out:
        raise ValueError("ks must not be empty")
    return out


def loss_curve(P_fit: np.ndarray, P_val: np.ndarray, order: list[int], costs: list[float],
               ks: list[int | str], *, prior: str = "learned", steps: int = 300, lr: float = 0.5,
               points: list[int] | None = None, doc_starts: np.ndarray | None = None,
               folds: int = SHRINKAGE_FOLDS, strengths: Sequence[float] = SHRINKAGE_STRENGTHS,
               em_iters: int = SHRINKAGE_EM_ITERS, fits: list[dict] | None = None,
               chunk: int | None = None, P_test=None) -> list[dict]:
    """Loss-vs-budget curve of the top-K ensemble (docs/method.md §8.1).

    ``order[j]`` is the population row (of both P_fit and P_val) that becomes available j-th, at
    ``costs[j]`` epochs (nondecreasing). For each evaluated prefix length j (``points``, default
    1..len(order)) the available rows order[:j] are the candidates:

    1. prior: ``fit_prior(P_fit[order[:j]], steps=steps, lr=lr)`` (``prior="learned"``; all points'
       fits run batched by ``fit_prior_prefixes``, the same fits at a fraction of the matrix passes),
       ``fit_prior_shrinkage(P_fit[order[:j]], doc_starts, folds=folds, strengths=strengths,
       iters=em_iters)`` (``prior="shrinkage"``: its own cross-validation at every point; the
       held-out columns, hence the folds, are the same at every point) or ``uniform_weights(j)``
       (``prior="uniform"``);
    2. for each k in ``ks`` — an int (skipped when k > j) or "all" (= j) — take ``top_k(w, k)`` and
       score ``ensemble_loss`` on P_val. All points' ensembles are scored together in one pass over
       P_val (``ensemble_losses``, ``chunk`` columns at a time): P_val may be a memory map or a
       ``RowStack`` of per-member files, and is never held in memory whole.

    With ``P_test`` (the test split's rows, same population) every row also gets a "test_loss": the
    same ensembles, chosen without looking at val or test, scored on test in a pass of its own.

    Ties in the weights (always, with the uniform prior) go to the member that became available first.
    Returns one dict per (point, k), in point order then ``ks`` order:
    {"budget_epochs": costs[j−1], "members": j, "k": k used (int), "k_label": the ks entry,
    "val_loss": float}. A list passed as ``fits`` receives one dict per fitted point (none with the
    uniform prior): {"members": j, "nll", "uniform_nll"} on the fit data, and for ``shrinkage`` also
    "strength", "folds" and "fold_rule".
    """
    P_fit = _check_probs(P_fit, "P_fit")
    P_val = _check_probs(P_val, "P_val")
    if P_fit.shape[0] != P_val.shape[0]:
        raise ValueError(f"P_fit and P_val must have the same rows (population), got "
                         f"{P_fit.shape[0]} and {P_val.shape[0]}")
    if prior not in ("learned", "uniform", "shrinkage"):
        raise ValueError(f"prior must be 'learned', 'uniform' or 'shrinkage', got {prior!r}")
    order_arr = np.asarray(order, dtype=np.int64).reshape(-1)
    m = order_arr.shape[0]
    if m < 1:
        raise ValueError("order must list at least one member")
    if np.any(order_arr < 0) or np.any(order_arr >= P_fit.shape[0]):
        raise ValueError(f"order must hold rows in [0, {P_fit.shape[0]})")
    if np.unique(order_arr).shape[0] != m:
        raise ValueError("order must not repeat a member")
    cost_arr = np.asarray(costs, dtype=np.float64).reshape(-1)
    if cost_arr.shape[0] != m:
        raise ValueError(f"costs must have one entry per member of order ({m}), got {cost_arr.shape[0]}")
    if not np.all(np.isfinite(cost_arr)) or np.any(np.diff(cost_arr) < 0):
        raise ValueError("costs must be finite and nondecreasing")
    kl = _check_ks(ks)
    if points is None:
        pts = list(range(1, m + 1))
    else:
        pts = sorted({int(j) for j in points})
        if not pts or pts[0] < 1 or pts[-1] > m:
            raise ValueError(f"points must be prefix lengths in [1, {m}]")

    # Rows in availability order, float64 once: every prefix is then a contiguous view.
    fit_rows = None
    if prior != "uniform":
        picked = P_fit[order_arr, 0:P_fit.shape[1]] if isinstance(P_fit, RowStack) else P_fit[order_arr]
        fit_rows = np.ascontiguousarray(_fit_matrix(np.asarray(picked), "P_fit"))
    if prior == "learned":  # every prefix's AdamW fit, batched (the same fits as fit_prior on each)
        learned = dict(zip(pts, fit_prior_prefixes(fit_rows, pts, steps=steps, lr=lr)))
    out: list[dict] = []
    chosen: list[tuple[np.ndarray, np.ndarray]] = []
    for j in pts:
        if fit_rows is None:
            w = uniform_weights(j)
        else:
            if prior == "learned":
                fit = learned[j]
                info = {}
            else:
                fit = fit_prior_shrinkage(fit_rows[:j], doc_starts, folds=folds, strengths=strengths,
                                          iters=em_iters)
                info = {"strength": fit.strength, "folds": fit.folds, "fold_rule": fit.fold_rule}
            w = fit.weights
            if fits is not None:
                fits.append({"members": j, "nll": fit.nll, "uniform_nll": fit.uniform_nll, **info})
        for label in kl:
            k = j if label == "all" else label
            if k > j:
                continue
            local, wk = top_k(w, k)
            chosen.append((order_arr[local], wk))
            out.append({
                "budget_epochs": float(cost_arr[j - 1]),
                "members": j,
                "k": int(k),
                "k_label": label,
                "val_loss": math.nan,
            })
    # Every ensemble of every point scored in one pass over val, a column block at a time.
    for row, loss in zip(out, ensemble_losses(P_val, chosen, chunk=chunk)):
        row["val_loss"] = loss
    if P_test is not None:
        P_test = _check_probs(P_test, "P_test")
        if P_test.shape[0] != P_val.shape[0]:
            raise ValueError(f"P_test must have the population's {P_val.shape[0]} rows, got {P_test.shape[0]}")
        for row, loss in zip(out, ensemble_losses(P_test, chosen, chunk=chunk)):
            row["test_loss"] = loss
    return out
