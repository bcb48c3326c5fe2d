"""Tests for hepc.report curves and comparison maths: hand-made curves with values computed by hand."""

from __future__ import annotations

import math

import pytest

from hepc.report.compare import (
    compare,
    compare_populations,
    data_efficiency,
    epochs_to_match,
    interpolate_loss,
    loss_gap_at_equal_budget,
    matched_k_ratio,
    reference_final,
)
from hepc.report.curves import (
    as_curve,
    best_k_curve,
    ensemble_size,
    fixed_k_curve,
    flatten_results,
    headline_curve,
    merge_points,
    running_best,
)

CURVE = [(1, 4.0), (2, 3.0), (4, 2.0), (8, 1.5)]


# ---------------------------------------------------------------- curves


def test_as_curve_sorts_merges_and_rejects_bad_budgets():
    assert as_curve([(4, 2.0), (1, 3.0), (4, 1.5)]) == [(1.0, 3.0), (4.0, 1.5)]
    for bad in ([], [(0, 1.0)], [(-1, 1.0)], [(1, float("nan"))], [(float("inf"), 1.0)]):
        with pytest.raises(ValueError):
            as_curve(bad)


def test_running_best_is_the_monotone_envelope():
    assert running_best([(1, 3.0), (2, 3.5), (4, 2.0), (8, 2.2)]) == [(1, 3.0), (2, 3.0), (4, 2.0), (8, 2.0)]


def _pt(budget, members, k, loss, label=None):
    return {"budget_epochs": float(budget), "members": members, "k": k,
            "k_label": k if label is None else label, "val_loss": loss, "val_bpb": None}


def _ensemble_points(n, per_member, losses_all, single=3.0):
    """A uniform independent-seed ensemble's curve (ks [1, "all"]): member j costs j·per_member."""
    pts = []
    for j, loss in enumerate(losses_all, start=1):
        pts.append(_pt(j * per_member, j, 1, single))
        pts.append(_pt(j * per_member, j, j, loss, "all"))
    assert len(losses_all) == n
    return pts


# reference: 4 members x 4 epochs; best-K curve (4,3.0) (8,2.8) (12,2.7) (16,2.6)
REFERENCE = _ensemble_points(4, 4, [3.0, 2.8, 2.7, 2.6])

# candidate (a q0 population, ks [1, 2, 4, "all"]); budgets 1..8 epochs
CANDIDATE = [
    _pt(1, 1, 1, 3.4), _pt(1, 1, 1, 3.4, "all"),
    _pt(2, 2, 1, 3.2), _pt(2, 2, 2, 3.0), _pt(2, 2, 2, 3.0, "all"),
    _pt(3, 3, 1, 3.1), _pt(3, 3, 2, 2.9), _pt(3, 3, 3, 2.85, "all"),
    _pt(4, 4, 1, 3.0), _pt(4, 4, 2, 2.8), _pt(4, 4, 4, 2.7), _pt(4, 4, 4, 2.7, "all"),
    _pt(6, 6, 1, 2.95), _pt(6, 6, 2, 2.75), _pt(6, 6, 4, 2.6), _pt(6, 6, 6, 2.5, "all"),
    _pt(8, 8, 1, 2.9), _pt(8, 8, 2, 2.7), _pt(8, 8, 4, 2.5), _pt(8, 8, 8, 2.3, "all"),
]


def test_best_k_curve_takes_min_over_k_per_budget():
    assert best_k_curve(REFERENCE) == [(4, 3.0), (8, 2.8), (12, 2.7), (16, 2.6)]
    assert best_k_curve(CANDIDATE) == [(1, 3.4), (2, 3.0), (3, 2.85), (4, 2.7), (6, 2.5), (8, 2.3)]


def test_fixed_k_curve_uses_all_point_below_k_members():
    # budgets 1-3 have fewer than 4 members: their largest ensemble ("all") stands in for top-4
    assert fixed_k_curve(CANDIDATE, 4) == [(1, 3.4), (2, 3.0), (3, 2.85), (4, 2.7), (6, 2.6), (8, 2.5)]
    assert fixed_k_curve(CANDIDATE, 1) == [(1, 3.4), (2, 3.2), (3, 3.1), (4, 3.0), (6, 2.95), (8, 2.9)]


def test_fixed_k_curve_refuses_a_k_that_was_not_evaluated():
    with pytest.raises(ValueError, match="K=3"):
        fixed_k_curve(CANDIDATE, 3)  # budget 4 has 4 members but no K=3 point
    with pytest.raises(ValueError):
        fixed_k_curve(CANDIDATE, 0)


