"""The reproduction's summary (bench/repro_summary.py) end to end on miniature copies of every
spec in specs/repro/: same files, same structure (seeds, sweeps, shared steps), tiny sizes. Checks
that summary.json carries the figures the issue names and that docs/results.md renders."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
REPRO = ROOT / "specs" / "repro"


def miniature(spec: dict) -> dict:
    """The same experiment, tiny: data ÷ 12, a 1-layer model, cycles ÷ 8, epochs ÷ 8."""
    d = spec["data"]
    d["train_tokens"] = 600 + (d["train_tokens"] - d["heldout_tokens"]) // 12
    d.update(heldout_tokens=600, val_tokens=1000, seq_len=32)
    spec["model"] = {"n_layer": 1, "d_model": 16, "n_head": 2, "dropout": 0.0}
    spec["optimizer"]["batch_tokens"] = 256
    pop = spec["population"]
    pop["epochs_per_cycle"] = max(0.5, pop["epochs_per_cycle"] / 8)
    if pop["trajectories"] == 1 or pop["cycles"] > 1:
        pop["cycles"] = max(1, pop["cycles"] // 8)
    size = pop["trajectories"] * pop["cycles"]
    spec["prior"]["budgets"] = [k for k in spec["prior"]["budgets"] if k == "all" or k <= size]
    if pop.get("distill"):
        pop["distill"]["after_cycles"] = 1
    if pop.get("perturb"):
        pop["perturb"]["decay_cycles"] = 1
    sweep = spec.get("sweep") or {}
    if "population.epochs_per_cycle" in sweep:
        sweep["population.epochs_per_cycle"] = [e / 8 for e in sweep["population.epochs_per_cycle"]]
    spec["runtime"] = {"device": "cpu", "threads": 1, "checkpoint_every_steps": 0, "log_every_steps": 50}
    return spec


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    from hepc.compile import compile_spec
    from hepc.execute import driver
    from hepc.spec.load import load_spec
    from hepc.store import Store

    base = tmp_path_factory.mktemp("repro")
    specs = base / "specs"
    specs.mkdir()
    yaml = YAML(typ="safe", pure=True)
    for path in sorted(REPRO.glob("*.yaml")):
        spec = miniature(yaml.load(path.read_text()))
        buf = io.StringIO()
        yaml.dump(spec, buf)
        (specs / path.name).write_text(buf.getvalue())
    store = base / "store"
    for path in sorted(specs.glob("*.yaml")):
        loaded = load_spec(path)
        driver.execute(compile_spec(loaded, strict_data=True), Store(store), loaded.spec.runtime.model_dump(),
                       loaded.spec.model_dump(mode="json"), quiet=True)
    return base, specs, store


def test_summary_has_the_headline_figures_and_renders_the_page(mini):
    base, specs, store = mini
    sys.path.insert(0, str(ROOT / "bench"))
    import repro_summary

    repro_summary.SPECS = specs
    summary = repro_summary.summarise(str(store), None, base / "docs", plots=True)
    on_disk = json.loads((base / "docs" / "results" / "summary.json").read_text())
    assert on_disk["k_rule"] == summary["k_rule"] and "held-out" in on_disk["k_rule"]
    c = on_disk["comparisons"][0]
    assert c["candidate"] == "repro-q0" and "ratio" in c["epochs_to_match"] and "matched_k_ratio" in c
    assert c["seeds"]["seeds"] == [100, 200, 300] and c["seeds"]["final_loss"]["n"] == 3
    assert {a["spec"] for a in on_disk["ablations_at_8S"]["rows"]} == set(repro_summary.ABLATIONS)
    assert on_disk["baseline_spread"]["members"] == 24 and on_disk["baseline_spread"]["k"] == 16
    assert len(on_disk["data_efficiency"]) == 2
    for p in on_disk["priors"]:
        assert all(f["val_nll"] is not None and f["uniform_val_nll"] is not None for f in p["fits"]), p
    page = (base / "docs" / "results.md").read_text()
    assert "Headline: q0 against the 16·S ensemble" in page and "results/main.png" in page
    assert (base / "docs" / "results" / "main.png").is_file() and (base / "docs" / "results" / "ablations.png").is_file()
