"""Ctrl-C (and SIGTERM): the current cycle checkpoints at the step it reached, the lease is released,
the run record says interrupted, exit 130; the next run resumes and ends bit-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "fixtures" / "tiny.yaml")
# Long cycles and no periodic checkpoint: only the interrupt can write one.
SPEC = (TINY, "population.epochs_per_cycle=6", "runtime.checkpoint_every_steps=0")


def cmd(*args) -> list[str]:
    return [sys.executable, "-m", "hepc.cli", *args]


def env(store: Path) -> dict:
    return {**os.environ, "HEPC_STORE": str(store)}


def events(store: Path) -> list[dict]:
    folders = sorted((store / "records" / "tiny").iterdir())
    return [json.loads(line) for line in (folders[-1] / "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    store = tmp_path_factory.mktemp("reference")
    out = subprocess.run(cmd("run", *SPEC, "--json", "--quiet"), capture_output=True, text=True, env=env(store),
                         cwd=ROOT, check=True)
    return store, json.loads(out.stdout)


def _weights(store: Path, name: str) -> bytes:
    (obj,) = [p for p in (store / "objects" / "cycle").iterdir() if p.name.startswith(name + "-")]
    return (obj / "model.safetensors").read_bytes()


@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)], ids=["SIGINT", "SIGTERM"])
# SIGTERM takes SIGINT's path (the driver maps it to an interrupt; test_reliability_disk.py checks that in the default run)
def test_interrupt_checkpoints_releases_records_and_resumes_exactly(tmp_path, reference, sig):
    ref_store, ref_results = reference
    store = tmp_path / "store"
    proc = subprocess.Popen(cmd("run", *SPEC), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(store), cwd=ROOT)
    # Wait until the second cycle of trajectory 1 is under way, then interrupt it mid-cycle.
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if any(e["event"] == "begin" and e.get("name") == "t1-c002" for e in events(store)):
                break
        except (OSError, ValueError, StopIteration):
            pass
        time.sleep(0.05)
    time.sleep(0.4)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err

    run = events(store)
    assert [e["event"] for e in run][-2:] == ["interrupted", "interrupted"]
    assert run[-2]["name"] == "t1-c002"
    assert not [p for p in (store / "leases").iterdir() if not p.name.startswith(".")]
    work = store / "work" / run[-2]["key"]
    progress = json.loads((work / "progress.json").read_text())
    assert (work / "ckpt.pt").is_file() and 0 < progress["step"] < progress["steps"]

    plan = subprocess.run(cmd("plan", *SPEC), capture_output=True, text=True, env=env(store), cwd=ROOT)
    line = next(l for l in plan.stdout.splitlines() if "t1-c002 " in l)
    assert line.startswith("~ resumable") and f"step {progress['step']}/{progress['steps']}" in line

    out = subprocess.run(cmd("run", *SPEC, "--json", "--quiet"), capture_output=True, text=True, env=env(store),
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ref_results
    for name in ("t1-c001", "t1-c002", "t2-c001", "t2-c002"):
        assert _weights(store, name) == _weights(ref_store, name), name
    assert not (store / "work" / run[-2]["key"]).exists()
