"""The reproduction's summary (bench/repro_summary.py) end to end on miniature copies of specs/repro/:
the same files and structure (families, seeds shared across arms, sweeps, shared steps), tiny sizes, two
seeds, one weight decay per family, scale A only plus two data sizes. Checks that summary.json carries
the figures the issue names, on test, that docs/results.md renders from it, and the --quick check."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
REPRO = ROOT / "specs" / "repro"
KEEP = ["a/q0", "a/ens-1s", "a/ens-2s", "a/single", "a/abl-p2", "a/abl-alpha0",
        "data/single-a-8k", "data/single-a-16k", "data/single-b-8k"]


def miniature(spec: dict) -> dict:
    """The same experiment, tiny: 1/8 of the data, a 1-layer model, 2 seeds, 1 weight decay, epochs ÷ 8."""
    d = spec["data"]
    d.update(train_tokens=max(1_200, d["train_tokens"] // 8), heldout_tokens=400, val_tokens=1_000, test_tokens=800,
             seq_len=32)
    spec["model"] = {"n_layer": 1, "d_model": 16 if spec["model"]["d_model"] >= 96 else 8, "n_head": 2, "dropout": 0.0}
    spec["optimizer"]["batch_tokens"] = 128
    pop = spec["population"]
    pop["epochs_per_cycle"] = max(1, pop["epochs_per_cycle"] / 8)
    pop["cycles"] = min(pop["cycles"], 3)
    pop["trajectories"] = min(pop["trajectories"], 2)
    if pop.get("distill"):
        pop["distill"]["after_cycles"] = 1
    spec["prior"]["budgets"] = [k for k in spec["prior"]["budgets"] if k == "all" or k <= pop["trajectories"] * pop["cycles"]]
    sweep = spec.get("sweep") or {}
    if "seed" in sweep:
        sweep["seed"] = [100, 200]
    if "optimizer.weight_decay" in sweep:  # the spec's own value (q0's is the ablations' base)
        own = spec["optimizer"]["weight_decay"]
        sweep["optimizer.weight_decay"] = [own] if own in sweep["optimizer.weight_decay"] else sweep["optimizer.weight_decay"][:1]
    if "population.epochs_per_cycle" in sweep:
        sweep["population.epochs_per_cycle"] = sorted({max(1, e / 8) for e in sweep["population.epochs_per_cycle"]})[:3]
    spec["runtime"] = {"device": "cpu", "threads": 1, "checkpoint_every_steps": 0, "log_every_steps": 50}
    return spec


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    from hepc.compile.compiler import compile_spec
    from hepc.execute import driver
    from hepc.spec.load import load_spec
    from hepc.store.objects import Store

    base = tmp_path_factory.mktemp("repro")
    specs = base / "specs"
    yaml = YAML(typ="safe", pure=True)
    for name in KEEP:
        spec = miniature(yaml.load((REPRO / f"{name}.yaml").read_text()))
        buf = io.StringIO()
        yaml.dump(spec, buf)
        (specs / name).parent.mkdir(parents=True, exist_ok=True)
        (specs / f"{name}.yaml").write_text(buf.getvalue())
    store = base / "store"
    for name in KEEP:
        loaded = load_spec(specs / f"{name}.yaml")
        driver.execute(compile_spec(loaded, strict_data=True), Store(store), loaded.spec.runtime.model_dump(),
                       loaded.spec.model_dump(mode="json"), quiet=True)
    return base, specs, store


def test_summary_has_every_figure_on_test_and_renders_the_page(mini, monkeypatch):
    base, specs, store = mini
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import repro_summary

    monkeypatch.setattr(repro_summary, "SPECS", specs)
    monkeypatch.setattr(repro_summary, "FAMILIES", {**repro_summary.FAMILIES, "ensembles": ["ens-1s", "ens-2s"]})
    monkeypatch.setattr(repro_summary, "QUICK", ("a", "ensembles", "q0"))
    summary = repro_summary.summarise(str(store), None, base / "docs", plots=True)
    on_disk = json.loads((base / "docs" / "results" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    names = {(c["scale"], c["name"]) for c in on_disk["comparisons"]}
    assert names == {("a", "q0 vs ensembles"), ("a", "q0 vs single")}  # the rest is not in the miniature store
    for c in on_disk["comparisons"]:
        assert c["split"] == "test" and c["scale"] == "a"
        fam = c["reference_family"]
        assert fam["configurations"] and fam["chosen"] and all("config" in ch for ch in fam["chosen"])
        assert c["trained_tokens"]["reference"] and c["trained_tokens"]["candidate"]
        assert c["trained_tokens"]["reference"] != c["trained_tokens"]["candidate"]  # q0 keeps its held-out slice
        assert "ratio" in c["epochs_to_match"] and "ci95" in c["epochs_to_match"]
        assert {"k", "ratio", "binds"} <= set(c["matched_k"])
        p = c["paired"]
        assert p["n_seeds"] == 2 and p["seeds"] == [100, 200] and len(p["final_gap_ci95"]) == 2
        assert p["final_gap_ci95"][0] <= p["final_gap_mean"] <= p["final_gap_ci95"][1]
        assert "hepc compare --family" in c["command"] and "--split test" in c["command"]
    assert {a["name"] for a in on_disk["ablations"]} == {"abl-p2", "abl-alpha0"}
    for a in on_disk["ablations"]:
        assert a["split"] == "test" and a["paired"]["n_seeds"] == 2 and a["paired"]["final_gap_ci95"] is not None
        assert a["chain"]["q0"] and "diversity" in a
    [eff] = [d for d in on_disk["data_efficiency"] if d["method"] == "q0"]
    assert eff["unit"] == "trained tokens" and len(eff["model_sizes"]) == 2 and eff["split"] == "test"
    assert on_disk["regime"][0]["scale"] == "a" and on_disk["regime"][0]["chain"]
    assert on_disk["quick"]["seeds"] == [100, 200] and on_disk["quick"]["comparison"]["name"] == "q0 vs ensembles"
    page = (base / "docs" / "results.md").read_text()
    assert "Outcome, on the test split." in page and "paired seeds" in page and "## Ablations" in page
    assert (base / "docs" / "results" / "a-q0-vs-ensembles.png").is_file()
    # the --quick check recomputes its block and finds it identical to summary.json's
    assert repro_summary.check_quick(str(store), base / "docs") == 0
    tampered = dict(on_disk, quick={**on_disk["quick"], "seeds": [1, 2]})
    (base / "docs" / "results" / "summary.json").write_text(json.dumps(tampered))
    assert repro_summary.check_quick(str(store), base / "docs") == 1
    assert "bench" in sys.path[0]


def test_a_partly_run_sweep_gives_its_finished_configurations(mini, monkeypatch):
    """A grid widened after a first pass (one more weight decay, not trained yet): the page keeps the
    configurations whose seeds are all done and names the one left out, instead of dropping the spec."""
    base, specs, store = mini
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import repro_summary

    monkeypatch.setattr(repro_summary, "SPECS", specs)
    yaml = YAML(typ="safe", pure=True)
    spec = yaml.load((specs / "a" / "q0.yaml").read_text())
    own = spec["optimizer"]["weight_decay"]
    spec["sweep"]["optimizer.weight_decay"] = [own, own * 2]
    buf = io.StringIO()
    yaml.dump(spec, buf)
    (specs / "a" / "q0-wider.yaml").write_text(buf.getvalue())
    missing: list[str] = []
    _, _, results = repro_summary._collect("a/q0-wider", str(store), (), missing)
    assert {p["values"]["optimizer.weight_decay"] for p in results["populations"]} == {own}
    assert sorted(p["values"]["seed"] for p in results["populations"]) == [100, 200]
    assert missing == [f"a/q0-wider [weight_decay={json.dumps(own * 2)}]"]
