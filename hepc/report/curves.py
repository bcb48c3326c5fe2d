"""Loss-vs-budget curves from a population's curve points (docs/method.md §8.1, §8.2).

A *curve point* is one row of ``curve.json`` (see ``hepc.prior.curve.loss_curve``)::

    {"budget_epochs": float, "members": int, "k": int, "k_label": int | "all",
     "val_loss": float, "val_bpb": float | None}

A *curve* here is a list of ``(budget_epochs, val_loss)`` pairs sorted by budget, one pair per
distinct budget. Budgets are epochs summed over all members (docs/method.md §2.3), so they are > 0.

Curves per population, as in the paper:

- **headline** (``headline_curve``): at every budget the prior's K = ``all`` (or, when the spec
  does not list ``all``, its largest K), so K and the member weights are chosen on held-out data
  alone and nothing is chosen on val. Every ratio hepc reports comes from this curve;
- **fixed K** (``fixed_k_curve``): the inference ensemble restricted to K members, used for the
  paper's matched-K comparison (q0's top-K with K = the baseline's ensemble size);
- **best K on val** (``best_k_curve``): at each budget the lowest val loss over every evaluated K.
  Choosing K by its val loss is an optimistic leak, so this curve is a *diagnostic* only, labelled
  so wherever it is shown, and never used for a ratio.

``running_best`` turns a curve into its monotone envelope (the best loss reached by each budget).
Picking "the best earlier budget" by val loss is the same leak, so the headline comparison uses
the raw curves and the envelope appears only with the diagnostic.
"""


from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

Curve = list[tuple[float, float]]

HEADLINE_RULE = (
    "K = all (or the largest K the spec lists) at every budget; K and the member weights are chosen "
    "on held-out data only, never on val"
)
DIAGNOSTIC_RULE = "best K on val at each budget, running best: a diagnostic (chosen on val), never used for a ratio"


def as_curve(pairs: Iterable[Sequence[float]]) -> Curve:
    """Normalise ``(budget, loss)`` pairs into a curve: sorted by budget, one pair per budget.

    Duplicate budgets keep the lowest loss. Raises ValueError on an empty input, a non-positive
    or non-finite budget (budgets are interpolated in log space), or a non-finite loss.
    """
    best: dict[float, float] = {}
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"a curve point is (budget, loss), got {pair!r}")
        budget, loss = float(pair[0]), float(pair[1])
        if not math.isfinite(budget) or budget <= 0:
            raise ValueError(f"curve budgets must be finite and > 0, got {budget!r}")
        if not math.isfinite(loss):
            raise ValueError(f"curve losses must be finite, got {loss!r} at budget {budget:g}")
        best[budget] = min(loss, best.get(budget, math.inf))
    if not best:
        raise ValueError("a curve needs at least one (budget, loss) point")
    return sorted(best.items())


def flatten_results(results: Mapping) -> list[Mapping]:
    """The per-population dicts of a ``hepc.report.results.collect`` output (flat, or a sweep's
    ``{"spec", "populations": [...]}``)."""
    return list(results["populations"]) if "populations" in results else [results]


def seed_populations(results: Mapping) -> list[Mapping] | None:
    """The per-seed populations of a spec swept over ``seed`` alone (None for anything else)."""
    pops = flatten_results(results)
    if len(pops) < 2 or any(set(p.get("values") or {}) != {"seed"} for p in pops):
        return None
    return pops


def mean_points(pops: Sequence[Mapping]) -> list[Mapping]:
    """Curve points averaged over seeds: one point per (budget, K label) present in every seed, its
    ``val_loss`` the mean over seeds (no seed is picked: averaging chooses nothing)."""
    groups: dict[tuple, list[Mapping]] = {}
    for pop in pops:
        for p in pop["curve"]:
            groups.setdefault((float(p["budget_epochs"]), str(p["k_label"])), []).append(p)
    out = []
    for (_, _), ps in sorted(groups.items()):
        if len(ps) == len(pops):
            out.append({**ps[0], "val_loss": sum(float(p["val_loss"]) for p in ps) / len(ps)})
    return out


