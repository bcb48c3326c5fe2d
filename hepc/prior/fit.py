"""Fitting the prior: the maximum-likelihood mixture weights on the held-out slice, by AdamW as in the
paper (``fit_prior``; batched over every prefix of the availability order, ``fit_prior_prefixes``) or by EM."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hepc.prior.rows import FLOOR, fit_matrix, mixture_nll, row_log_sums, uniform_weights

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


def finish_fit(P64: np.ndarray, best_w: np.ndarray, best_step: int, history: list[float], steps: int,
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
    P64 = fit_matrix(P)
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
    return finish_fit(P64, _softmax(best_a), best_step, history, steps, "adamw")


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
    mixtures, ``row_log_sums``), and like them each is never worse than uniform on P[:j].
    A length on its own in its batch is fit by ``fit_prior`` itself. ``batch``: None (default) batches
    only where it pays, when P[:j_max] has at least 2^20 entries (below that the small matrix products
    cost more than the matrix-vector passes they replace, and each length is fit by ``fit_prior``);
    True or False forces either way. Memory: one float64 copy of P plus a few (batch × N) float64
    arrays, 32 MiB each. At paper scale (96 prefixes of 480 × 131,072) batched fits take about a
    fifth of the time of separate ones (docs/benchmarks.md).
    """
    P64 = np.ascontiguousarray(fit_matrix(P))
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
        Jt = -row_log_sums(mix) / N
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
        out.append(finish_fit(Pj[:j], w, int(best_step[g]), histories[g], steps, "adamw"))
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
    P64 = fit_matrix(P)
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
    return finish_fit(P64, best_w, best_step, history, done, "em")
