"""Budgets and the loss-vs-budget curve (docs/method.md §4.5, §8.1): snapshots in the order they become
available, the prior refit at every completed round, the top-K ensemble scored at each point."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hepc.prior.fit import fit_prior_prefixes
from hepc.prior.rows import RowStack, check_probs, fit_matrix, uniform_weights
from hepc.prior.select import ensemble_losses, top_k
from hepc.prior.shrinkage import SHRINKAGE_EM_ITERS, SHRINKAGE_FOLDS, SHRINKAGE_STRENGTHS, fit_prior_shrinkage

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
    P_fit = check_probs(P_fit, "P_fit")
    P_val = check_probs(P_val, "P_val")
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
        fit_rows = np.ascontiguousarray(fit_matrix(np.asarray(picked), "P_fit"))
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
        P_test = check_probs(P_test, "P_test")
        if P_test.shape[0] != P_val.shape[0]:
            raise ValueError(f"P_test must have the population's {P_val.shape[0]} rows, got {P_test.shape[0]}")
        for row, loss in zip(out, ensemble_losses(P_test, chosen, chunk=chunk)):
            row["test_loss"] = loss
    return out
