"""The memory pre-flight (hepc/train/memory.py): the estimate against the measured peak of real cycles on the CPU,
the chunked loss's lower peak, the paper spec's plan on an 80 GB GPU, refusals with exit 2 and nothing
written, and the runtime settings that never enter a key."""

from __future__ import annotations

import json
import sys

import pytest
from cli_helpers import ROOT, TINY, hepc

from hepc.compile.compiler import compile_spec
from hepc.spec.load import load_spec
from hepc.train.memory import GB, Settings, Shape, choose, cycle_estimate

sys.path.insert(0, str(ROOT / "bench"))
import memory as bench_memory

PAPER = str(ROOT / "specs" / "paper-1.8b.yaml")


@pytest.fixture(scope="module")
def measured():
    """Real cycles (2 steps each) and real loss passes, measured in a fresh process (bench/memory.py)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the probe reads /proc")
    return bench_memory.run(["estimator", "loss"], bench_memory.FAST)


def test_the_estimate_is_within_a_quarter_of_the_measured_peak(measured):
    rows = measured["estimator"]
    assert [r["case"] for r in rows] == bench_memory.FAST  # full logits, distilled Muon in micro-batches, chunks
    for r in rows:
        assert r["measured_bytes"] > 20e6, r  # large enough that the tensors, not the noise, are measured
        assert abs(r["estimated_bytes"] - r["measured_bytes"]) <= 0.25 * r["measured_bytes"], r
    assert rows[1]["micro_batch"] == 4 and rows[1]["batch_seqs"] == 16


def test_the_chunked_loss_has_a_lower_measured_peak(measured):
    for r in measured["loss"]:  # CE and CE + KD over 2,048 tokens of a 8,192-token vocabulary
        assert r["chunked_bytes"] < 0.25 * r["full_bytes"], r


def test_auto_takes_the_largest_micro_batch_that_fits():
    shape = Shape(vocab=50257, n_layer=30, d_model=2048, n_head=16, seq_len=2048, dropout=True, optimizer="muon",
                  distill=True)  # fmt: skip
    choice = choose(shape, 256, 0.9 * 80 * GB, device="cuda", bf16=True)
    assert choice.fits and 256 % choice.micro == 0 and not choice.checkpointing
    bigger = cycle_estimate(shape, Settings("cuda", True, 2 * choice.micro, False, 2048))
    assert bigger.total > 0.9 * 80 * GB  # the next divisor does not fit
    tight = choose(shape, 256, 0.9 * 40 * GB, device="cuda", bf16=True)  # one sequence does not fit: recompute
    assert tight.fits and tight.checkpointing and tight.micro >= 1
    assert not choose(shape, 256, 0.9 * 24 * GB, device="cuda", bf16=True).fits  # the model alone is too big
    assert choose(shape, 256, 1e15, device="cpu", bf16=False).micro == 256  # room enough: the whole batch


def test_the_paper_spec_fits_an_80gb_gpu_per_the_plan(tmp_path):
    for extra in ((), ("runtime.gpus_per_step=8",)):
        args = ("plan", PAPER, "runtime.device_memory_gb=80", *extra)
        data = json.loads(hepc(*args, "--json", store=tmp_path / "s").stdout)["memory"]
        assert data["device"] == "cuda" and data["capacity_bytes"] == 80e9 and data["problems"] == []
        cycles = [r for r in data["steps"] if r["kind"].startswith("cycle")]
        assert [r["kind"] for r in cycles] == ["cycle", "cycle (distilled)"]
        for r in cycles:
            assert r["fits"] and r["total_bytes"] <= 0.9 * 80e9 and r["micro_batch"] < r["rows"]
            assert r["rows"] == 256 // (8 if extra else 1) and r["micro_steps"] == r["rows"] // r["micro_batch"]
            assert {"weights", "gradients", "optimizer", "activations", "loss"} <= set(r["parts"])
        assert "teacher" in cycles[1]["parts"]
        text = hepc(*args, store=tmp_path / "s").stdout
        line = next(line for line in text.splitlines() if line.strip().startswith("cycle (distilled)"))
        assert f"micro-batch {cycles[1]['micro_batch']} of {cycles[1]['rows']} sequences" in line
        assert "GB per sequence" in line and "with activation checkpointing" in line and "DOES NOT FIT" not in line
        assert "memory per device: 80.0 GB GPU (runtime.device_memory_gb)" in text
    assert not (tmp_path / "s").exists()


def test_a_cycle_that_cannot_fit_is_refused_with_one_located_line(tmp_path):
    store = tmp_path / "store"
    out = hepc("validate", PAPER, "runtime.device_memory_gb=80", "runtime.micro_batch=64", store=store, check=False)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    assert "runtime.micro_batch: a distilled cycle with micro-batches of 64 sequences needs" in errors[0]
    assert "usable of 80.0 GB GPU" in errors[0] and "use runtime.micro_batch:" in errors[0]
    small = hepc("validate", PAPER, "runtime.device_memory_gb=24", store=store, check=False)
    assert small.returncode == 2 and "even with one sequence per micro-batch" in small.stderr
    assert "data parallelism" in small.stderr  # says why more GPUs per step do not help
    # `run` refuses before anything is written: no store folder at all
    tiny = hepc("run", TINY, "runtime.device_memory_gb=0.005", "runtime.micro_batch=16", store=store, check=False)
    assert tiny.returncode == 2 and "error: override 'runtime.micro_batch=16': runtime.micro_batch: " in tiny.stderr
    assert not store.exists()
    # plan shows the same without failing
    plan = hepc("plan", TINY, "runtime.device_memory_gb=0.005", "runtime.micro_batch=16", store=store)
    assert "DOES NOT FIT" in plan.stdout and "warning:" in plan.stderr


@pytest.mark.parametrize(
    "override",
    ["runtime.micro_batch=3", "runtime.activation_checkpointing=true", "runtime.loss_chunk_tokens=24",
     "runtime.device_memory_gb=80", "runtime.deterministic=true", "runtime.checkpoint_every_minutes=5"],
)  # fmt: skip
def test_memory_and_speed_settings_change_no_key(override):
    base = {s.key for s in compile_spec(load_spec(TINY)).graph}
    assert {s.key for s in compile_spec(load_spec(TINY, [override])).graph} == base
