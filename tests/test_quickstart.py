"""The README's first command: q0 and its same-budget baseline, then their comparison on test.

Slow (a few minutes on 2 cores): `python -m pytest -m slow tests/test_quickstart.py`.
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
def test_quickstart_compares_q0_with_its_baseline_on_test(tmp_path):
    env = {**os.environ, "HEPC_STORE": str(tmp_path / "store")}
    out = subprocess.run(
        [sys.executable, "-m", "hepc.cli", "run", "specs/quickstart-baseline.yaml", "specs/quickstart.yaml", "--json",
         "--quiet"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800,
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["split"] == "test" and res["baseline"] == "quickstart-baseline"
    [c] = res["comparisons"]
    assert c["trained_tokens"] == {"reference": [16000], "candidate": [12800]}
    assert {f["budget_epochs"] for f in res["finals"]} == {64.0}
    q0 = json.loads(subprocess.run([sys.executable, "-m", "hepc.cli", "results", "specs/quickstart.yaml", "--json"],
                                   capture_output=True, text=True, cwd=ROOT, env=env, check=True).stdout)
    assert len(q0["members"]) == 8 and q0["fit"]["nll"] <= q0["fit"]["uniform_nll"]
