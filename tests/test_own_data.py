"""A user's own text corpus: document rules (`documents`, `exclude`) and the input checks of validate/plan."""

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_helpers import spec_file

from hepc.compile.compiler import compile_spec
from hepc.data import DataError, build_corpus
from hepc.data import sources as data_sources
from hepc.data.checks import input_problems, loaded_input_problems
from hepc.data.identity import source_identity
from hepc.data.tokenizers import BytesTokenizer
from hepc.errors import SpecError
from hepc.spec.load import load_spec

BYTES = {"kind": "bytes"}


def fortune_folder(folder: Path, files: int = 20, entries: int = 200) -> dict[str, str]:
    """`files` files of `entries` %-separated entries each (a trailing separator, blank lines kept); entry text by marker."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    words = ["alpha", "beta", "gamma", "delta", "épsilon", "zeta"]
    texts = {}
    for f in range(files):
        lines = []
        for e in range(entries):
            marker = f"<F{f:02d}E{e:03d}>"
            body = " ".join(rng.choice(words, int(rng.integers(3, 15))))
            texts[marker] = f"{marker} {body}\nsecond line\n"
            lines.append(texts[marker] + "%\n")
        (folder / f"fortunes{f:02d}.txt").write_text("".join(lines), encoding="utf-8")
    return texts


def build(tmp_path, source, base_dir, name="c", **sizes):
    sizes = {"train_tokens": 150_000, "val_tokens": 20_000, "heldout_tokens": 20_000, "seed": 0, **sizes}
    out = tmp_path / name
    meta = build_corpus(source, BYTES, base_dir=base_dir, out_dir=out, **sizes)
    assert json.loads((out / "meta.json").read_text())["documents"] == meta["documents"]
    return meta, {n: np.load(out / f"{n}.npy") for n in ("val", "heldout", "train")}


def markers(ids) -> list[str]:
    return re.findall(r"<F(\d\d)E(\d\d\d)>", BytesTokenizer().decode(ids))


# --------------------------------------------------------------------------- 1. document rules


def test_percent_separated_files_give_thousands_of_documents_in_every_split(tmp_path):
    texts = fortune_folder(tmp_path / "data")
    source = {"kind": "text", "paths": ["data/*.txt"], "documents": {"separator": "%"}}
    meta, arrays = build(tmp_path, source, tmp_path, train_tokens=250_000)

    assert meta["source_documents"] == 20 * 200 == len(texts)
    utf8 = sum(len(t.encode()) for t in texts.values())
    assert meta["source_pieces"] == len(texts)  # every entry is shorter than max_doc_tokens: none is cut
    assert meta["source_tokens"] == utf8 + len(texts)  # all the text, one end-of-text per entry: nothing dropped
    for split in ("val", "heldout"):
        found = markers(arrays[split])
        assert meta["documents"][split] == len(found) >= 200, (split, meta["documents"])
        assert len({f for f, _ in found}) == 20  # drawn from every file
        assert "%" not in BytesTokenizer().decode(arrays[split])  # separator lines belong to no document
    assert meta["documents"]["train"] >= 2_500
    assert sum(meta["documents"].values()) >= 0.85 * len(texts)  # 270k of its ~304k tokens: most of it
    # each whole entry appears exactly as written (split ends aside): the document is the entry
    ids = arrays["train"]
    starts = np.flatnonzero(ids == 256).tolist() + [ids.size]
    entries = [bytes(ids[a + 1 : b].astype(np.uint8)).decode() for a, b in itertools.pairwise(starts)]
    assert sum(texts[e[:9]] == e for e in entries) >= len(entries) - 1 == meta["documents"]["train"] - 1
    assert meta["tokens_dropped"] < 3 * max(len(t) for t in texts.values())
    total = sum(meta["documents"].values())
    print("documents per split:", meta["documents"], "of", meta["source_documents"], "total", total)


def test_default_rule_is_one_document_per_file(tmp_path):
    fortune_folder(tmp_path / "data", files=20, entries=20)
    meta, _ = build(tmp_path, {"kind": "text", "paths": ["data/*.txt"]}, tmp_path, train_tokens=8_000, val_tokens=2_000, heldout_tokens=1_000)
    assert meta["source_documents"] == 20


def test_regex_rule_splits_at_blank_lines(tmp_path):
    (tmp_path / "a.txt").write_text("one\nstill one\n\n\n two \n  \nthree\n\n")
    source = {"kind": "text", "paths": ["a.txt"], "documents": {"regex": r"\n\s*\n"}}
    docs = list(data_sources.iter_documents(source, tmp_path, 0))
    assert docs == [b"one\nstill one", b" two ", b"three"]  # one file: its documents in file order
    named = [(name, b"".join(chunks)) for name, chunks in data_sources.iter_named_documents(source, tmp_path)]
    assert named == [("a.txt#0", b"one\nstill one"), ("a.txt#1", b" two "), ("a.txt#2", b"three")]


def test_separator_rule_skips_empty_documents_and_keeps_line_endings(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"%\r\nfirst\r\n%\r\n%\nsecond\n%%\nthird\n%")
    source = {"kind": "text", "paths": ["a.txt"], "documents": {"separator": "%"}}
    named = [b"".join(chunks) for _, chunks in data_sources.iter_named_documents(source, tmp_path)]
    assert named == [b"first\r\n", b"second\n%%\nthird\n"]


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_document_spanning_read_chunks_comes_out_whole(tmp_path, monkeypatch, chunk):
    long_doc = "".join(f"line {i} of the long entry\n" for i in range(400))  # ~10 KB, many chunks
    entries = [f"entry {i:02d}\n" for i in range(20)]
    text = "short\n%\n" + long_doc + "%\nx\n%\n" + long_doc.upper() + "".join("%\n" + e for e in entries)
    (tmp_path / "a.txt").write_text(text)
    source = {"kind": "text", "paths": ["a.txt"], "documents": {"separator": "%"}}
    monkeypatch.setattr(data_sources, "_CHUNK", chunk)
    monkeypatch.setattr(data_sources, "_HOLD", 5)  # separators are found across chunk ends all the same
    expected = [d.encode() for d in ("short\n", long_doc, "x\n", long_doc.upper(), *entries)]
    got = [b"".join(chunks) for _, chunks in data_sources.iter_named_documents(source, tmp_path)]
    assert got == expected
    # and the corpus built with tiny chunks is the corpus built with the default ones (whatever split the
    # two long documents fill, the entries leave room for the others)
    sizes = {"train_tokens": 60, "val_tokens": 40, "heldout_tokens": 20}
    small, small_arrays = build(tmp_path, source, tmp_path, "small", **sizes)
    monkeypatch.undo()
    big, big_arrays = build(tmp_path, source, tmp_path, "big", **sizes)
    assert small["source_documents"] == big["source_documents"] == 24
    for name in small_arrays:
        assert np.array_equal(small_arrays[name], big_arrays[name])


def test_regex_split_matches_a_whole_file_split_for_every_chunking(monkeypatch):
    rng = np.random.default_rng(0)
    pieces = ["a", "b\n", "\n", "\n\n", " \n", "é", "%\n", "%", "\r\n", "word "]
    pattern = data_sources.document_splitter({"documents": {"regex": r"\n\s*\n"}})
    separator = data_sources.document_splitter({"documents": {"separator": "%"}})
    monkeypatch.setattr(data_sources, "_HOLD", 40)
    for _ in range(200):
        text = "".join(rng.choice(pieces, int(rng.integers(0, 40))))
        data = text.encode()
        for chunk in (1, 3, 17, 4096):
            chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
            for compiled, whole in ((pattern, r"\n\s*\n"), (separator, r"(?m)^%(?:\r?\n|\Z)")):
                got = [b"".join(d).decode() for d in data_sources._split_documents(iter(chunks), compiled)]
                assert got == [d for d in re.split(whole, text) if d], (text, chunk, whole)


def test_exclude_removes_files_and_changes_the_key(tmp_path):
    fortune_folder(tmp_path / "data", files=4, entries=3)
    (tmp_path / "data" / "old").mkdir()
    (tmp_path / "data" / "old" / "x.txt").write_text("old\n")
    every = {"kind": "text", "paths": ["data/**/*.txt"]}
    some = {**every, "exclude": ["data/fortunes0[01].txt", "data/old"]}
    names = [name for name, chunks in data_sources.iter_named_documents(some, tmp_path) if b"".join(chunks)]
    assert names == ["data/fortunes02.txt", "data/fortunes03.txt"]
    assert source_identity(some, tmp_path) != source_identity(every, tmp_path)
    with pytest.raises(DataError) as err:
        source_identity({**every, "exclude": ["data/**"]}, tmp_path)
    assert err.value.field == "data.source.exclude"


def test_default_rule_keeps_the_identity_and_a_rule_changes_it(tmp_path):
    fortune_folder(tmp_path / "data", files=2, entries=3)
    plain = {"kind": "text", "paths": ["data/*.txt"], "encoding": "utf-8"}
    explicit = {**plain, "documents": "file", "exclude": []}  # what a spec's model_dump gives
    assert source_identity(explicit, tmp_path) == source_identity(plain, tmp_path)
    assert set(source_identity(plain, tmp_path)) == {"kind", "encoding", "files"}  # as before documents rules
    by_sep = source_identity({**plain, "documents": {"separator": "%"}}, tmp_path)
    by_regex = source_identity({**plain, "documents": {"regex": "\n%\n"}}, tmp_path)
    assert len({json.dumps(x, sort_keys=True) for x in (source_identity(plain, tmp_path), by_sep, by_regex)}) == 3




def test_corpus_key_changes_with_a_rule_only(tmp_path):
    fortune_folder(tmp_path / "data", files=3, entries=100)

    def corpus_key(source):
        compiled = compile_spec(load_spec(spec_file(tmp_path, source)), strict_data=True)
        return next(s.key for s in compiled.graph.steps.values() if s.kind == "corpus")

    plain = corpus_key("{kind: text, paths: [data/*.txt]}")
    assert corpus_key("{kind: text, paths: [data/*.txt], documents: file, exclude: []}") == plain
    assert corpus_key("{kind: text, paths: [data/*.txt], documents: {separator: '%'}}") != plain


@pytest.mark.parametrize(
    "rule, field",
    [("{regex: '('}", "data.source.documents.regex"), ("{regex: 'x*'}", "data.source.documents.regex")],
)
def test_bad_regex_is_a_located_spec_error(tmp_path, rule, field):
    with pytest.raises(SpecError) as err:
        load_spec(spec_file(tmp_path, f"{{kind: text, paths: [a.txt], documents: {rule}}}"))
    [problem] = err.value.problems
    assert problem.path == field and re.match(r".*spec\.yaml:\d+:\d+$", problem.where)


# --------------------------------------------------------------------------- 2. input checks


def problems_of(tmp_path, source: str, **data):
    """(errors, warnings) of the input checks, without the warning that a whole file could fill a split
    (these specs' splits are small on purpose; tests/test_cli_data.py checks that warning)."""
    loaded = load_spec(spec_file(tmp_path, source, **data))
    errors, warnings = loaded_input_problems(loaded)
    return errors, [w for w in warnings if w.path != "data.source.documents"]


def only(problems, path_prefix):
    assert len(problems) == 1, problems
    problem = problems[0]
    assert problem.path.startswith(path_prefix), problem
    assert re.match(r".*spec\.yaml:\d+:\d+$", problem.where), problem  # located in the spec file
    return problem


def test_good_folder_has_no_problems(tmp_path):
    fortune_folder(tmp_path / "data", files=3, entries=100)
    assert problems_of(tmp_path, "{kind: text, paths: [data/*.txt], documents: {separator: '%'}}") == ([], [])


def test_glob_matching_nothing(tmp_path):
    fortune_folder(tmp_path / "data", files=2, entries=100)
    errors, _ = problems_of(tmp_path, "{kind: text, paths: [data/*.txt, data/*.md]}")
    assert "'data/*.md' matched no files" in only(errors, "data.source.paths[1]").message


def test_path_that_is_a_directory(tmp_path):
    fortune_folder(tmp_path / "data", files=2, entries=100)
    errors, _ = problems_of(tmp_path, "{kind: text, paths: [data]}")
    assert "is a directory" in only(errors, "data.source.paths[0]").message


@pytest.mark.parametrize("content, encoding, reason", [
    (b"text\x00\x01\x02 more", "utf-8", "NUL character"),
    (b"caf\xe9 au lait", "utf-8", "cannot decode byte 3"),
    ("plain text".encode("utf-16"), "utf-8", "cannot decode"),
])
def test_binary_file_is_named(tmp_path, content, encoding, reason):
    fortune_folder(tmp_path / "data", files=2, entries=100)
    (tmp_path / "data" / "blob.txt").write_bytes(content)
    errors, _ = problems_of(tmp_path, f"{{kind: text, paths: ['data/*.txt'], encoding: {encoding}}}")
    problem = only(errors, "data.source.paths[0]")
    assert "'data/blob.txt' looks binary" in problem.message and reason in problem.message


def test_utf16_text_is_not_binary(tmp_path):
    (tmp_path / "a.txt").write_bytes(("words and more words\n" * 2000).encode("utf-16"))
    assert problems_of(tmp_path, "{kind: text, paths: [a.txt], encoding: utf-16}") == ([], [])


def test_empty_files_warn_and_all_empty_is_an_error(tmp_path):
    fortune_folder(tmp_path / "data", files=2, entries=100)
    (tmp_path / "data" / "zero.txt").write_bytes(b"")
    errors, warnings = problems_of(tmp_path, "{kind: text, paths: ['data/*.txt']}")
    assert errors == []
    assert "'data/zero.txt' is empty" in only(warnings, "data.source.paths[0]").message
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_bytes(b"")
    (tmp_path / "empty" / "b.txt").write_bytes(b"")
    errors, warnings = problems_of(tmp_path, "{kind: text, paths: ['empty/*.txt']}")
    assert "every file is empty" in only(errors, "data.source.paths").message
    assert len(warnings) == 2 and all("is empty" in w.message for w in warnings)


def test_unknown_encoding(tmp_path):
    fortune_folder(tmp_path / "data", files=2, entries=100)
    errors, _ = problems_of(tmp_path, "{kind: text, paths: ['data/*.txt'], encoding: klingon}")
    assert "unknown encoding 'klingon'" in only(errors, "data.source.encoding").message


def test_exclude_removing_everything_and_matching_nothing(tmp_path):
    fortune_folder(tmp_path / "data", files=2, entries=100)
    errors, _ = problems_of(tmp_path, "{kind: text, paths: ['data/*.txt'], exclude: ['data/*']}")
    assert "removes every file" in only(errors, "data.source.exclude").message
    errors, warnings = problems_of(tmp_path, "{kind: text, paths: ['data/*.txt'], exclude: ['nothing/*.txt']}")
    assert errors == []
    assert "matches nothing" in only(warnings, "data.source.exclude[0]").message


def test_corpus_too_small_for_its_splits(tmp_path):
    (tmp_path / "a.txt").write_text("x" * 5_000)
    errors, _ = problems_of(tmp_path, "{kind: text, paths: [a.txt]}")
    message = only(errors, "data.train_tokens").message
    assert "the data file holds 5,010 tokens" in message and "need 14,000" in message  # 5,000 bytes in 10 pieces of <= 512
    errors, _ = problems_of(tmp_path, "{kind: text, paths: [a.txt], documents: {separator: '%'}}", train_tokens=200_000)
    assert "the document holds 5,010 tokens" in only(errors, "data.train_tokens").message  # read: exact (10 pieces)
    (tmp_path / "a.txt").write_text("x" * 14_000)
    assert problems_of(tmp_path, "{kind: text, paths: [a.txt]}") == ([], [])


def test_checks_write_nothing(tmp_path):
    fortune_folder(tmp_path / "data", files=2, entries=100)
    spec = spec_file(tmp_path, "{kind: text, paths: ['data/*.txt']}")
    before = sorted(p for p in tmp_path.rglob("*"))
    errors, warnings = input_problems(load_spec(spec).spec, tmp_path)
    assert (errors, [w for w in warnings if w.path != "data.source.documents"]) == ([], [])
    assert sorted(p for p in tmp_path.rglob("*")) == before


CHILD = """
import sys
from pathlib import Path
from hepc.data.corpus import build_corpus
base, rule = Path(sys.argv[1]), {"separator": {"separator": "%"}, "regex": {"regex": "\\\\n%\\\\n"}}[sys.argv[2]]
meta = build_corpus({"kind": "text", "paths": ["*.txt"], "documents": rule}, {"kind": "bytes"}, train_tokens=12_000,
                    val_tokens=3_000, heldout_tokens=1_000, seed=0, base_dir=base, out_dir=base / "out")
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]
print(meta["source_documents"], meta["source_tokens"], hwm)
"""


@pytest.mark.parametrize("rule", ["separator", "regex"])
def test_split_rules_read_a_big_file_in_bounded_memory(tmp_path, rule):
    """A 100 MB file holding one 100 MB document between two small ones adds far less than its size to the peak RSS."""
    peaks = {}
    for case, size in (("baseline", 10_000), ("big", 100 << 20)):
        folder = tmp_path / case
        folder.mkdir()
        for i in range(100):
            (folder / f"small{i:03d}.txt").write_text(f"document {i:03d} " * 20 + "\n%\n" + "y" * 300)
        with open(folder / "big.txt", "wb") as f:
            f.write(b"first\n%\n")
            f.write(b"x" * 1_000 + b"\n" * (size - 1_000))
            f.write(b"%\nlast\n")
        child = [sys.executable, "-c", CHILD, str(folder), rule]
        out = subprocess.run(child, check=False, capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=300)
        assert out.returncode == 0, out.stderr
        documents, source_tokens, peak_kib = map(int, out.stdout.split()[-3:])
        assert documents == 203 and source_tokens > size, (case, documents, source_tokens)  # read to its end, split
        peaks[case] = peak_kib / 1024
    assert peaks["big"] - peaks["baseline"] < 60, peaks
