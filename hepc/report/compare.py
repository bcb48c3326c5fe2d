"""The paper's figures from loss-vs-budget curves (docs/method.md §8.3-§8.5).

- ``epochs_to_match``: the budget at which a curve *first* reaches a loss, interpolating loss
  linearly in log(budget) between consecutive curve points.
- ``compare``: epochs-to-match of a candidate against a reference's final loss (with the budget
  ratio, the paper's 4.6x) and the loss gap at equal budget.
- ``matched_k_ratio``: the same with the candidate's inference ensemble restricted to the
  reference's ensemble size (the paper's 3.8x).
- ``compare_populations``: all of the above from two ``hepc.report.results.collect`` dicts.
- ``data_efficiency``: the Slowrun rule: the token count at which a reference "loss vs tokens"
  envelope reaches a loss, as a multiple of the base token count (the paper's 12.9x).

Conventions (used everywhere below):

- Curves are ``(budget_epochs, val_loss)`` pairs (see ``hepc.report.curves``). ``compare`` and
  friends take ``envelope``: True replaces both curves by their running-best envelope first ("the
  best loss available *by* that budget"). Picking the best earlier budget by its val loss is a
  choice made on val, so ``compare_populations`` (what ``hepc compare`` reports) uses the raw
  headline curves (``envelope=False``) and keeps the envelope for its labelled diagnostic.
- A crossing that is not inside the measured range is never turned into a number: "never
  reached" gives ``budget: None`` / ``ratio: None``; a crossing at or before the first point is
  flagged (``at_first_point``) because the true crossing may be earlier.
- Differences are ``candidate − reference`` (and "how far from the target"): negative means the
  candidate is better (lower loss). This is the one sign convention of every table hepc prints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from hepc.report.curves import (
    DIAGNOSTIC_RULE,
    HEADLINE_RULE,
    Curve,
    as_curve,
    best_k_curve,
    ensemble_size,
    fixed_k_curve,
    headline_curve,
    merge_points,
    running_best,
)

FIRST_POINT_NOTE = (
    "the curve already reaches the target at its first point: the true crossing may be at a "
    "smaller budget, so this budget is an upper bound and any ratio computed from it a lower bound"
)


def _prepare(curve, envelope: bool) -> Curve:
    return running_best(curve) if envelope else as_curve(curve)


def interpolate_loss(curve, budget: float) -> float | None:
    """Loss of ``curve`` at ``budget``, linear in log(budget) between the bracketing points.

    Exact at a curve point; None outside ``[first budget, last budget]`` (no extrapolation).
    """
    pts = as_curve(curve)
    budget = float(budget)
    if budget <= 0 or budget < pts[0][0] or budget > pts[-1][0]:
        return None
    for (b0, l0), (b1, l1) in zip(pts, pts[1:]):
        if b0 <= budget <= b1:
            t = (math.log(budget) - math.log(b0)) / (math.log(b1) - math.log(b0))
            return l0 + t * (l1 - l0)
    return pts[0][1]  # a one-point curve, budget equal to it


def epochs_to_match(curve, target_loss: float, *, envelope: bool = True) -> dict:
    """The budget at which ``curve`` first reaches ``target_loss`` (loss <= target).

    Between the last point above the target, (b0, l0), and the first at or below it, (b1, l1),
    loss is taken linear in log(budget), so the crossing is ``b0 · (b1/b0)^((l0−t)/(l0−l1))``.

    Returns, when reached::

        {"reached": True, "budget": float, "target_loss": float, "envelope": bool,
         "at_first_point": bool,   # True: the first point is already at/below the target
         "interpolated": bool,     # True: strictly between two evaluated budgets
         "between": [[b0, l0], [b1, l1]] | None,   # the bracketing points (None at the first point)
         "note": str | None}       # says that an at-first-point budget is only an upper bound

    and when the curve never gets there (never a number for the budget)::

        {"reached": False, "budget": None, "target_loss": float, "envelope": bool, "at_first_point": False,
         "interpolated": False, "between": None,
         "closest_loss": float, "closest_budget": float, "gap": closest_loss − target (> 0),
         "note": str}
    """
    target = float(target_loss)
    if not math.isfinite(target):
        raise ValueError(f"target loss must be finite, got {target_loss!r}")
    pts = _prepare(curve, envelope)
    base = {"target_loss": target, "envelope": envelope}
    for i, (b1, l1) in enumerate(pts):
        if l1 > target:
            continue
        if i == 0:
            return {**base, "reached": True, "budget": b1, "at_first_point": True,
                    "interpolated": False, "between": None, "note": FIRST_POINT_NOTE}
        b0, l0 = pts[i - 1]
        frac = (l0 - target) / (l0 - l1)  # in (0, 1]: l0 > target >= l1
        budget = b1 if frac >= 1.0 else math.exp(math.log(b0) + frac * (math.log(b1) - math.log(b0)))
        return {**base, "reached": True, "budget": budget, "at_first_point": False,
                "interpolated": frac < 1.0, "between": [[b0, l0], [b1, l1]], "note": None}
    closest_budget, closest_loss = min(pts, key=lambda p: (p[1], p[0]))
    return {**base, "reached": False, "budget": None, "at_first_point": False, "interpolated": False,
            "between": None, "closest_loss": closest_loss, "closest_budget": closest_budget,
            "gap": closest_loss - target,
            "note": f"never reached: best loss {closest_loss:.4f} at {closest_budget:g} epochs is "
                    f"{closest_loss - target:.4f} above the target"}


def reference_final(reference, *, envelope: bool = True) -> tuple[float, float, float]:
    """``(reference_budget, reference_loss, final_budget)`` of a reference curve.

    Raw (``envelope=False``): the final point, so ``reference_budget == final_budget`` (the paper's
    "baseline's loss at its 256-epoch budget"). Envelope (default): the best loss the reference
    reaches by its final budget, and the *earliest* budget at which it reaches it. For a reference
    that improves to the end (the paper's ensemble baseline) both readings agree; for one that
    overfits (a single model trained past saturation) the envelope does not credit the candidate
    with the reference's wasted epochs.
    """
    pts = as_curve(reference)
    final_budget = pts[-1][0]
    if not envelope:
        return final_budget, pts[-1][1], final_budget
    loss = min(l for _, l in pts)
    budget = min(b for b, l in pts if l == loss)
    return budget, loss, final_budget


def loss_gap_at_equal_budget(reference, candidate, *, envelope: bool = True) -> dict:
    """Candidate loss minus reference loss at equal budget (negative = candidate better).

    Returns::

        {"points": [{"budget", "reference_loss", "candidate_loss", "gap"}, ...],
         "at_largest_common_budget": {"budget", "reference_loss", "candidate_loss", "gap"} | None}

    ``points``: one per candidate budget inside the reference's budget range, the reference
    interpolated there (log-linear). ``at_largest_common_budget``: both curves interpolated at
    min(last reference budget, last candidate budget); None when the budget ranges do not overlap.
    """
    ref, cand = _prepare(reference, envelope), _prepare(candidate, envelope)
    rows = []
    for budget, loss in cand:
        r = interpolate_loss(ref, budget)
        if r is not None:
            rows.append({"budget": budget, "reference_loss": r, "candidate_loss": loss, "gap": loss - r})
    common = min(ref[-1][0], cand[-1][0])
    at_common = None
    if common >= max(ref[0][0], cand[0][0]):
        r, c = interpolate_loss(ref, common), interpolate_loss(cand, common)
        at_common = {"budget": common, "reference_loss": r, "candidate_loss": c, "gap": c - r}
    return {"points": rows, "at_largest_common_budget": at_common}


def compare(reference, candidate, *, envelope: bool = True) -> dict:
    """Epochs-to-match and loss gaps of ``candidate`` against ``reference`` (both curves).

    Returns::

        {"envelope": bool,
         "epochs_to_match": {
             "reference_budget": float,      # budget at which the reference has reference_loss
             "reference_final_budget": float,  # its last budget (= reference_budget unless it overfits)
             "reference_loss": float,        # the reference's final loss (envelope: best by its end)
             "candidate_budget": float | None,  # where the candidate first reaches it; None = never
             "ratio": float | None,          # reference_budget / candidate_budget; None = never
             "reached": bool,
             "at_first_point": bool,         # True: candidate_budget is an upper bound, ratio a lower bound
             "match": {...}},                # the full epochs_to_match() dict
         "loss_gap_at_equal_budget": {...}}  # see loss_gap_at_equal_budget()
    """
    ref_budget, ref_loss, final_budget = reference_final(reference, envelope=envelope)
    match = epochs_to_match(candidate, ref_loss, envelope=envelope)
    cand_budget = match["budget"]
    return {
        "envelope": envelope,
        "epochs_to_match": {
            "reference_budget": ref_budget,
            "reference_final_budget": final_budget,
            "reference_loss": ref_loss,
            "candidate_budget": cand_budget,
            "ratio": None if cand_budget is None else ref_budget / cand_budget,
            "reached": match["reached"],
            "at_first_point": match["at_first_point"],
            "match": match,
        },
        "loss_gap_at_equal_budget": loss_gap_at_equal_budget(reference, candidate, envelope=envelope),
    }


def matched_k_ratio(reference_points: Sequence[Mapping], candidate_points: Sequence[Mapping], *,
                    k: int | None = None, envelope: bool = False) -> dict:
    """Epochs-to-match with the candidate's inference ensemble limited to K members.

    K defaults to the reference's ensemble size (``ensemble_size``: members of its final point).
    The reference is its headline curve; the candidate is ``fixed_k_curve(candidate_points, K)``
    (top-K by prior weight: nothing chosen on val). Returns the ``compare(...)["epochs_to_match"]``
    dict plus ``"k"`` and ``"loss_gap_at_equal_budget"``. Raises ValueError when the candidate did
    not evaluate K.
    """
    k = ensemble_size(reference_points) if k is None else k
    result = compare(headline_curve(reference_points), fixed_k_curve(candidate_points, k), envelope=envelope)
    return {"k": int(k), **result["epochs_to_match"],
            "loss_gap_at_equal_budget": result["loss_gap_at_equal_budget"]}


def compare_populations(reference: Mapping, candidate: Mapping, *, envelope: bool = False) -> dict:
    """Everything ``hepc compare`` reports for one (reference, candidate) pair of results dicts.

    ``reference`` and ``candidate`` are ``hepc.report.results.collect`` outputs (``spec``, the curve points
    and, when present, ``teacher_costs`` are read); a sweep's populations are merged
    (``merge_points``), so a single-model sweep over epoch budgets is one curve.

    The ratios come from the headline curves (``headline_curve``: K = all, weights from held-out;
    raw curves, no envelope), never from a choice made on val. The best-K-on-val comparison is
    reported under ``diagnostic`` only. Returns::

        {"reference": name, "candidate": name, "envelope": bool, "k_rule": HEADLINE_RULE,
         "epochs_to_match": {... compare()["epochs_to_match"] ..., "ratio": float | None},
         "loss_gap_at_equal_budget": {...},
         "matched_k": {... matched_k_ratio() ...} or {"k", "reached": False, "ratio": None, "error": str},
         "matched_k_ratio": float | None,
         "with_teacher_forwards": {"reference_budget", "candidate_budget", "ratio"},  # cost incl. teacher passes
         "diagnostic": {"rule": DIAGNOSTIC_RULE, "epochs_to_match": {...}, "ratio": float | None}}
    """
    ref_pts, cand_pts = merge_points(reference), merge_points(candidate)
    main = compare(headline_curve(ref_pts), headline_curve(cand_pts), envelope=envelope)
    k = ensemble_size(ref_pts)
    try:
        matched = matched_k_ratio(ref_pts, cand_pts, k=k, envelope=envelope)
    except ValueError as e:
        matched = {"k": k, "reached": False, "ratio": None, "candidate_budget": None, "error": str(e)}
    diagnostic = compare(best_k_curve(ref_pts), best_k_curve(cand_pts), envelope=True)["epochs_to_match"]
    e = main["epochs_to_match"]
    ref_t = with_teacher(reference, e["reference_budget"])
    cand_t = with_teacher(candidate, e["candidate_budget"])
    return {
        "reference": reference.get("spec"),
        "candidate": candidate.get("spec"),
        "envelope": envelope,
        "k_rule": HEADLINE_RULE,
        "epochs_to_match": e,
        "loss_gap_at_equal_budget": main["loss_gap_at_equal_budget"],
        "matched_k": matched,
        "matched_k_ratio": matched["ratio"],
        "with_teacher_forwards": {
            "reference_budget": ref_t,
            "candidate_budget": cand_t,
            "ratio": None if ref_t is None or not cand_t else ref_t / cand_t,
        },
        "diagnostic": {"rule": DIAGNOSTIC_RULE, "epochs_to_match": diagnostic, "ratio": diagnostic["ratio"]},
    }


def with_teacher(results: Mapping, budget: float | None) -> float | None:
    """A budget in training epochs converted to epochs of training *plus* teacher forwards (each
    teacher forward counted as 1/3 of a training pass, its FLOP share), by interpolating the
    population's ``teacher_costs`` table ``[[epochs, epochs_with_teacher], ...]`` (linear between
    its points). Without a table (or without distillation) the budget is unchanged."""
    if budget is None:
        return None
    table = []
    for pop in (results.get("populations") or [results]):
        table += [(float(a), float(b)) for a, b in pop.get("teacher_costs") or []]
    if not table:
        return float(budget)
    table = sorted(set(table))
    xs = [0.0] + [a for a, _ in table]
    ys = [0.0] + [b for _, b in table]
    budget = float(budget)
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= budget <= x1:
            return y0 if x1 == x0 else y0 + (budget - x0) / (x1 - x0) * (y1 - y0)
    return budget * ys[-1] / xs[-1]  # beyond the table: the last ratio


def token_envelope(reference_points) -> list[tuple[float, float]]:
    """Best loss per token count (over model sizes), sorted by tokens: the "best" column of docs/method.md §8.5."""
    best: dict[float, float] = {}
    for tokens, loss in reference_points:
        tokens, loss = float(tokens), float(loss)
        if not math.isfinite(tokens) or tokens <= 0 or not math.isfinite(loss):
            raise ValueError(f"reference points must be (tokens > 0, finite loss), got {(tokens, loss)!r}")
        best[tokens] = min(loss, best.get(tokens, math.inf))
    if not best:
        raise ValueError("data efficiency needs at least one reference (tokens, loss) point")
    return sorted(best.items())


def data_efficiency(reference_points, loss: float, *, base_tokens: float = 100_000_000, log_tokens: bool = False) -> dict:
    """Equivalent-data multiplier of a method's ``loss`` (the Slowrun rule, docs/method.md §8.5).

    ``reference_points``: ``(tokens, loss)`` pairs of models trained on more data; several entries
    at one token count (different model sizes) keep the best. Along that envelope, piecewise-linear
    in tokens (``log_tokens``: in log tokens, for sizes on a ×2 grid), find the first token count at
    which the loss is reached; multiplier = tokens / ``base_tokens`` (the data the method itself
    trained on).

    Returns::

        {"loss", "base_tokens", "envelope": [[tokens, loss], ...],
         "reached": bool,              # crossing found inside the measured token range
         "status": "interpolated" | "at_point" | "below_range" | "beyond_range",
         "tokens": float | None, "multiplier": float | None,
         "between": [[t0, l0], [t1, l1]] | None,
         "multiplier_upper_bound": float | None,  # below_range: the reference's smallest run is
                                                  # already better, multiplier < first tokens / base
         "multiplier_lower_bound": float | None,  # beyond_range: the loss beats every reference,
                                                  # multiplier > last tokens / base
         "note": str | None}

    Outside the measured range nothing is extrapolated: ``multiplier`` is None and only the bound
    is given.
    """
    loss = float(loss)
    base_tokens = float(base_tokens)
    if not math.isfinite(loss):
        raise ValueError(f"loss must be finite, got {loss!r}")
    if not math.isfinite(base_tokens) or base_tokens <= 0:
        raise ValueError(f"base_tokens must be > 0, got {base_tokens!r}")
    env = token_envelope(reference_points)
    out = {"loss": loss, "base_tokens": base_tokens, "envelope": [list(p) for p in env],
           "reached": False, "tokens": None, "multiplier": None, "between": None,
           "multiplier_upper_bound": None, "multiplier_lower_bound": None, "note": None}
    for i, (t1, l1) in enumerate(env):
        if l1 > loss:
            continue
        if l1 == loss:
            return {**out, "reached": True, "status": "at_point", "tokens": t1, "multiplier": t1 / base_tokens}
        if i == 0:
            return {**out, "status": "below_range", "multiplier_upper_bound": t1 / base_tokens,
                    "note": f"the reference's smallest run ({t1:g} tokens, loss {l1:.4f}) is already "
                            f"better than {loss:.4f}; extrapolation refused"}
        t0, l0 = env[i - 1]
        frac = (l0 - loss) / (l0 - l1)
        tokens = math.exp(math.log(t0) + frac * (math.log(t1) - math.log(t0))) if log_tokens else t0 + frac * (t1 - t0)
        return {**out, "reached": True, "status": "interpolated", "tokens": tokens,
                "multiplier": tokens / base_tokens, "between": [[t0, l0], [t1, l1]]}
    t_last, l_last = env[-1]
    best_t, best_l = min(env, key=lambda p: (p[1], p[0]))
    return {**out, "status": "beyond_range", "multiplier_lower_bound": t_last / base_tokens,
            "note": f"never reached: the reference's best loss is {best_l:.4f} (at {best_t:g} tokens), "
                    f"above {loss:.4f}; extrapolation refused"}
