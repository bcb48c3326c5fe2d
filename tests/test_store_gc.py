"""Garbage collection: `hepc gc` removes exactly what no recorded or named spec reaches, dry run by
default, in two phases so that a run started meanwhile loses nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from cli_helpers import hepc

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny.yaml"




def graph_keys(spec: Path) -> set[str]:
    from hepc.compile.compiler import compile_spec
    from hepc.spec.load import load_spec

    return {s.key[:12] for s in compile_spec(load_spec(spec)).graph}


def object_keys(store: Path) -> set[str]:
    return {p.name[-12:] for k in (store / "objects").iterdir() for p in k.iterdir()}


def snapshot(store: Path) -> dict:
    return {str(p.relative_to(store)): p.stat().st_mtime_ns for p in store.rglob("*")}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A store holding the tiny experiment and a small abandoned one that shares its corpus."""
    base = tmp_path_factory.mktemp("gc")
    abandoned = base / "abandoned.yaml"
    abandoned.write_text(
        TINY.read_text()
        .replace("name: tiny", "name: abandoned")
        .replace("lr: 0.003", "lr: 0.002")
        .replace("trajectories: 2", "trajectories: 1")
        .replace("cycles: 2", "cycles: 1")
        .replace("budgets: [1, 2, all]", "budgets: [all]")
    )
    store = base / "store"
    hepc("run", str(TINY), "--quiet", "--json", store=store)
    hepc("run", str(abandoned), "--quiet", "--json", store=store)
    return store, abandoned


@pytest.fixture
def store(stores, tmp_path):
    src, abandoned = stores
    dst = tmp_path / "store"
    shutil.copytree(src, dst)
    return dst, abandoned


def test_nothing_is_garbage_while_both_experiments_are_recorded(store):
    path, _ = store
    out = hepc("gc", "--json", store=path)
    assert json.loads(out.stdout)["items"] == []


def test_gc_removes_exactly_the_abandoned_experiments_objects(store):
    path, abandoned = store
    tiny_keys, abandoned_keys = graph_keys(TINY), graph_keys(abandoned)
    only_abandoned = abandoned_keys - tiny_keys
    assert len(only_abandoned) == 5 and abandoned_keys & tiny_keys  # shares the corpus
    shutil.rmtree(path / "records" / "abandoned")  # the experiment is abandoned
    before = snapshot(path)

    dry = hepc("gc", store=path)  # dry run: lists, writes nothing
    assert snapshot(path) == before
    listed = {line.split()[3][-12:] for line in dry.stdout.splitlines() if line.startswith("would remove object")}
    assert listed == only_abandoned
    assert "hepc gc --yes" in dry.stdout and "KB" in dry.stdout
    report = json.loads(hepc("gc", "--json", store=path).stdout)
    assert report["dry_run"] and report["bytes"] == sum(i["bytes"] for i in report["items"]) > 0

    hepc("gc", "--yes", store=path)
    assert object_keys(path) == tiny_keys
    assert not any((path / "trash").iterdir())
    # The surviving experiment is complete and intact: nothing to run.
    plan = json.loads(hepc("plan", str(TINY), "--json", store=path).stdout)
    assert {s["status"] for s in plan["steps"]} == {"cached"}
    assert hepc("verify", store=path).returncode == 0


def test_gc_drops_the_verification_index_entries_of_objects_it_removed(store):
    """The index (verified-index.json) never outgrows the store: entries of removed objects go with them."""
    from hepc.store.verify import read_index, write_index

    path, abandoned = store
    sig = [0, 0, 0, 0]  # well formed; never matches, so no object is trusted by it
    labels = {f"{k.name}/{o.name}" for k in (path / "objects").iterdir() for o in k.iterdir()}
    assert write_index(path, {label: {"dirs": {".": sig}, "files": {"manifest.json": sig}} for label in labels})
    write_index(path, {"cycle/gone-0123456789ab": {"dirs": {".": sig}, "files": {"manifest.json": sig}}})
    shutil.rmtree(path / "records" / "abandoned")
    hepc("gc", "--yes", store=path)
    kept = {label.split("/")[1][-12:] for label in read_index(path)}
    assert kept == object_keys(path) == graph_keys(TINY)


def test_a_spec_named_on_the_command_line_is_kept(store):
    path, abandoned = store
    shutil.rmtree(path / "records" / "abandoned")
    out = hepc("gc", str(abandoned), "--json", store=path)
    assert json.loads(out.stdout)["items"] == []