def merge_points(results: Mapping) -> list[Mapping]:
    """All curve points of a ``collect`` output, every population of a sweep together.

    For a sweep (e.g. ``single.yaml``: one model per epoch budget) ``best_k_curve`` of the merged
    points is the best population at each budget, the sweep's loss-vs-budget curve. A spec swept
    over ``seed`` alone gives the mean over seeds instead (``mean_points``): seeds are repeats, and
    the best of them on val would be a choice made on val.
    """
    seeds = seed_populations(results)
    if seeds is not None:
        return mean_points(seeds)
    return [p for pop in flatten_results(results) for p in pop["curve"]]


def _by_budget(points: Sequence[Mapping]) -> dict[float, list[Mapping]]:
    if not points:
        raise ValueError("no curve points")
    groups: dict[float, list[Mapping]] = {}
    for p in points:
        groups.setdefault(float(p["budget_epochs"]), []).append(p)
    return dict(sorted(groups.items()))


def best_k_curve(points: Sequence[Mapping]) -> Curve:
    """The best-K-on-val curve (a diagnostic): for each budget, the minimum ``val_loss`` over all K."""
    return as_curve((b, min(float(p["val_loss"]) for p in ps)) for b, ps in _by_budget(points).items())


def headline_label(points: Sequence[Mapping]) -> str | int:
    """The K of the headline curve: ``"all"`` when the population evaluated it, else its largest K."""
    labels = {p["k_label"] for p in points}
    if not labels:
        raise ValueError("no curve points")
    if "all" in labels:
        return "all"
    return max(int(k) for k in labels)


def headline_curve(points: Sequence[Mapping]) -> Curve:
    """The headline curve: the ``headline_label`` ensemble at every budget (see the module docstring).

    With ``all``: the point labelled ``all`` at each budget (every available member, prior weights).
    Otherwise the fixed-K curve of the largest listed K (all available members while fewer exist).
    Several points at one budget with that label (populations of a sweep that share a budget) keep
    the lowest loss.
    """
    label = headline_label(points)
    if label != "all":
        return fixed_k_curve(points, int(label))
    return as_curve((float(p["budget_epochs"]), float(p["val_loss"])) for p in points if p["k_label"] == "all")


def fixed_k_curve(points: Sequence[Mapping], k: int) -> Curve:
    """The curve of the top-``k`` ensemble.

    Rule, per distinct budget (the population available there has ``m`` = the largest ``members``
    among that budget's points):

    - ``m >= k``: the point whose ``k`` field (the K actually used) equals ``k``. If the population
      did not evaluate that K (``k`` not in its spec's ``prior.budgets``), raise ValueError: a
      matched-K comparison needs it, and silently dropping budgets would fake a "never reached".
    - ``m < k``: fewer members exist than the inference budget allows, so the ensemble of
      everything available is the top-k ensemble: the point with the largest ``k`` at that budget
      (the ``"all"`` point when the spec lists ``all``).

    This is the paper's matched-K restriction (docs/method.md §8.4): q0's inference ensemble may use
    at most as many members as the baseline's ensemble.
    """
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    out = []
    for budget, ps in _by_budget(points).items():
        available = max(int(p["members"]) for p in ps)
        if available >= k:
            hits = [p for p in ps if int(p["k"]) == k and int(p["members"]) == available]
            if not hits:
                ks = sorted({int(p["k"]) for p in ps})
                raise ValueError(
                    f"no K={k} point at budget {budget:g} epochs ({available} members; evaluated K: "
                    f"{ks}); add {k} to prior.budgets to compare at matched K"
                )
            out.append((budget, min(float(p["val_loss"]) for p in hits)))
        else:  # every available member: the `all` point when evaluated (no choice among labels)
            every = [p for p in ps if p["k_label"] == "all"]
            largest = max(int(p["k"]) for p in ps)
            chosen = every or [p for p in ps if int(p["k"]) == largest]
            out.append((budget, min(float(p["val_loss"]) for p in chosen)))
    return as_curve(out)


def ensemble_size(points: Sequence[Mapping]) -> int:
    """The number of members of a population's final curve point (largest budget).

    For an independent-seed ensemble baseline this is its N, the K used for matched-K comparisons.
    """
    groups = _by_budget(points)
    return max(int(p["members"]) for p in groups[max(groups)])


def running_best(curve: Iterable[Sequence[float]]) -> Curve:
    """Monotone (non-increasing) envelope: at each budget the lowest loss reached at or before it."""
    out: Curve = []
    best = math.inf
    for budget, loss in as_curve(curve):
        best = min(best, loss)
        out.append((budget, best))
    return out