def test_ensemble_size_is_members_of_final_point():
    assert ensemble_size(REFERENCE) == 4
    assert ensemble_size(CANDIDATE) == 8


# ---------------------------------------------------------------- interpolation


def test_interpolate_loss_is_linear_in_log_budget():
    assert interpolate_loss(CURVE, 2) == 3.0
    # halfway in log2 between 2 and 4 is 2*sqrt(2), not 3
    assert interpolate_loss(CURVE, 2 * math.sqrt(2)) == pytest.approx(2.5)
    assert interpolate_loss(CURVE, 3) == pytest.approx(3.0 - math.log2(1.5))
    assert interpolate_loss(CURVE, 0.5) is None
    assert interpolate_loss(CURVE, 16) is None
    assert interpolate_loss([(4, 2.0)], 4) == 2.0


def test_epochs_to_match_log_linear_crossing():
    m = epochs_to_match(CURVE, 2.5)
    assert m["reached"] and not m["at_first_point"] and m["interpolated"]
    assert m["budget"] == pytest.approx(2 * math.sqrt(2))  # log-linear; linear would give 3
    assert m["between"] == [[2, 3.0], [4, 2.0]]
    # a quarter of the way down from 3.0 to 2.0: 2 * 2**0.25
    assert epochs_to_match(CURVE, 2.75)["budget"] == pytest.approx(2 * 2 ** 0.25)


def test_epochs_to_match_exactly_at_a_point():
    m = epochs_to_match(CURVE, 3.0)
    assert m["reached"] and m["budget"] == 2 and not m["interpolated"] and not m["at_first_point"]


def test_epochs_to_match_first_point_already_below_is_flagged():
    m = epochs_to_match(CURVE, 5.0)
    assert m["reached"] and m["at_first_point"] and m["budget"] == 1
    assert "upper bound" in m["note"] and "lower bound" in m["note"]


def test_epochs_to_match_never_reached_gives_no_number():
    m = epochs_to_match(CURVE, 1.0)
    assert m["reached"] is False and m["budget"] is None
    assert m["closest_loss"] == 1.5 and m["closest_budget"] == 8
    assert m["gap"] == pytest.approx(0.5)


def test_epochs_to_match_envelope_vs_raw():
    wiggly = [(1, 3.0), (2, 3.5), (4, 2.0)]
    # envelope (default): (2, 3.0) -> (4, 2.0), halfway: 2*sqrt(2)
    assert epochs_to_match(wiggly, 2.5)["budget"] == pytest.approx(2 * math.sqrt(2))
    # raw: (2, 3.5) -> (4, 2.0), two thirds of the way
    assert epochs_to_match(wiggly, 2.5, envelope=False)["budget"] == pytest.approx(2 * 2 ** (2 / 3))
    # raw never dips below 3.0 again after the first point: envelope and raw agree on 3.0
    assert epochs_to_match(wiggly, 3.0)["at_first_point"]


# ---------------------------------------------------------------- compare


REF_CURVE = [(1, 4.0), (4, 3.0), (16, 2.5)]
CAND_CURVE = [(1, 3.5), (2, 3.0), (4, 2.75), (8, 2.25)]


def test_compare_epochs_to_match_and_ratio():
    e = compare(REF_CURVE, CAND_CURVE)["epochs_to_match"]
    assert e["reference_budget"] == 16 and e["reference_final_budget"] == 16 and e["reference_loss"] == 2.5
    assert e["reached"] and not e["at_first_point"]
    assert e["candidate_budget"] == pytest.approx(4 * math.sqrt(2))  # halfway 2.75 -> 2.25 in log budget
    assert e["ratio"] == pytest.approx(16 / (4 * math.sqrt(2)))      # = 2*sqrt(2)
    assert e["ratio"] == pytest.approx(2 * math.sqrt(2))


def test_gap_at_equal_budget_sign_negative_when_candidate_better():
    """One sign convention everywhere: candidate − reference, negative = candidate better."""
    g = compare(REF_CURVE, CAND_CURVE)["loss_gap_at_equal_budget"]
    # reference interpolated at 1, 2, 4, 8: 4.0, 3.5, 3.0, 2.75
    assert [p["budget"] for p in g["points"]] == [1, 2, 4, 8]
    assert [p["reference_loss"] for p in g["points"]] == pytest.approx([4.0, 3.5, 3.0, 2.75])
    assert [p["gap"] for p in g["points"]] == pytest.approx([-0.5, -0.5, -0.25, -0.5])
    last = g["at_largest_common_budget"]
    assert last["budget"] == 8 and last["gap"] == pytest.approx(-0.5)
    # swapping roles flips the sign (reference now better)
    swapped = loss_gap_at_equal_budget(CAND_CURVE, REF_CURVE)["at_largest_common_budget"]
    assert swapped["budget"] == 8 and swapped["gap"] == pytest.approx(0.5)