def test_an_unreadable_record_keeps_everything(store):
    path, _ = store
    shutil.rmtree(path / "records" / "abandoned")
    (record,) = list((path / "records" / "tiny").iterdir())
    (record / "plan.json").write_text("{broken")
    (record / "spec.json").write_text("{broken")
    out = hepc("gc", "--yes", "--json", store=path)
    report = json.loads(out.stdout)
    assert report["keep_all"] and not any(i["kind"] == "object" for i in report["items"])
    assert "keeping every object" in out.stderr
    assert len(object_keys(path)) == len(graph_keys(TINY)) + 5


def test_a_record_without_plan_is_recompiled(store):
    path, abandoned = store
    shutil.rmtree(path / "records" / "abandoned")
    for record in (path / "records" / "tiny").iterdir():
        (record / "plan.json").unlink()
    report = json.loads(hepc("gc", "--json", store=path).stdout)
    assert not report["keep_all"]
    removed = {Path(i["path"]).name[-12:] for i in report["items"] if i["kind"] == "object"}
    assert removed == graph_keys(abandoned) - graph_keys(TINY)


def test_phase_two_puts_back_what_a_run_started_meanwhile_needs(store):
    from hepc.store.gc import collect, garbage, reachable
    from hepc.store.objects import Store

    path, abandoned = store
    saved = path.parent / "saved-records"
    shutil.move(path / "records" / "abandoned", saved)
    s = Store(path)
    items = garbage(s, reachable(s))  # listed while the experiment looked abandoned
    assert sum(i.kind == "object" for i in items) == 5
    shutil.move(saved, path / "records" / "abandoned")  # ...then a run of it starts
    result = collect(s, items)
    assert len(result.restored) == 5
    assert object_keys(path) == graph_keys(TINY) | graph_keys(abandoned)
    assert hepc("verify", store=path).returncode == 0


def test_work_staging_and_leftovers(store):
    from hepc.store.lease import acquire

    path, _ = store
    tiny_cycle = next(p for p in (path / "objects" / "cycle").iterdir())
    committed_key = json.loads((tiny_cycle / "manifest.json").read_text())["key"]
    unreachable, leased = "ab" * 16, "cd" * 16
    for key in (committed_key, unreachable, leased):
        (path / "work" / key).mkdir(parents=True)
        (path / "work" / key / "ckpt.pt").write_bytes(b"0" * 100)
    (path / "tmp" / "t1-c001-0123456789ab.999.abcd1234").mkdir(parents=True)
    lease = acquire(path / "leases" / leased, "cycle x")
    try:
        report = json.loads(hepc("gc", "--yes", "--json", store=path).stdout)
    finally:
        lease.release()
    gone = {(i["kind"], Path(i["path"]).name) for i in report["items"]}
    assert ("work", committed_key) in gone and ("work", unreachable) in gone
    assert ("staging", "t1-c001-0123456789ab.999.abcd1234") in gone
    assert sorted(p.name for p in (path / "work").iterdir()) == [leased]  # a leased step is never touched


def test_a_run_whose_input_vanished_recomputes_it(store, monkeypatch):
    """gc moved an input away after the run looked: the run recomputes it instead of crashing."""
    from hepc.compile.compiler import compile_spec
    from hepc.execute import driver
    from hepc.spec.load import load_spec
    from hepc.store.objects import Store

    path, _ = store
    (prev,) = [p for p in (path / "objects" / "cycle").iterdir() if p.name.startswith("t1-c002-")]
    original = (prev / "model.safetensors").read_bytes()
    real = driver.check_committed

    def check_then_vanish(graph, store_, note=None):
        out = real(graph, store_, note)
        (path / "trash").mkdir(exist_ok=True)
        os.rename(prev, path / "trash" / prev.name)  # gc phase 1, right after the run's check
        return out

    monkeypatch.setattr(driver, "check_committed", check_then_vanish)
    loaded = load_spec(TINY, ["population.cycles=3"])
    driver.execute(compile_spec(loaded), Store(path), loaded.spec.runtime.model_dump(), {}, quiet=True)
    assert (prev / "model.safetensors").read_bytes() == original
    assert (path / "objects" / "cycle").joinpath(prev.name).is_dir()


def test_a_store_without_records_needs_named_specs(store):
    path, _ = store
    shutil.rmtree(path / "records")
    out = hepc("gc", "--yes", store=path, check=False)
    assert out.returncode == 2 and "no run records" in out.stderr
    assert len(object_keys(path)) == len(graph_keys(TINY)) + 5  # nothing was touched
    hepc("gc", str(TINY), "--yes", store=path)
    assert object_keys(path) == graph_keys(TINY)
