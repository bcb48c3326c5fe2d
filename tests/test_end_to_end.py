"""A tiny population on the synthetic source, run through the CLI: results, caching, incremental runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cli_helpers import executed, hepc, tiny_store

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "fixtures" / "tiny.yaml")




def plan_json(*args, store):
    return json.loads(hepc("plan", TINY, *args, "--json", store=store).stdout)




@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e")
    plan = plan_json(store=folder / "store")  # planning an empty store writes nothing
    assert plan["counts"]["new"] == len(plan["steps"]) == 15
    store, results = tiny_store(folder)  # `hepc run TINY --json --quiet` (trained once per session)
    return store, plan, results


def test_results_interface(store):
    _, _, res = store
    assert len(res["members"]) == 4
    for m in res["members"]:
        assert {"trajectory", "cycle", "cost_epochs", "val_loss"} <= set(m)
        assert 0 < m["val_loss"] < 10
    assert sorted(m["cost_epochs"] for m in res["members"]) == [1, 2, 3, 4]
    assert [e["k"] for e in res["ensembles"]] == [1, 2, 4]
    assert all({"budget_epochs", "k", "val_loss"} <= set(p) for p in res["curve"])
    assert max(p["budget_epochs"] for p in res["curve"]) == 4
    # The learned prior is never worse than uniform on the data it was fit on.
    assert res["fit"]["nll"] <= res["fit"]["uniform_nll"]


def test_plan_matches_what_run_did(store):
    path, plan, _ = store
    planned = [f"{s['kind']}:{s['name']}" for s in plan["steps"] if s["status"] != "cached"]
    assert executed(path)[0] == planned


def test_second_run_is_all_cached_and_fast(store):
    path, _, res = store
    plan = plan_json(store=path)
    assert {s["status"] for s in plan["steps"]} == {"cached"}
    t0 = time.time()
    again = json.loads(hepc("run", TINY, "--json", store=path).stdout)
    assert time.time() - t0 < 3
    assert again == res
    assert executed(path)[-1] == []


def test_results_command_matches_run(store):
    path, _, res = store
    assert json.loads(hepc("results", TINY, "--json", store=path).stdout) == res


def test_budgets_change_reruns_no_training(store):
    path, _, _ = store
    plan = plan_json("prior.budgets=[1,all]", store=path)
    new = {s["kind"] for s in plan["steps"] if s["status"] != "cached"}
    assert new == {"prior", "curve"}


def test_one_more_cycle_trains_one_cycle_per_trajectory(store):
    path, _, _ = store
    plan = plan_json("population.cycles=3", store=path)
    new_cycles = sorted(s["name"] for s in plan["steps"] if s["status"] == "new" and s["kind"] == "cycle")
    assert new_cycles == ["t1-c003", "t2-c003"]
    hepc("run", TINY, "population.cycles=3", store=path)
    ran = executed(path)[-1]
    assert sorted(n for n in ran if n.startswith("cycle:")) == ["cycle:t1-c003", "cycle:t2-c003"]
    # cycle 3 resumed from cycle 2's saved state: its global step continues where cycle 2 ended
    cycles = {p.name.rsplit("-", 1)[0]: p for p in (path / "objects" / "cycle").iterdir()}
    s2 = json.loads((cycles["t1-c002"] / "summary.json").read_text())
    s3 = json.loads((cycles["t1-c003"] / "summary.json").read_text())
    assert s3["global_step_end"] == s2["global_step_end"] + s3["steps"]


def test_committed_objects_have_manifests(store):
    path, _, _ = store
    for kind_dir in (path / "objects").iterdir():
        for obj in kind_dir.iterdir():
            manifest = json.loads((obj / "manifest.json").read_text())
            assert obj.name.endswith(manifest["key"][:12])
            for rel, info in manifest["files"].items():
                assert (obj / rel).stat().st_size == info["size"]
    assert not any((path / "leases").iterdir())


def test_compare_and_report(store, tmp_path):
    path, _, _ = store
    plot = tmp_path / "curves.png"
    out = hepc("compare", TINY, TINY, "--json", "--plot", str(plot), store=path)
    result = json.loads(out.stdout)
    (c,) = result["comparisons"]
    assert c["epochs_to_match"]["ratio"] == pytest.approx(1.0)  # a population matches itself at its own budget
    assert "matched_k_ratio" in c
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hepc("report", TINY, "--out", str(tmp_path / "rep"), store=path)
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "tiny" in html and "data:image/png;base64," in html


def test_compare_reference_data_is_repeatable(store):
    path, _, res = store
    out = hepc("compare", TINY, "--reference-data", TINY, "--reference-data", TINY, "--json", store=path)
    (eff,) = json.loads(out.stdout)["data_efficiency"]
    tokens = res["corpus"]["tokens"]["train"]  # trained tokens: the held-out slice is not trained on
    best = min(p["val_loss"] for p in res["curve"] if p["k_label"] == "all")  # its best budget, chosen on val
    assert eff["base_tokens"] == tokens and eff["envelope"] == [[tokens, best]]  # two specs, one envelope


def test_logit_aggregate_reaches_the_curve_at_the_final_budget(store):
    path, _, prob = store
    res = json.loads(hepc("run", TINY, "prior.aggregate=logit", "--json", store=path).stdout)
    assert res["aggregate"] == "logit"
    n = len(res["members"])
    final = {str(p["k_label"]): p for p in res["curve"] if p["members"] == n}
    for e in res["ensembles"]:  # the final budget carries the logits step's losses
        assert final[str(e["k_label"])]["val_loss"] == e["val_loss"]
        assert final[str(e["k_label"])]["aggregate"] == "logit"
    earlier = [p for p in res["curve"] if p["members"] < n]
    assert earlier and all(p["aggregate"] == "probability" for p in earlier)
    assert [p["val_loss"] for p in earlier] == [p["val_loss"] for p in prob["curve"] if p["members"] < n]
