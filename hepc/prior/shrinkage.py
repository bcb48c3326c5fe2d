"""The shrinkage prior (docs/method.md §6.4): MAP-EM toward uniform, with its strength chosen by
cross-validation over whole held-out documents, accelerated by SQUAREM."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hepc.prior.fit import FitResult, finish_fit
from hepc.prior.rows import FLOOR, fit_matrix, uniform_weights

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
    P64 = np.ascontiguousarray(fit_matrix(P))
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
        fit = finish_fit(P64, uni, -1, [], 0, "map-em")
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
    fit = finish_fit(P64, full[chosen], 0 if chosen < 1.0 else -1, [], updates, "map-em")
    return ShrinkageFit(**vars(fit), strength=chosen, cv_nll=[cv[s] for s in grid], cv_se=[se[s] for s in grid],
                        min_strength=best, **info)
