"""Corruption: a truncated, altered or tampered object is named by `hepc verify` (exit 1), and
`hepc run` reports it, moves it to quarantine/ and recomputes it (bit-identical on CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cli_helpers import executed, hepc, obj

from hepc.store.verify import check_object, manifest_digest

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "fixtures" / "tiny.yaml")


def test_verify_clean_store(tiny_copy):
    path, _, _ = tiny_copy
    out = hepc("verify", store=path)
    assert out.returncode == 0 and "15 objects" in out.stdout and "all intact" in out.stdout
    out = hepc("verify", TINY, "--json", store=path)
    report = json.loads(out.stdout)
    assert report["checked"] == 15 and report["damaged"] == []


def test_truncated_file_is_named_and_recomputed(tiny_copy):
    path, pristine, results = tiny_copy
    cycle = obj(path, "cycle", "t1-c001")
    weights = cycle / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])

    out = hepc("verify", store=path, check=False)
    assert out.returncode == 1
    assert f"cycle/{cycle.name}" in out.stdout and "truncated" in out.stdout
    assert sum(line.startswith("damaged ") for line in out.stdout.splitlines()) == 1
    out = hepc("verify", TINY, store=path, check=False)  # scoped to the spec's graph
    assert out.returncode == 1 and cycle.name in out.stdout

    run = hepc("run", TINY, "--json", store=path)
    assert cycle.name in run.stderr and "damaged" in run.stderr
    assert json.loads(run.stdout) == results
    assert executed(path)[-1] == ["cycle:t1-c001"]  # only the damaged object was recomputed
    assert (cycle / "model.safetensors").read_bytes() == (obj(pristine, "cycle", "t1-c001") / "model.safetensors").read_bytes()
    assert list((path / "quarantine").rglob(cycle.name))
    assert hepc("verify", store=path).returncode == 0


def test_flipped_byte_is_named_and_recomputed_even_with_mtime_restored(tiny_copy):
    path, pristine, results = tiny_copy
    score = obj(path, "score", "t2-c002-val")
    probs = score / "probs.npy"
    st = probs.stat()
    data = bytearray(probs.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit
    probs.write_bytes(bytes(data))
    os.utime(probs, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide the change from a size/mtime check

    out = hepc("verify", store=path, check=False)
    assert out.returncode == 1 and f"score/{score.name}" in out.stdout and "digest" in out.stdout

    run = hepc("run", TINY, "--json", store=path)
    assert score.name in run.stderr
    assert json.loads(run.stdout) == results
    assert executed(path)[-1] == ["score:t2-c002-val"]
    assert probs.read_bytes() == (obj(pristine, "score", "t2-c002-val") / "probs.npy").read_bytes()


def test_altered_manifest_is_detected(tiny_copy):
    path, _, _ = tiny_copy
    prior = obj(path, "prior", "p2xc2")
    manifest = json.loads((prior / "manifest.json").read_text())
    manifest["summary"]["best_ensemble_val_loss"] = 0.001  # valid JSON, plausible, wrong
    (prior / "manifest.json").write_text(json.dumps(manifest))
    out = hepc("verify", "--json", store=path, check=False)
    assert out.returncode == 1
    (damaged,) = json.loads(out.stdout)["damaged"]
    assert damaged["object"] == f"prior/{prior.name}" and "altered" in damaged["problems"][0]


def test_missing_and_unexpected_files_are_damage(tiny_copy):
    path, _, _ = tiny_copy
    a = obj(path, "cycle", "t2-c001")
    (a / "metrics.jsonl").unlink()
    b = obj(path, "cycle", "t2-c002")
    (b / "extra.bin").write_bytes(b"x")
    out = hepc("verify", store=path, check=False)
    assert out.returncode == 1
    assert f"cycle/{a.name}: metrics.jsonl is missing" in out.stdout
    assert f"cycle/{b.name}: unexpected file" in out.stdout


def test_verify_user_errors_exit_2(tmp_path):
    out = hepc("verify", "--store", str(tmp_path / "nowhere"), store=tmp_path, check=False)
    assert out.returncode == 0 and "verified 0 objects" in out.stdout and "empty" in out.stderr  # a store holding nothing
    assert not (tmp_path / "nowhere").exists()
    out = hepc("verify", str(tmp_path / "missing.yaml"), store=tmp_path, check=False)
    assert out.returncode == 2 and "missing.yaml" in out.stderr


def test_a_manifest_cannot_make_verify_read_outside_the_object(tmp_path):
    outside = tmp_path / "secret"
    outside.write_text("x")
    o = tmp_path / "objects" / "cycle" / "t1-c001-0123456789ab"
    o.mkdir(parents=True)
    manifest = {"key": "0123456789ab" + "0" * 20, "files": {"../../../secret": {"size": 1, "xxh3_128": "0"}}}
    manifest["manifest_xxh3_128"] = manifest_digest(manifest)
    (o / "manifest.json").write_text(json.dumps(manifest))
    problems = check_object(o)
    assert problems and "invalid file" in problems[0]


def test_input_damaged_during_a_run_is_recomputed_before_use(tiny_copy, monkeypatch):
    """Damage that appears after the run's start-up check is still caught right before use."""
    from hepc.compile.compiler import compile_spec
    from hepc.execute import driver
    from hepc.spec.load import load_spec
    from hepc.store.objects import Store

    path, pristine, _ = tiny_copy
    prev = obj(path, "cycle", "t1-c002")
    weights = prev / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(driver, "check_committed", lambda graph, store, note=None: [])  # skip the start-up check
    loaded = load_spec(TINY, ["population.cycles=3"])
    compiled = compile_spec(loaded)
    driver.execute(compiled, Store(path), loaded.spec.runtime.model_dump(), {"name": "tiny"}, quiet=True)
    ran = executed(path)[-1]
    assert "cycle:t1-c002" in ran and "cycle:t1-c003" in ran
    assert ran.index("cycle:t1-c002") < ran.index("cycle:t1-c003")
    assert weights.read_bytes() == (obj(pristine, "cycle", "t1-c002") / "model.safetensors").read_bytes()