def test_gap_skips_budgets_outside_reference_range_and_no_overlap():
    g = loss_gap_at_equal_budget([(2, 3.0), (4, 2.0)], [(1, 3.0), (3, 2.5), (8, 1.0)])
    assert [p["budget"] for p in g["points"]] == [3]
    assert g["at_largest_common_budget"]["budget"] == 4  # min of the two last budgets
    assert loss_gap_at_equal_budget([(1, 3.0), (2, 2.0)], [(4, 2.0), (8, 1.0)])["at_largest_common_budget"] is None


def test_compare_never_crossing_curves_report_not_reached():
    e = compare(REF_CURVE, [(1, 5.0), (2, 4.8), (4, 4.6)])["epochs_to_match"]
    assert e["reached"] is False and e["candidate_budget"] is None and e["ratio"] is None
    assert e["match"]["closest_loss"] == 4.6 and e["match"]["gap"] == pytest.approx(2.1)


def test_compare_first_point_already_below():
    e = compare(REF_CURVE, [(4, 2.0), (8, 1.9)])["epochs_to_match"]
    assert e["reached"] and e["at_first_point"]
    assert e["candidate_budget"] == 4 and e["ratio"] == 4  # a lower bound on the ratio


def test_reference_that_overfits_uses_earliest_budget_of_its_best_loss():
    single = [(1, 4.0), (2, 3.0), (4, 3.2)]
    assert reference_final(single) == (2, 3.0, 4)
    assert reference_final(single, envelope=False) == (4, 3.2, 4)
    e = compare(single, CAND_CURVE)["epochs_to_match"]
    assert e["reference_budget"] == 2 and e["candidate_budget"] == 2 and e["ratio"] == 1


def test_matched_k_ratio():
    best = compare(best_k_curve(REFERENCE), best_k_curve(CANDIDATE))["epochs_to_match"]
    assert best["reference_loss"] == 2.6 and best["reference_budget"] == 16
    assert best["candidate_budget"] == pytest.approx(4 * math.sqrt(1.5))  # halfway (4, 2.7) -> (6, 2.5)
    m = matched_k_ratio(REFERENCE, CANDIDATE)
    assert m["k"] == 4
    assert m["reached"] and m["candidate_budget"] == 6  # top-4 curve hits 2.6 exactly at 6 epochs
    assert m["ratio"] == pytest.approx(16 / 6)
    assert m["ratio"] < best["ratio"]


def test_compare_populations_shape():
    ref = {"spec": "ensemble", "curve": REFERENCE}
    cand = {"spec": "q0", "curve": CANDIDATE}
    c = compare_populations(ref, cand)
    assert c["reference"] == "ensemble" and c["candidate"] == "q0"
    assert c["epochs_to_match"]["ratio"] == pytest.approx(16 / (4 * math.sqrt(1.5)))
    assert c["matched_k_ratio"] == pytest.approx(16 / 6)
    assert c["matched_k"]["k"] == 4
    # a candidate that never evaluated K = 4: the matched-K entry carries the error, no number
    no_k4 = [p for p in CANDIDATE if not (p["k"] == 4 and p["k_label"] != "all")]
    c2 = compare_populations(ref, {"spec": "q0", "curve": no_k4})
    assert c2["matched_k_ratio"] is None and "K=4" in c2["matched_k"]["error"]


# ---------------------------------------------------------------- data efficiency (docs/method.md §8.5)

NANOCHAT = [  # (tokens, loss) for d12, d20, d26 at each token count
    (200e6, 3.703), (200e6, 3.794), (200e6, 3.883),
    (400e6, 3.460), (400e6, 3.416), (400e6, 3.370),
    (600e6, 3.356), (600e6, 3.270), (600e6, 3.200),
    (800e6, 3.302), (800e6, 3.184), (800e6, 3.123),
    (1e9, 3.251), (1e9, 3.124), (1e9, 3.046),
    (2e9, 3.144), (2e9, 2.973), (2e9, 2.892),
]


