"""Ensemble mathematics: the learned prior, top-K selection and the loss-vs-budget curve.

Everything here works on cached per-token probabilities of the correct token (method.md §6.2):
row i of a matrix ``P`` (shape M×N) holds p_{i,n} = softmax(logits_{i,n})[y_n] of snapshot i on
token n. Members are combined by **weighted probability averaging** (method.md §7):

    loss(w) = −(1/N) Σ_n log( max( Σ_i w_i p_{i,n}, FLOOR ) ),    FLOOR = 1e-12,

accumulated in float64. The prior (method.md §6.3) is the maximum-likelihood mixture weight vector
on the held-out slice; a budget of K members keeps the K largest weights, renormalised, without a
refit (§6.4). ``loss_curve`` walks the snapshots in the order they become available (architecture.md,
"The curve") and scores the top-K ensemble at each point.

numpy only: this module must stay cheap to import (no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = [
    "FLOOR",
    "FitResult",
    "mixture_nll",
    "uniform_weights",
    "fit_prior",
    "fit_prior_em",
    "top_k",
    "ensemble_loss",
    "availability_costs",
    "population_index",
    "round_points",
    "loss_curve",
]

FLOOR = 1e-12
"""Lower clamp on a mixed probability before the log: a token nobody predicts costs −log(1e-12) ≈ 27.6 nats."""

_CHUNK_ELEMENTS = 1 << 22  # float64 elements per column block when scoring (≈32 MiB)
_SUM_TOL = 1e-6  # how far Σw may stray from 1 where weights must already be normalised
_P_MAX = 1.0 + 1e-5  # fp32 softmax can round a hair above 1; anything larger is not a probability


# ---------------------------------------------------------------------------------------------
# validation helpers


def _check_probs(P: np.ndarray, name: str = "P") -> np.ndarray:
    """Return ``P`` as a 2-D float array with M ≥ 1 rows and N ≥ 1 columns, entries in [0, 1]."""
    P = np.asarray(P)
    if P.ndim != 2:
        raise ValueError(f"{name} must be 2-D (members × tokens), got shape {P.shape}")
    if P.shape[0] < 1 or P.shape[1] < 1:
        raise ValueError(f"{name} must have at least one member and one token, got shape {P.shape}")
    if not np.issubdtype(P.dtype, np.floating):
        P = P.astype(np.float64)
    # NaN fails both comparisons, so this also rejects NaN.
    if not (np.all(P >= 0.0) and np.all(P <= _P_MAX)):
        raise ValueError(f"{name} must hold probabilities in [0, 1] (no NaN)")
    return P


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


def _nll_rows(P: np.ndarray, rows: np.ndarray | None, w: np.ndarray) -> float:
    """−(1/N) Σ_n log max(Σ_r w_r P[rows[r], n], FLOOR), in float64, a column block at a time.

    ``rows=None`` means every row of ``P`` (no gather). Blocks bound the float64 working copy, so a
    float32 P of any width is scored without materialising it in float64.
    """
    n_rows = P.shape[0] if rows is None else rows.shape[0]
    n_tokens = P.shape[1]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n_rows))
    total = 0.0
    for start in range(0, n_tokens, chunk):
        stop = min(n_tokens, start + chunk)
        block = P[:, start:stop] if rows is None else P[rows, start:stop]
        mix = w @ block.astype(np.float64, copy=False)
        np.maximum(mix, FLOOR, out=mix)
        total += float(np.log(mix).sum())
    return -total / n_tokens


def mixture_nll(P: np.ndarray, weights: np.ndarray) -> float:
    """Mean negative log-likelihood of the probability mixture with ``weights``.

        mixture_nll(P, w) = −(1/N) Σ_n log( max( Σ_i w_i P[i,n], 1e-12 ) )

    ``P`` is M×N (any float dtype; accumulated in float64), ``weights`` a length-M vector summing to 1
    (zeros allowed: zero-weight rows are never read). A token with zero mixed probability costs
    −log(1e-12) ≈ 27.63 nats rather than infinity.
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


