"""Fair comparison by construction (hepc/report/families.py, paired.py, side_by_side.py): families tuned on
val and read on test, paired seeds with t-intervals, the guard against comparing unrelated data, the
single-model saturation warning, trained tokens on both sides."""

from __future__ import annotations

import math

import pytest

from hepc.cli.specs import check_same_splits
from hepc.errors import SpecError
from hepc.report.families import Family
from hepc.report.paired import mean_interval, paired_differences, ratio_interval, t975
from hepc.report.side_by_side import compare_results, saturation_warnings


def pt(budget, members, val, test, k="all"):
    kk = members if k == "all" else k
    return {"budget_epochs": budget, "members": members, "k": kk, "k_label": k, "val_loss": val, "test_loss": test}


def pop(spec, values, curve, seed=0, trained=1000, members=None):
    return {"spec": spec, "values": values, "seed": seed, "curve": curve, "trained_tokens_per_epoch": trained,
            "members": members or [{"val_loss": curve[-1]["val_loss"]}] * max(p["members"] for p in curve)}


def sweep(spec, pops):
    return {"spec": spec, "populations": pops}


# --------------------------------------------------------------------------- statistics


def test_t_quantiles_and_a_hand_computed_paired_interval():
    assert t975(1) == 12.7062 and t975(4) == 2.7764 and t975(30) == 2.0423
    assert t975(40) == pytest.approx(2.0211) and 1.959964 < t975(10_000) < 1.9603  # 1.96020
    ref = {1: 2.00, 2: 2.10, 3: 1.95, 4: 2.05, 5: 2.02}
    cand = {1: 1.99, 2: 2.08, 3: 1.935, 4: 2.038, 5: 2.002}
    d = paired_differences(ref, cand)
    diffs = [-0.01, -0.02, -0.015, -0.012, -0.018]
    mean = sum(diffs) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 4)
    half = 2.7764 * sd / math.sqrt(5)
    assert d["n_seeds"] == 5 and d["mean"] == pytest.approx(mean) and d["sd"] == pytest.approx(sd)
    assert d["ci95"] == pytest.approx([mean - half, mean + half])
    assert d["verdict"] == "candidate better" and d["ci95"][1] < 0
    # unpaired, the same numbers would not resolve it: the seed-to-seed spread (0.06) dwarfs the gap
    spread = mean_interval(list(cand.values()))["sd"]
    assert spread > 3 * abs(mean)
    assert paired_differences({1: 1.0, 2: 1.0}, {1: 1.1, 2: 0.9})["verdict"] == "no difference resolved"
    assert paired_differences({1: 1.0}, {1: 0.9})["ci95"] is None
    r = ratio_interval({1: 2.0, 2: 8.0, 3: None})
    assert r["mean"] == pytest.approx(4.0) and r["reached"] == "2/3" and r["n_seeds"] == 2


# --------------------------------------------------------------------------- families


def ensemble_family(test_shift=0.0, val_shift=0.0):
    """Two configurations of an ensemble baseline, two seeds each. At 4 epochs `m=2` is better on val,
    `m=1` better on test; at 8 epochs `m=1` is better on val."""
    def curve(m, val, test):
        return [pt(b, n, v + val_shift, t + test_shift) for b, n, v, t in zip((2, 4, 8), (2, 4, 8) if m == 1 else (1, 2, 4), val, test)]

    return sweep("ens", [
        pop("ens", {"m": 1, "seed": s}, curve(1, (3.0, 2.5, 2.0), (3.0, 2.3, 2.1)), seed=s) for s in (1, 2)
    ] + [pop("ens", {"m": 2, "seed": s}, curve(2, (3.1, 2.4, 2.2), (3.1, 2.6, 2.0)), seed=s) for s in (1, 2)])


