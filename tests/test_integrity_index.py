"""The signature index (`verified-index.json`): one file read by a run's integrity pass instead of
every manifest. Whatever it holds, a changed object is still found: a rewrite of the same size, a
truncation, a deletion, an edited manifest, a file added; a junk index is ignored and rebuilt; the
index is written whole (a rename) and writers merge rather than overwrite."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from cli_helpers import TINY, tiny_store

from hepc.compile.compiler import compile_path
from hepc.execute.driver import check_committed
from hepc.store import verify
from hepc.store.objects import Store
from hepc.store.verify import INDEX, index_label, read_index, write_index


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    store, _ = tiny_store(tmp_path_factory.mktemp("pristine"))
    return store


@pytest.fixture(scope="module")
def graph():
    return compile_path(TINY).graph


@pytest.fixture
def store(pristine, tmp_path, monkeypatch):
    """A copy of the tiny store whose files are settled (older than verify.SETTLE_NS), so that a
    check records them in the index. The settling window is shortened from 1 s to 0.2 s here (the
    checks in these tests run in this process): the same rule, a shorter wait per test."""
    monkeypatch.setattr(verify, "SETTLE_NS", 200_000_000)
    dst = tmp_path / "store"
    shutil.copytree(pristine, dst)
    shutil.rmtree(dst / "verified")
    (dst / INDEX).unlink(missing_ok=True)
    time.sleep(verify.SETTLE_NS / 1e9 + 0.2)
    return dst


def objects(root: Path) -> list[Path]:
    return sorted(p for p in (root / "objects").glob("*/*") if p.is_dir())


def indexed(store: Path, graph) -> dict:
    """Run the integrity pass once (it builds the index) and return the index's entries."""
    assert check_committed(graph, Store(store), note=lambda text: None) == []
    return read_index(store)


def no_hashing(monkeypatch):
    """Make any check beyond the index fail the test: the index alone must answer."""

    def boom(*args, **kwargs):
        raise AssertionError("an object was checked beyond its index entry")

    monkeypatch.setattr(verify, "_check", boom)


def damaged_after_index(store: Path, graph, change) -> tuple[list[str], list[str]]:
    """Build the index, apply `change` to one object, run the pass again: (labels found, notes)."""
    entries = indexed(store, graph)
    victim = next(p for p in objects(store) if p.parent.name == "cycle")
    assert index_label(victim) in entries
    change(victim)
    notes: list[str] = []
    found = check_committed(graph, Store(store), note=notes.append)
    return found, notes, victim


def test_a_noop_pass_answers_from_the_index_alone(store, graph, monkeypatch):
    entries = indexed(store, graph)
    assert set(entries) == {index_label(p) for p in objects(store)}
    for label, entry in entries.items():
        manifest = json.loads((store / "objects" / label / "manifest.json").read_text())
        assert set(entry["files"]) == set(manifest["files"]) | {"manifest.json"}
        assert "." in entry["dirs"]
    no_hashing(monkeypatch)
    assert check_committed(graph, Store(store), note=lambda text: None) == []


def _same_size_rewrite(victim: Path) -> None:
    f = victim / "model.safetensors"
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert f.stat().st_size == st.st_size


def _truncate(victim: Path) -> None:
    f = victim / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])


def _delete(victim: Path) -> None:
    (victim / "summary.json").unlink()


def _edit_manifest(victim: Path) -> None:
    m = victim / "manifest.json"
    manifest = json.loads(m.read_text())
    manifest["summary"]["edited"] = True
    m.write_text(json.dumps(manifest))


