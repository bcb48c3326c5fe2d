"""`runtime.tensorboard: true`: TensorBoard event files under the run record, one run per trajectory;
without the optional package, one clear error naming the extra (exit 2); never part of a step key."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cli_helpers import ROOT, TINY, hepc

from hepc.compile.compiler import compile_spec
from hepc.execute.tensorboard import trajectory
from hepc.spec.load import load_spec

SMALL = ["population.trajectories=1", "population.cycles=2", "prior.steps=10"]


def test_tensorboard_is_runtime_only_never_in_a_key():
    off = compile_spec(load_spec(TINY, ["runtime.tensorboard=false"])).graph
    on = compile_spec(load_spec(TINY, ["runtime.tensorboard=true"])).graph
    assert [s.key for s in on.order()] == [s.key for s in off.order()]


def test_trajectory_names():
    assert trajectory("t1-c003") == "t1" and trajectory("t12-c010-val") == "t12"
    assert trajectory("epochs_per_cycle=2-t1-c001") == "epochs_per_cycle=2-t1"


def _without_tensorboard(*args: str, store) -> subprocess.CompletedProcess:
    """`hepc ARGS` in a Python where `import tensorboard` fails, as where the package is not installed."""
    code = (
        "import sys, runpy; sys.modules['tensorboard'] = None; "
        f"sys.argv = ['hepc', *{list(args)!r}]; runpy.run_module('hepc.cli', run_name='__main__')"
    )
    env = {**os.environ, "HEPC_STORE": str(store)}
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT, env=env)


@pytest.mark.parametrize("command", ["validate", "run"])
def test_without_the_package_validate_and_run_name_the_extra(tmp_path, command):
    out = _without_tensorboard(command, TINY, "runtime.tensorboard=true", store=tmp_path / "store")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "runtime.tensorboard" in errors[0], out.stderr
    assert "pip install 'hepc[tensorboard]'" in errors[0]
    assert not (tmp_path / "store").exists()  # nothing written
    fine = _without_tensorboard("validate", TINY, store=tmp_path / "store")  # not asked for: no need
    assert fine.returncode == 0, fine.stderr


def test_a_run_writes_the_scalars_a_user_watches(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = tmp_path / "store"
    hepc("run", TINY, *SMALL, "runtime.tensorboard=true", "--quiet", store=store)
    (record,) = (store / "records" / "tiny").iterdir()
    runs = sorted(p.name for p in (record / "tensorboard").iterdir())
    assert runs == ["t1"]
    acc = EventAccumulator(str(record / "tensorboard" / "t1"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {"train/loss", "train/ce", "train/kd", "train/lr", "train/wd", "train/tokens_per_s", "val/loss"}
    assert expected <= tags, tags
    # val loss once per cycle, at the cycle's last global step, equal to its val score
    progress = [json.loads(x) for x in (record / "progress.jsonl").read_text().splitlines()]
    ends = {x["name"]: x["global_step_end"] for x in progress if x["event"] == "finish" and x["kind"] == "cycle"}
    vals = {x["name"]: x["loss"] for x in progress if x["event"] == "finish" and x.get("split") == "val"}
    points = [(e.step, e.value) for e in acc.Scalars("val/loss")]
    assert points == [
        (ends["t1-c001"], pytest.approx(vals["t1-c001-val"], rel=1e-6)),
        (ends["t1-c002"], pytest.approx(vals["t1-c002-val"], rel=1e-6)),
    ]
    kd_steps = [e.step for e in acc.Scalars("train/kd")]
    assert kd_steps and min(kd_steps) > ends["t1-c001"]  # distillation starts with cycle 2
    assert max(e.step for e in acc.Scalars("train/loss")) == ends["t1-c002"]