def fit_prior(P: np.ndarray, *, steps: int = 300, lr: float = 0.5, clip: float = 1.0,
              seed: int = 0) -> FitResult:
    """Fit the learned prior on held-out probabilities P (M×N), method.md §6.3.

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
    P64 = np.asarray(_check_probs(P), dtype=np.float64)
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps must be ≥ 0, got {steps}")
    if not (lr > 0.0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    if not clip > 0.0:
        raise ValueError(f"clip must be > 0 (math.inf disables clipping), got {clip}")
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


def fit_prior_em(P: np.ndarray, iters: int = 1000, tol: float = 1e-10) -> FitResult:
    """Fit the same prior by expectation-maximisation, starting from the uniform weights.

        r_{i,n} = w_i p_{i,n} / max(Σ_j w_j p_{j,n}, 1e-12)        (responsibilities)
        w_i    ← (1/N) Σ_n r_{i,n},   then renormalised to Σ w = 1

    Without the floor each update never increases J (EM for mixture weights is monotone, and J is
    convex in w, so it converges to the same optimum as ``fit_prior``). Stops after ``iters``
    iterations or when one iteration improves J by less than ``tol``. Like ``fit_prior`` it returns
    the best iterate, or the exact uniform prior, so ``nll ≤ uniform_nll``.
    """
    P64 = np.asarray(_check_probs(P), dtype=np.float64)
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
# selection and scoring


def top_k(weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The K largest weights and their renormalisation (method.md §6.4, no refit).

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


def ensemble_loss(P_val: np.ndarray, indices: np.ndarray, weights: np.ndarray) -> float:
    """Validation loss of the chosen members combined by weighted probability averaging.

        loss = −(1/T) Σ_t log( max( Σ_{r} w̃_r P_val[indices[r], t], 1e-12 ) )

    ``indices`` are distinct rows of ``P_val``; ``weights`` (w̃, same length, summing to 1) are aligned
    with them, e.g. the output of ``top_k``. Only the chosen rows are read, a column block at a time.
    """
    P_val = _check_probs(P_val, "P_val")
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.shape[0] < 1:
        raise ValueError("need at least one member")
    if np.any(idx < 0) or np.any(idx >= P_val.shape[0]):
        raise ValueError(f"indices must lie in [0, {P_val.shape[0]})")
    if np.unique(idx).shape[0] != idx.shape[0]:
        raise ValueError("indices must be distinct")
    w = _check_weights(weights, idx.shape[0], normalised=True)
    nz = w > 0.0
    return _nll_rows(P_val, idx[nz], w[nz])


# ---------------------------------------------------------------------------------------------
# budgets and the curve


def population_index(p: int, c: int, C: int) -> int:
    """Row of snapshot (trajectory p, cycle c), both 1-based, in a population of C cycles: (p−1)·C + (c−1)."""
    if not (1 <= c <= C and p >= 1):
        raise ValueError(f"need p ≥ 1 and 1 ≤ c ≤ C, got p={p}, c={c}, C={C}")
    return (p - 1) * C + (c - 1)


def availability_costs(P: int, C: int, E: float) -> list[tuple[int, int, float]]:
    """When each snapshot becomes available under the round-robin order (architecture.md, "The curve").

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
               points: list[int] | None = None) -> list[dict]:
    """Loss-vs-budget curve of the top-K ensemble (architecture.md, "The curve").

    ``order[j]`` is the population row (of both P_fit and P_val) that becomes available j-th, at
    ``costs[j]`` epochs (nondecreasing). For each evaluated prefix length j (``points``, default
    1..len(order)) the available rows order[:j] are the candidates:

    1. prior: ``fit_prior(P_fit[order[:j]], steps=steps, lr=lr)`` (``prior="learned"``) or
       ``uniform_weights(j)`` (``prior="uniform"``);
    2. for each k in ``ks`` — an int (skipped when k > j) or "all" (= j) — take ``top_k(w, k)`` and
       score ``ensemble_loss`` on P_val.

    Ties in the weights (always, with the uniform prior) go to the member that became available first.
    Returns one dict per (point, k), in point order then ``ks`` order:
    {"budget_epochs": costs[j−1], "members": j, "k": k used (int), "k_label": the ks entry,
    "val_loss": float}.
    """
    P_fit = _check_probs(P_fit, "P_fit")
    P_val = _check_probs(P_val, "P_val")
    if P_fit.shape[0] != P_val.shape[0]:
        raise ValueError(f"P_fit and P_val must have the same rows (population), got "
                         f"{P_fit.shape[0]} and {P_val.shape[0]}")
    if prior not in ("learned", "uniform"):
        raise ValueError(f"prior must be 'learned' or 'uniform', got {prior!r}")
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
    fit_rows = np.asarray(P_fit[order_arr], dtype=np.float64) if prior == "learned" else None
    out: list[dict] = []
    for j in pts:
        if fit_rows is not None:
            w = fit_prior(fit_rows[:j], steps=steps, lr=lr).weights
        else:
            w = uniform_weights(j)
        for label in kl:
            k = j if label == "all" else label
            if k > j:
                continue
            local, wk = top_k(w, k)
            out.append({
                "budget_epochs": float(cost_arr[j - 1]),
                "members": j,
                "k": int(k),
                "k_label": label,
                "val_loss": ensemble_loss(P_val, order_arr[local], wk),
            })
    return out
