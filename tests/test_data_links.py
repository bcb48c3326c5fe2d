"""A data folder as a system package ships it: `%`-separated text files, binary `.dat` indexes beside
them, and `.u8` files that are symbolic links to the texts. `exclude` removes what it names (never a
link's target), and a file reached under several names is read once under a name that depends
neither on the order the folder lists its entries nor on where the folder lives."""

from __future__ import annotations

import glob
import os
import random
import shutil
from pathlib import Path

import pytest
from data_helpers import spec_file

from hepc.data import sources as data_sources
from hepc.data.checks import input_problems
from hepc.data.identity import list_data_files, source_identity
from hepc.spec.load import load_spec

TEXTS = ("art", "computers", "people", "science", "wisdom")


def package_folder(folder: Path, entries: int = 40) -> Path:
    folder.mkdir(parents=True)
    rng = random.Random(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "time", "flies", "like", "an", "arrow"]
    for name in TEXTS:
        text = "\n%\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) for _ in range(entries))
        (folder / name).write_text(text + "\n")
        (folder / f"{name}.dat").write_bytes(bytes(rng.randrange(256) for _ in range(512)))
        os.symlink(name, folder / f"{name}.u8")
    return folder


def names(cfg: dict, base: Path) -> list[str]:
    return [f.name for f in list_data_files(cfg, base)]


SOURCE = {"kind": "text", "paths": ["data/*"], "exclude": ["data/*.dat", "data/*.u8"], "documents": {"separator": "%"}}


def test_excluding_links_removes_the_links_and_never_their_targets(tmp_path):
    package_folder(tmp_path / "data")
    assert names(SOURCE, tmp_path) == [f"data/{n}" for n in TEXTS]
    spec = spec_file(tmp_path, '{kind: text, paths: ["data/*"], exclude: ["data/*.dat", "data/*.u8"], '
                               'documents: {separator: "%"}}', train_tokens=3000, val_tokens=600, heldout_tokens=300)
    errors, _ = input_problems(load_spec(str(spec), []).spec, tmp_path)
    assert errors == []
    only_texts = {**SOURCE, "exclude": ["data/*.dat"], "paths": ["data/*.u8", "data/*"]}
    assert names(only_texts, tmp_path) == [f"data/{n}" for n in TEXTS]  # the target's own name, not the link's


def test_a_file_reached_through_a_link_keeps_its_name_whatever_the_listing_order(tmp_path, monkeypatch):
    package_folder(tmp_path / "data")
    cfg = {**SOURCE, "exclude": ["data/*.dat"]}  # the links stay listed: each text is reached twice
    expected = source_identity(cfg, tmp_path)
    assert [f["name"] for f in expected["files"]] == [f"data/{n}" for n in TEXTS]
    real_glob = glob.glob
    for seed in range(3):  # another filesystem lists entries in another order
        def shuffled(*args, seed=seed, **kwargs):
            found = real_glob(*args, **kwargs)
            random.Random(seed).shuffle(found)
            return found

        monkeypatch.setattr(glob, "glob", shuffled)
        assert source_identity(cfg, tmp_path) == expected
    only_links = {**SOURCE, "paths": ["data/*.u8"], "exclude": []}
    first = source_identity(only_links, tmp_path)
    monkeypatch.setattr(glob, "glob", lambda *a, **k: list(reversed(real_glob(*a, **k))))
    assert source_identity(only_links, tmp_path) == first


def test_the_same_folder_copied_elsewhere_keeps_its_identity(tmp_path):
    package_folder(tmp_path / "a" / "data")
    shutil.copytree(tmp_path / "a", tmp_path / "b" / "deeper", symlinks=True)  # cp -a
    for cfg in ({**SOURCE, "exclude": ["data/*.dat"]}, SOURCE):
        assert source_identity(cfg, tmp_path / "a") == source_identity(cfg, tmp_path / "b" / "deeper")
    absolute = {**SOURCE, "paths": [str(tmp_path / "a" / "data" / "*")], "exclude": ["data/*.dat", "data/*.u8"]}
    moved = {**absolute, "paths": [str(tmp_path / "b" / "deeper" / "data" / "*")]}
    assert source_identity(absolute, tmp_path / "a") == source_identity(moved, tmp_path / "b" / "deeper")


def test_a_file_read_once_under_a_link_gives_its_documents_once(tmp_path):
    package_folder(tmp_path / "data", entries=5)
    cfg = {**SOURCE, "exclude": ["data/*.dat"]}
    docs = [name for name, chunks in data_sources.iter_named_documents(cfg, tmp_path) if b"".join(chunks)]
    assert len(docs) == 5 * len(TEXTS) and not [d for d in docs if ".u8" in d]


@pytest.mark.parametrize("exclude", [["data/*.u8"], ["data/art.u8"]])
def test_excluding_a_link_by_name_keeps_every_text(tmp_path, exclude):
    package_folder(tmp_path / "data")
    cfg = {**SOURCE, "exclude": ["data/*.dat", *exclude]}
    assert names(cfg, tmp_path) == [f"data/{n}" for n in TEXTS]


# --------------------------------------------------------------------------- duplicates, rules, messages


def _spec(tmp_path: Path, source: str) -> Path:
    return spec_file(tmp_path, source, train_tokens=3000, val_tokens=600, heldout_tokens=300)


def _problems(tmp_path: Path, source: str):
    errors, warnings = input_problems(load_spec(str(_spec(tmp_path, source)), []).spec, tmp_path)
    return [str(e) for e in errors], [str(w) for w in warnings]