def test_family_chooses_on_val_and_reads_test():
    fam = Family.from_results("ens", [ensemble_family()])
    assert [c.label for c in fam.configs] == ["m=1", "m=2"] and fam.seeds == [1, 2]
    test = fam.curve("test")
    assert [(p["budget"], p["config"]) for p in test] == [(2, "ens [m=1]"), (4, "ens [m=2]"), (8, "ens [m=1]")]
    assert [p["loss"] for p in test] == [3.0, 2.6, 2.1]  # the val choice's test loss, never the best on test
    assert [p["loss"] for p in fam.curve("val")] == [3.0, 2.4, 2.0]
    # test figures never move a choice: another test curve, the same configurations and budgets
    other = Family.from_results("ens", [ensemble_family(test_shift=-5.0)]).curve("test")
    assert [(p["config"], p["at_budget"]) for p in other] == [(p["config"], p["at_budget"]) for p in test]


def test_a_later_worse_budget_keeps_the_earlier_choice():
    """A single model that overfits: at 16 epochs the family still reads the 8-epoch model (best on val)."""
    single = sweep("single", [pop("single", {"epochs": b}, [pt(b, 1, v, t)]) for b, v, t in
                              ((4, 2.5, 2.6), (8, 2.2, 2.3), (16, 2.4, 2.1))])
    fam = Family.from_results("single", [single])
    last = fam.curve("test")[-1]
    assert (last["budget"], last["at_budget"], last["loss"]) == (16, 8, 2.3)  # not 2.1: that is chosen on test


def test_a_choice_on_the_edge_of_its_grid_is_flagged():
    """Weight decay {0.5, 1.5, 4}: chosen at 1.5 no warning; chosen at 4 (the largest tried) one line
    naming the setting, the value and the grid. Epoch counts are a setting like any other."""
    def family(best):
        pops = [pop("ens", {"optimizer.weight_decay": wd, "seed": 1}, [pt(8, 1, 2.0 - 0.1 * (wd == best), 2.0)], seed=1)
                for wd in (0.5, 1.5, 4.0)]
        return Family.from_results("ens", [sweep("ens", pops)])

    from hepc.report.families import grid_edges

    assert grid_edges(family(1.5)) == []
    (line,) = grid_edges(family(4.0))
    assert line == ("ens: chosen at 8 epochs with weight_decay=4.0, the largest value tried (0.5, 1.5, 4.0): "
                    "the best may lie outside the grid")
    assert "smallest value tried" in grid_edges(family(0.5))[0]
    one = Family.from_results("q0", [sweep("q0", [pop("q0", {"optimizer.weight_decay": 8.0, "seed": 1}, [pt(8, 1, 2.0, 2.0)])])])
    assert grid_edges(one) == []  # one value tried: no grid to be on the edge of
    result = compare_results([family(4.0), Family.from_results("q0", [ensemble_family()])], split="test")
    assert any("weight_decay=4.0, the largest value tried" in w for w in result["warnings"])


def test_compare_families_pairs_seeds_and_states_the_split():
    ens = ensemble_family()
    q0 = sweep("q0", [pop("q0", {"seed": s}, [pt(b, n, v - d, t - d) for b, n, v, t in
                                              ((2, 1, 2.9, 2.9), (4, 2, 2.3, 2.25), (8, 4, 1.9, 1.95))], seed=s, trained=800)
                      for s, d in ((1, 0.01), (2, 0.03))])
    out = compare_results([("ens", ens), ("q0", q0)], split="test")
    assert out["split"] == "test" and out["baseline_k"] == 8
    c = out["comparisons"][0]
    assert c["split"] == "test" and c["reference_family"]["configurations"] == ["ens [m=1]", "ens [m=2]"]
    assert c["trained_tokens"] == {"reference": [1000], "candidate": [800]}
    p = c["paired"]
    assert p["n_seeds"] == 2 and p["seeds"] == [1, 2] and p["budget"] == 8
    assert p["final_gap_per_seed"] == pytest.approx([1.95 - 0.01 - 2.1, 1.95 - 0.03 - 2.1])
    assert p["final_gap_ci95"][0] < p["final_gap_mean"] < p["final_gap_ci95"][1]
    assert p["epochs_to_match"]["reached"] == "2/2"
    # q0 had only 4 snapshots at the crossing and K = 8: matched K does not bind
    assert c["matched_k"]["k"] == 8 and c["matched_k"]["binds"] is False


