"""The README's first command: the quickstart population beats its best single snapshot.

Slow (~3-6 min on 2 cores): `python -m pytest -m slow tests/test_quickstart.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_ensemble_beats_best_single(tmp_path):
    env = {**os.environ, "HEPC_STORE": str(tmp_path / "store")}
    out = subprocess.run(
        [sys.executable, "-m", "hepc.cli", "run", "specs/quickstart.yaml", "--json", "--quiet"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800,
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert len(res["members"]) == 8
    best_single = min(m["val_loss"] for m in res["members"])
    learned_all = [e for e in res["ensembles"] if e["k_label"] == "all"][0]
    assert learned_all["val_loss"] < best_single
    assert res["fit"]["nll"] <= res["fit"]["uniform_nll"]