def test_copied_files_are_reported_and_their_documents_count_once(tmp_path):
    import json
    import subprocess
    import sys

    from cli_helpers import ROOT

    package_folder(tmp_path / "pkg")
    shutil.copytree(tmp_path / "pkg", tmp_path / "data", symlinks=False)  # cp -rL: each link now a copy
    for dat in (tmp_path / "data").glob("*.dat"):
        dat.unlink()

    def report(paths: str) -> dict:
        spec = _spec(tmp_path, f'{{kind: text, paths: ["{paths}"], documents: {{separator: "%"}}}}')
        out = subprocess.run([sys.executable, "-m", "hepc.cli", "data", str(spec), "--json", "--store",
                              str(tmp_path / "store")], capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["corpora"][0]

    both = report("data/*")
    assert both["source"]["duplicate_files"] == [[f"data/{n}", f"data/{n}.u8"] for n in TEXTS]
    assert both["source"]["duplicates"]["documents"] == 40 * len(TEXTS)
    once = report("data/[a-z]*[a-z]")  # the texts alone, no copies
    assert {k: v["documents"] for k, v in both["splits"].items()} == {k: v["documents"] for k, v in once["splits"].items()}


@pytest.mark.parametrize("rule", ['{separator: "%%"}', '{separator: "% "}', '{regex: "^%$"}'])
def test_a_documents_rule_that_never_matches_is_named(tmp_path, rule):
    package_folder(tmp_path / "data")
    errors, warnings = _problems(tmp_path, f'{{kind: text, paths: ["data/*"], exclude: ["data/*.dat", "data/*.u8"], documents: {rule}}}')
    assert errors == []
    (warning,) = [w for w in warnings if "matches nothing" in w]
    assert "of any of the 5 files" in warning and "'data/art'" in warning and "one document" in warning
    _, fine = _problems(tmp_path, '{kind: text, paths: ["data/*"], exclude: ["data/*.dat", "data/*.u8"], documents: {separator: "%"}}')
    assert not [w for w in fine if "matches nothing" in w]


def test_messages_a_user_can_act_on(tmp_path):
    package_folder(tmp_path / "data")
    errors, _ = _problems(tmp_path, '{kind: text, paths: ["data/*"], exclude: ["data/*.u8"], documents: {separator: "%"}}')
    assert len(errors) == 1  # one line for the five .dat indexes, with the exclude that leaves them out
    assert "5 files look binary" in errors[0] and "exclude: ['data/*.dat']" in errors[0]
    spec = _spec(tmp_path, '{kind: text, paths: ["data/*"], documents: {separator: "%\\n"}}')
    from hepc.errors import SpecError

    with pytest.raises(SpecError) as e:
        load_spec(str(spec), [])
    (problem,) = e.value.problems
    assert problem.path == "data.source.documents.separator" and "without its line end" in problem.message
    assert "Documents" not in str(problem)  # no internal class names
    absolute = f'{{kind: text, paths: ["{tmp_path}/data/*"], exclude: ["*.dat", "*.u8"], documents: {{separator: "%"}}}}'
    _, warnings = _problems(tmp_path, absolute)
    assert any("relative to the spec's folder even when `paths` are absolute" in w for w in warnings)


def test_the_schema_names_every_source_kind_and_no_future_version():
    import json

    from hepc.spec.schema import spec_schema

    text = json.dumps(spec_schema())
    assert "pystdlib, text, synthetic or tokens" in text and "added_in" not in text


def test_the_room_check_counts_what_the_run_will_find(tmp_path):
    """Separated documents: validate reads them as the corpus will (within 20 %: here exactly)."""
    from hepc.data.sources import iter_named_documents

    package_folder(tmp_path / "data")
    source = '{kind: text, paths: ["data/*"], exclude: ["data/*.dat", "data/*.u8"], documents: {separator: "%"}}'
    cfg = load_spec(str(_spec(tmp_path, source)), []).spec.data.source.model_dump()
    docs = [b"".join(c) for _, c in iter_named_documents(cfg, tmp_path)]
    tokens = sum(len(d) + 1 for d in set(docs) if d)  # bytes and one end-of-text per distinct document
    spec = spec_file(tmp_path, source, train_tokens=int(tokens * 1.05), val_tokens=600, heldout_tokens=300)
    errors, _ = input_problems(load_spec(str(spec), []).spec, tmp_path)
    (error,) = [str(e) for e in errors]
    assert "data.train_tokens" in error and f"hold {tokens:,} tokens" in error
    fits = spec_file(tmp_path, source, train_tokens=int(tokens * 0.8), val_tokens=600, heldout_tokens=300)
    assert input_problems(load_spec(str(fits), []).spec, tmp_path)[0] == []


def test_a_bpe_corpus_too_small_for_its_splits_is_a_located_error_of_the_run(tmp_path):
    from cli_helpers import hepc

    package_folder(tmp_path / "data", entries=20)
    spec = spec_file(tmp_path, '{kind: text, paths: ["data/*"], exclude: ["data/*.dat", "data/*.u8"], '
                               'documents: {separator: "%"}}', train_tokens=40000, val_tokens=600, heldout_tokens=300)
    spec.write_text(spec.read_text().replace("tokenizer: bytes", "tokenizer: {kind: bpe, vocab_size: 300}"))
    out = hepc("run", str(spec), store=tmp_path / "store", check=False)
    assert out.returncode == 2
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: {spec}:") and "data.train_tokens: the source has only" in line