def test_every_comparison_is_refused_without_the_split():
    ens = ensemble_family()
    no_test = sweep("q0", [pop("q0", {"seed": 1}, [{k: v for k, v in pt(8, 4, 2.0, 2.0).items() if k != "test_loss"}])])
    with pytest.raises(ValueError, match="no test scores"):
        compare_results([("ens", ens), ("q0", no_test)], split="test")


def test_different_val_or_test_tokens_are_refused():
    a = {"spec": "a", "split_digests": {"val": "v1", "test": "t1"}}
    same = {"spec": "b", "split_digests": {"val": "v1", "test": "t1"}}
    check_same_splits([("a", a), ("b", same)], "test")
    other_val = {"spec": "c", "split_digests": {"val": "v2", "test": "t1"}}
    with pytest.raises(SpecError, match="different val tokens"):
        check_same_splits([("a", a), ("c", other_val)], "val")
    other_test = {"spec": "d", "split_digests": {"val": "v1", "test": "t2"}}
    check_same_splits([("a", a), ("d", other_test)], "val")  # test is not read: not compared
    with pytest.raises(SpecError, match="different test tokens"):
        check_same_splits([("a", a), ("d", other_test)], "test")


def test_a_reference_whose_single_models_never_saturate_is_flagged():
    improving = sweep("single", [pop("single", {"epochs": b}, [pt(b, 1, v, v)]) for b, v in ((4, 2.5), (8, 2.2), (16, 2.1))])
    cand = Family.from_results("q0", [sweep("q0", [pop("q0", {}, [pt(4, 1, 2.3, 2.3), pt(8, 2, 2.0, 2.0)])])])
    [warning] = saturation_warnings(Family.from_results("single", [improving]), [cand])
    assert "still improve at their largest budget (16 epochs" in warning
    saturating = sweep("single", [pop("single", {"epochs": b}, [pt(b, 1, v, v)]) for b, v in ((4, 2.5), (16, 2.1), (32, 2.3))])
    [early] = saturation_warnings(Family.from_results("single", [saturating]), [cand])
    assert "stops at 8 epochs, before single's single model saturates (16 epochs)" in early


def test_the_command_line_compares_families_on_test_and_refuses_other_data(tmp_path):
    """`hepc run A B` trains both and prints their comparison (on test: both have a test split); `compare
    --family NAME=SPEC` names the family; the equal-data baseline trains on train + held-out (more
    steps per epoch); a spec scored on another corpus's val is refused with exit 2."""
    import json

    from cli_helpers import TINY, hepc

    store = tmp_path / "store"
    base = [TINY, "data.test_tokens=500", "prior.kind=uniform", "data.train_on_heldout=true"]
    q0 = [TINY, "data.test_tokens=500"]
    out = json.loads(hepc("run", *base, *q0, "--json", "--quiet", store=store).stdout)
    assert out["split"] == "test" and len(out["comparisons"]) == 1
    assert out["comparisons"][0]["trained_tokens"] == {"reference": [12000], "candidate": [11000]}
    result = hepc("compare", "--family", "base=" + "::".join(base), *q0, "--split", "test", "--json", store=store)
    c = json.loads(result.stdout)["comparisons"][0]
    assert c["reference"] == "base" and c["split"] == "test" and c["paired"]["n_seeds"] == 1
    # the baseline's cycles trained on all 12,000 tokens: 24 steps of 512 per epoch, not 11,000's 21
    cycles = [json.loads(p.read_text()) for p in (store / "objects" / "cycle").glob("*/manifest.json")]
    assert sorted({m["summary"]["steps"] for m in cycles}) == [21, 23]
    other = hepc("run", TINY, "data.seed=1", "--quiet", store=store)
    assert other.returncode == 0
    refused = hepc("compare", *q0, TINY, "data.seed=1", store=store, check=False)
    assert refused.returncode == 2 and "different val tokens" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    hepc("run", TINY, "--quiet", store=store)  # the same val, no test split
    no_test = hepc("compare", *q0, TINY, "--split", "test", store=store, check=False)
    assert no_test.returncode == 2 and "has no test scores" in no_test.stderr