def _add_file(victim: Path) -> None:
    (victim / "extra.bin").write_bytes(b"planted")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (_same_size_rewrite, "does not match its recorded digest"),
        (_truncate, "truncated"),
        (_delete, "summary.json is missing"),
        (_edit_manifest, "manifest.json was altered"),
        (_add_file, "unexpected file"),
    ],
    ids=["same-size-rewrite", "truncated", "deleted", "edited-manifest", "added-file"],
)
def test_a_change_after_the_index_is_found(store, graph, change, problem):
    found, notes, victim = damaged_after_index(store, graph, change)
    assert found == [f"cycle/{victim.name}"]
    assert len(notes) == 1 and problem in notes[0] and victim.name in notes[0]
    assert not victim.exists()  # quarantined
    assert index_label(victim) not in read_index(store)


def _add_nested_file(victim: Path) -> None:
    (victim / "sub").mkdir()
    (victim / "sub" / "planted.bin").write_bytes(b"planted")


def test_a_file_planted_in_a_new_subfolder_is_found(store, graph):
    found, notes, victim = damaged_after_index(store, graph, _add_nested_file)
    assert found == [f"cycle/{victim.name}"]
    assert "unexpected file" in notes[0] and "sub/planted.bin" in notes[0]


@pytest.mark.parametrize(
    "junk",
    [b"", b"not json", b"[]", b'{"format": 1, "objects": []}', b'{"format": 99, "objects": {}}', b"\xff\xfe"],
    ids=["empty", "text", "list", "objects-list", "future-format", "binary"],
)
def test_a_junk_index_is_ignored_and_rebuilt(store, graph, junk):
    (store / INDEX).write_bytes(junk)
    victim = objects(store)[0]
    (victim / "manifest.json").write_text("{}")  # damage is still found with a junk index
    notes: list[str] = []
    assert check_committed(graph, Store(store), note=notes.append) == [f"{victim.parent.name}/{victim.name}"]
    rebuilt = read_index(store)
    assert set(rebuilt) == {index_label(p) for p in objects(store)}
    assert index_label(victim) not in rebuilt


def test_a_forged_or_malformed_entry_is_never_trusted(store, graph):
    entries = indexed(store, graph)
    victim = next(p for p in objects(store) if p.parent.name == "score")
    label = index_label(victim)
    data = {"format": 1, "objects": dict(entries)}
    data["objects"][label] = {"dirs": {".": [0, 0, 0, 0]}, "files": {"manifest.json": ["x"]}}  # malformed
    (store / INDEX).write_text(json.dumps(data))
    assert label not in read_index(store)
    f = next(p for p in victim.iterdir() if p.name != "manifest.json")
    f.write_bytes(f.read_bytes()[:-1])
    assert check_committed(graph, Store(store), note=lambda text: None) == [label]


def test_the_index_is_written_whole_or_not_at_all(store, graph, monkeypatch):
    before = indexed(store, graph)
    path = store / INDEX
    text = path.read_text()

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(verify.json, "dump", fail)
    assert write_index(store, {"cycle/x-000000000000": before[next(iter(before))]}) is False
    assert path.read_text() == text  # the old index is untouched
    assert [p.name for p in store.iterdir() if p.name.startswith(f".{INDEX}")] == []


def test_two_writers_one_after_the_other_merge_and_a_stale_entry_is_never_trusted(store, graph):
    one, two = Store(store), Store(store)
    objs = objects(store)
    half = len(objs) // 2
    for p in objs[:half]:
        assert one.check(p) == []
    for p in objs[half:]:
        assert two.check(p) == []
    one.save_index()
    two.save_index()  # re-reads the index before writing: the first writer's entries survive
    assert set(read_index(store)) == {index_label(p) for p in objs}

    # a writer that loaded the index before an object changed saves after it: the stale entry it
    # carries (or merges) still does not match the changed files, so the change is found
    stale = Store(store)
    stale._sig_index()
    victim = next(p for p in objs if p.parent.name == "cycle")
    _same_size_rewrite(victim)
    stale.save_index()
    late = Store(store)
    late._sig_updates[index_label(victim)] = read_index(store)[index_label(victim)]
    late.save_index()
    assert Store(store).check(victim) != []
    assert stale.check(victim) != []