@pytest.mark.parametrize("loss, multiplier", [(3.003, 12.79), (3.048, 9.95), (3.0014, 12.90), (2.987, 13.83)])
def test_data_efficiency_worked_values(loss, multiplier):
    d = data_efficiency(NANOCHAT, loss, base_tokens=100e6)
    assert d["reached"] and d["status"] == "interpolated"
    assert d["multiplier"] == pytest.approx(multiplier, abs=0.006)
    assert d["envelope"][-1] == [2e9, 2.892] and len(d["envelope"]) == 6


def test_data_efficiency_exact_value_3003():
    # between 1B (3.046) and 2B (2.892): 1e9 + (0.043 / 0.154) * 1e9
    d = data_efficiency(NANOCHAT, 3.003)
    assert d["tokens"] == pytest.approx(1e9 + 0.043 / 0.154 * 1e9)
    assert d["between"] == [[1e9, 3.046], [2e9, 2.892]]


def test_data_efficiency_refuses_extrapolation():
    better = data_efficiency(NANOCHAT, 2.5)
    assert not better["reached"] and better["status"] == "beyond_range"
    assert better["multiplier"] is None and better["tokens"] is None
    assert better["multiplier_lower_bound"] == 20
    worse = data_efficiency(NANOCHAT, 3.9)
    assert not worse["reached"] and worse["status"] == "below_range"
    assert worse["multiplier"] is None and worse["multiplier_upper_bound"] == 2
    at = data_efficiency(NANOCHAT, 3.370)
    assert at["reached"] and at["status"] == "at_point" and at["multiplier"] == 4


def test_sweep_results_are_merged_into_one_curve():
    # a single-model sweep over epoch budgets: one population (one member) per budget, overfits at 4
    sweep = {"spec": "single", "populations": [
        {"spec": "single", "label": f"epochs={b}", "curve": [_pt(b, 1, 1, loss), _pt(b, 1, 1, loss, "all")]}
        for b, loss in [(1, 4.0), (2, 3.0), (4, 3.2)]
    ]}
    assert best_k_curve(merge_points(sweep)) == [(1, 4.0), (2, 3.0), (4, 3.2)]
    assert len(flatten_results(sweep)) == 3 and flatten_results({"curve": []}) == [{"curve": []}]
    c = compare_populations(sweep, {"spec": "q0", "curve": CANDIDATE})
    # headline (raw curves, nothing chosen on val): the sweep's final point 3.2 at 4 epochs; q0's
    # K = all curve (3.4 @ 1, 3.0 @ 2) crosses 3.2 halfway in log budget: sqrt(2) epochs
    e = c["epochs_to_match"]
    assert (e["reference_budget"], e["reference_loss"], e["reference_final_budget"]) == (4, 3.2, 4)
    assert e["candidate_budget"] == pytest.approx(math.sqrt(2)) and e["ratio"] == pytest.approx(4 / math.sqrt(2))
    assert c["matched_k"]["k"] == 1 and c["matched_k"]["candidate_budget"] == 2  # top-1 q0 reaches 3.2 at 2
    # diagnostic (best K on val, envelope): the sweep's best 3.0 first at 2 epochs; q0 reaches 3.0 at 2
    d = c["diagnostic"]["epochs_to_match"]
    assert (d["reference_budget"], d["reference_loss"], d["candidate_budget"], d["ratio"]) == (2, 3.0, 2, 1)
    assert "never used for a ratio" in c["diagnostic"]["rule"] and "held-out" in c["k_rule"]


def test_the_headline_never_selects_k_with_val_data():
    """Val data that favours another K (here K=1 made far better on val at every budget) changes the
    labelled diagnostic, never the headline ratio, the matched-K ratio or the final losses."""
    base = {"spec": "ens", "curve": REFERENCE}
    honest = compare_populations(base, {"spec": "q0", "curve": CANDIDATE})
    tempting = [dict(p, val_loss=p["val_loss"] - 1.0) if p["k_label"] == 1 else p for p in CANDIDATE]
    leaked = compare_populations(base, {"spec": "q0", "curve": tempting})
    assert leaked["epochs_to_match"] == honest["epochs_to_match"]
    assert leaked["matched_k"] == honest["matched_k"]
    assert leaked["diagnostic"]["ratio"] != honest["diagnostic"]["ratio"]
    from hepc.report.side_by_side import compare_results

    a = compare_results([("ens", base), ("q0", {"spec": "q0", "curve": CANDIDATE})])
    b = compare_results([("ens", base), ("q0", {"spec": "q0", "curve": tempting})])
    assert [f["val_loss"] for f in a["finals"]] == [f["val_loss"] for f in b["finals"]]
    assert a["curves"]["q0"] == b["curves"]["q0"]


