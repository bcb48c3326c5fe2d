"""Source identities: stable, cheap, free of absolute paths; text sources resolve and fail clearly."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hepc.data import DataError, source_identity
from hepc.data.identity import list_pystdlib, resolve_text_paths, stdlib_root

PYSTDLIB = {"kind": "pystdlib", "include_tests": False}


def text_cfg(*paths, encoding="utf-8"):
    return {"kind": "text", "paths": list(paths), "encoding": encoding}


@pytest.fixture
def books(tmp_path):
    """A spec directory with data/a.txt, data/b.txt and data/sub/c.txt."""
    data = tmp_path / "spec" / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("alpha\n")
    (data / "b.txt").write_text("beta\n")
    (data / "sub" / "c.txt").write_text("gamma\n")
    return tmp_path / "spec"


# --- pystdlib -------------------------------------------------------------------------------------


def test_pystdlib_identity_is_stable_fast_and_has_no_absolute_path():
    first = source_identity(PYSTDLIB, Path("."))
    start = time.perf_counter()
    second = source_identity(PYSTDLIB, Path("/elsewhere"))
    assert time.perf_counter() - start < 0.3
    assert first == second
    assert set(first) == {"kind", "python", "files", "listing"}
    assert first["python"] == sys.version and first["files"] > 100
    text = json.dumps(first)
    assert str(stdlib_root()) not in text and "/" not in first["listing"]


def test_pystdlib_listing_filters():
    listing = list_pystdlib(False)
    names = [rel for rel, _ in listing]
    assert names == sorted(names) and "os.py" in names and "json/decoder.py" in names
    for rel in names:
        parts = rel.split("/")
        assert rel.endswith(".py")
        assert not {"__pycache__", "site-packages", "idlelib", "test", "tests"} & set(parts), rel
        assert not any(p.startswith("test_") or p.startswith("_sysconfigdata_") for p in parts), rel
    with_tests = {rel for rel, _ in list_pystdlib(True)}
    assert set(names) < with_tests
    assert not any(rel.startswith(("lib2to3/tests/data/", "site-packages/")) for rel in with_tests)
    assert source_identity({"kind": "pystdlib", "include_tests": True}, Path(".")) != source_identity(PYSTDLIB, Path("."))


def test_identity_module_imports_neither_numpy_nor_torch():
    code = "import sys, hepc.data.identity, hepc.data; assert 'numpy' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# --- text -----------------------------------------------------------------------------------------


def test_text_glob_sorted_and_deduplicated(books):
    files = resolve_text_paths(text_cfg("data/**/*.txt", "data/a.txt", "data/b.txt"), books)
    assert [name for name, _ in files] == ["data/a.txt", "data/b.txt", "data/sub/c.txt"]
    ident = source_identity(text_cfg("data/**/*.txt", "data/a.txt"), books)
    assert [f["name"] for f in ident["files"]] == ["data/a.txt", "data/b.txt", "data/sub/c.txt"]
    assert str(books) not in json.dumps(ident)


@pytest.mark.parametrize("paths, bad", [(("data/a.txt", "data/missing.txt"), 1), (("data/*.md", "data/a.txt"), 0)])
def test_text_missing_file_or_empty_glob_names_the_field(books, paths, bad):
    with pytest.raises(DataError) as err:
        source_identity(text_cfg(*paths), books)
    assert err.value.field == f"data.source.paths[{bad}]"
    assert paths[bad] in err.value.message


def test_text_without_paths_is_an_error(books):
    with pytest.raises(DataError) as err:
        source_identity(text_cfg(), books)
    assert err.value.field == "data.source.paths"


def test_text_content_change_changes_identity(books):
    before = source_identity(text_cfg("data/*.txt"), books)
    (books / "data" / "b.txt").write_text("beta, edited\n")
    assert source_identity(text_cfg("data/*.txt"), books) != before


def test_text_identity_survives_a_move(books, tmp_path):
    before = source_identity(text_cfg("data/*.txt"), books)
    moved = shutil.move(str(books), str(tmp_path / "somewhere" / "else"))
    assert source_identity(text_cfg("data/*.txt"), Path(moved)) == before


def test_text_absolute_patterns_are_named_from_their_literal_directory(books, tmp_path):
    ident = source_identity(text_cfg(str(books / "data" / "*.txt"), str(books / "data" / "sub" / "c.txt")), Path("/"))
    assert [f["name"] for f in ident["files"]] == ["a.txt", "b.txt", "c.txt"]
    moved = Path(shutil.move(str(books), str(tmp_path / "moved")))
    assert source_identity(text_cfg(str(moved / "data" / "*.txt"), str(moved / "data" / "sub" / "c.txt")), Path("/")) == ident


def test_text_encoding_is_part_of_identity(books):
    assert source_identity(text_cfg("data/a.txt"), books) != source_identity(text_cfg("data/a.txt", encoding="latin-1"), books)


# --- synthetic and errors ---------------------------------------------------------------------------


def test_synthetic_identity_is_its_config():
    cfg = {"kind": "synthetic", "alphabet_size": 32, "order": 2, "concentration": 0.1, "doc_tokens": 1000, "seed": 0}
    ident = source_identity(cfg, Path("."))
    assert {k: ident[k] for k in cfg} == cfg
    assert source_identity({**cfg, "seed": 1}, Path(".")) != ident


def test_unknown_kind():
    with pytest.raises(DataError) as err:
        source_identity({"kind": "tapes"}, Path("."))
    assert err.value.field == "data.source.kind"
