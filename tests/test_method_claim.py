"""The method's core claim on every commit: a small q0 population's ensemble (K = all, weights fit on
held-out) beats its best snapshot by a clear margin on val and on test (fixed seeds, seconds)."""

from __future__ import annotations

import json

from cli_helpers import ROOT, hepc

SPEC = str(ROOT / "tests" / "fixtures" / "small-q0.yaml")
MARGIN = 0.03  # nats/token; measured 0.0625 on val when written


def test_the_ensemble_beats_its_best_snapshot_on_val_and_test(tmp_path):
    store = tmp_path / "store"
    hepc("run", SPEC, "--quiet", store=store)
    for split in ("val", "test"):
        res = json.loads(hepc("results", SPEC, "--json", "--split", split, store=store).stdout)
        ensemble = next(e for e in res["ensembles"] if e["k_label"] == "all")
        best = res["best_single"]  # chosen on val, read on the split
        assert ensemble["val_loss"] < best["val_loss"] - MARGIN, (split, ensemble["val_loss"], best["val_loss"])
        assert len(res["members"]) == 8 and res["split"] == split
        # the chain can be read cycle by cycle: training CE of every cycle, and KD of the distilled ones
        assert all(isinstance(m["train_ce"], float) for m in res["members"])
        assert [m["train_kd"] is not None for m in res["members"] if m["trajectory"] == 1] == [False, False, True, True]