def test_teacher_forwards_are_counted_apart():
    base = {"spec": "ens", "curve": REFERENCE}
    q0 = {"spec": "q0", "curve": CANDIDATE, "teacher_costs": [[4.0, 4.0], [8.0, 8.0 + 4 / 3]]}
    c = compare_populations(base, q0)
    t = c["with_teacher_forwards"]
    budget = c["epochs_to_match"]["candidate_budget"]
    assert budget > 4 and t["candidate_budget"] == pytest.approx(budget + (budget - 4) / 3)
    assert t["reference_budget"] == c["epochs_to_match"]["reference_budget"]  # no table: no teacher
    assert t["ratio"] < c["epochs_to_match"]["ratio"]


def _single(tokens, losses):
    """A reference sweep on `tokens` of data: one single-model population per epoch budget."""
    return {"spec": f"single-{tokens}", "populations": [
        {"corpus": {"tokens": {"train": tokens - 100, "heldout": 100}},
         "members": [{"val_loss": loss}], "curve": [_pt(b, 1, 1, loss, "all")]}
        for b, loss in losses
    ]}


def test_data_efficiency_joins_several_reference_specs_into_one_envelope():
    from hepc.report.side_by_side import compare_results, reference_points

    refs = [_single(1000, [(4, 3.5), (8, 3.0), (16, 3.2)]),  # 1x: best 3.0 at 8 epochs
            _single(2000, [(4, 2.8), (8, 2.6)]),             # 2x: best 2.6
            _single(4000, [(2, 2.3), (4, 2.2)])]             # 4x: best 2.2
    # one point per data size: its epochs chosen on val (each single model at its own best epochs)
    assert reference_points(refs) == [(1000, 3.0), (2000, 2.6), (4000, 2.2)]
    method = {"spec": "q0", "corpus": {"tokens": {"train": 900, "heldout": 100}},
              "curve": [_pt(4, 1, 1, 2.9, "all"), _pt(8, 1, 1, 2.4, "all")]}
    out = compare_results([("base", refs[0]), ("q0", method)], refs)
    base_eff, q0_eff = out["data_efficiency"]
    # the base family's loss is its configuration chosen on val (8 epochs, 3.0), not its overfit last point
    assert base_eff["status"] == "at_point" and base_eff["multiplier"] == pytest.approx(1.0)
    # 2.4 lies halfway between (2000, 2.6) and (4000, 2.2), interpolated in log tokens: 2000·√2 = 2.83x
    assert q0_eff["status"] == "interpolated" and q0_eff["multiplier"] == pytest.approx(2 * math.sqrt(2))
    assert q0_eff["between"] == [[2000, 2.6], [4000, 2.2]]


def test_seeds_are_averaged_never_picked():
    """A spec swept over `seed` alone: its curve is the mean over seeds (the min would be a choice made
    on val), and the comparison carries each seed's ratio as mean ± sd."""
    from hepc.report.side_by_side import compare_results

    def seeded(offsets):
        return {"spec": "q0", "populations": [
            {"spec": "q0", "label": f"seed={i}", "values": {"seed": i},
             "curve": [dict(p, val_loss=p["val_loss"] + off) for p in CANDIDATE]}
            for i, off in enumerate(offsets)]}

    q0 = seeded([-0.05, 0.0, 0.05])
    mean = merge_points(q0)
    assert [p["val_loss"] for p in mean] == pytest.approx([p["val_loss"] for p in CANDIDATE])
    out = compare_results([("ens", {"spec": "ens", "curve": REFERENCE}), ("q0", q0)])
    c = out["comparisons"][0]
    alone = compare_populations({"spec": "ens", "curve": REFERENCE}, {"spec": "q0", "curve": CANDIDATE})
    assert c["epochs_to_match"]["ratio"] == pytest.approx(alone["epochs_to_match"]["ratio"])
    assert c["paired"]["n_seeds"] == 0  # the baseline has no seeds of its own: nothing to pair
    lucky = seeded([-0.3, 0.0, 0.05])  # one lucky seed moves the mean, as it should, but is not picked
    assert compare_results([("ens", {"spec": "ens", "curve": REFERENCE}), ("q0", lucky)])["finals"][1]["val_loss"] \
        == pytest.approx(headline_curve(CANDIDATE)[-1][1] - 0.25 / 3)
