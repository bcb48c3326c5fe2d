"""JSON Lines and Parquet text sources: one document per record or row, in the corpus key, checked at validate."""

import itertools
import json
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import spec_file
from typer.testing import CliRunner

from hepc.cli.main import app
from hepc.compile.compiler import compile_spec
from hepc.data import DataError, build_corpus
from hepc.data import records as data_records
from hepc.data import sources as data_sources
from hepc.data.identity import DataFile, source_identity
from hepc.spec.load import load_spec

BYTES = {"kind": "bytes"}


def records(n: int, seed: int = 0) -> list[str]:
    """n distinct texts, each starting with its marker <Rnnnnn>, some with newlines and non-ASCII."""
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "délta", "zeta\n", "ω"]
    return [f"<R{i:05d}> " + " ".join(rng.choice(words, int(rng.integers(2, 30)))) for i in range(n)]


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> None:
    lines = [json.dumps({"id": i, field: t, "meta": {"n": i}}) for i, t in enumerate(texts)]
    lines.insert(3, "   ")  # a blank line is skipped
    lines.insert(5, json.dumps({field: ""}))  # so is an empty text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_parquet(path: Path, texts: list[str], column: str = "text", row_group_size: int = 97) -> None:
    pq.write_table(pa.table({"n": list(range(len(texts))), column: texts}), path, row_group_size=row_group_size)


def build(tmp_path, source, name="c", **sizes):
    sizes = {"train_tokens": 60_000, "val_tokens": 8_000, "heldout_tokens": 8_000, "seed": 0, **sizes}
    meta = build_corpus(source, BYTES, base_dir=tmp_path, out_dir=tmp_path / name, **sizes)
    return meta, {n: np.load(tmp_path / name / f"{n}.npy") for n in ("val", "heldout", "train")}


def documents_of(ids: np.ndarray) -> list[str]:
    """The documents of a split's ids: the texts after each end-of-text (256)."""
    starts = np.flatnonzero(ids == 256).tolist() + [ids.size]
    return [bytes(ids[a + 1 : b].astype(np.uint8)).decode("utf-8", "replace") for a, b in itertools.pairwise(starts)]


# --------------------------------------------------------------------------- building


def test_jsonl_corpus_has_one_document_per_record(tmp_path):
    texts = records(1500)
    write_jsonl(tmp_path / "a.jsonl", texts)
    source = {"kind": "text", "paths": ["a.jsonl"], "documents": {"jsonl": "text"}}
    named = [(name, b"".join(chunks).decode()) for name, chunks in data_sources.iter_named_documents(source, tmp_path)]
    assert [t for _, t in named] == texts  # blank line and empty text skipped, newlines and é kept
    assert named[0][0] == "a.jsonl:line 1" and named[3][0] == "a.jsonl:line 5"  # the blank line 4 counts as a line

    meta, arrays = build(tmp_path, source)
    assert meta["source_documents"] == len(texts)
    assert meta["source_tokens"] == sum(len(t.encode()) + 1 for t in texts)  # every text and one end-of-text each
    by_marker = {t[:8]: t for t in texts}
    for split in ("val", "heldout", "train"):
        docs = documents_of(arrays[split])
        assert meta["documents"][split] == len(docs) >= 50
        whole = [d for d in docs if by_marker.get(d[:8]) == d]
        assert len(whole) >= len(docs) - 1  # each document is one record's text (the last may be cut)
    assert meta["splits"]["val"]["largest"][0]["name"].startswith("a.jsonl:line ")


def test_jsonl_shorthand_reads_field_text_and_other_fields_by_name(tmp_path):
    texts = records(20)
    write_jsonl(tmp_path / "a.jsonl", texts, field="content")
    by_name = {"kind": "text", "paths": ["a.jsonl"], "documents": {"jsonl": "content"}}
    assert [b"".join(c).decode() for _, c in data_sources.iter_named_documents(by_name, tmp_path)] == texts
    with pytest.raises(DataError) as err:
        list(data_sources.iter_named_documents({**by_name, "documents": "jsonl"}, tmp_path))
    assert err.value.field == "data.source.paths[0]"
    assert "'a.jsonl' line 1: has no field 'text'" in err.value.message


def test_parquet_corpus_has_one_document_per_row(tmp_path):
    texts = records(1500, seed=1)
    write_parquet(tmp_path / "a.parquet", texts[:700])
    write_parquet(tmp_path / "b.parquet", texts[700:], row_group_size=1000)
    source = {"kind": "text", "paths": ["*.parquet"], "documents": "parquet"}
    named = [(name, b"".join(chunks).decode()) for name, chunks in data_sources.iter_named_documents(source, tmp_path)]
    assert [t for _, t in named] == texts
    assert named[0][0] == "a.parquet:row 0" and named[700][0] == "b.parquet:row 0"

    meta, arrays = build(tmp_path, source)
    assert meta["source_documents"] == len(texts)
    assert meta["source_tokens"] == sum(len(t.encode()) + 1 for t in texts)
    val = documents_of(arrays["val"])
    assert len({d[:8] for d in val}) == len(val) >= 50  # many rows, each once
    assert {n["name"].split(":")[0] for n in meta["splits"]["train"]["largest"]} <= {"a.parquet", "b.parquet"}


def test_parquet_is_read_a_row_group_at_a_time(tmp_path, monkeypatch):
    """Arrow's allocations while streaming a 1.8 MB file stay a small fraction of it: never the whole column."""
    texts = [f"{i:06d} " + "x" * 100 for i in range(16_000)]
    write_parquet(tmp_path / "big.parquet", texts, row_group_size=250)
    monkeypatch.setattr(data_records, "_BATCH_ROWS", 64)
    file = DataFile("big.parquet", tmp_path / "big.parquet", "data.source.paths[0]")
    base, peak, seen = pa.total_allocated_bytes(), 0, 0
    for row, text in data_records.parquet_rows(file, "text"):
        assert text == texts[row].encode()
        seen += 1
        if row % 50 == 0:
            peak = max(peak, pa.total_allocated_bytes() - base)
    column = sum(len(t) for t in texts)
    assert seen == len(texts)
    assert peak < column / 8, (peak, column)


def test_a_dictionary_encoded_parquet_column_reads_as_text(tmp_path):
    table = pa.table({"text": pa.array(["a b", "c", "a b", "d"]).dictionary_encode()})
    pq.write_table(table, tmp_path / "d.parquet")
    source = {"kind": "text", "paths": ["d.parquet"], "documents": {"parquet": "text"}}
    assert [b"".join(c) for _, c in data_sources.iter_named_documents(source, tmp_path)] == [b"a b", b"c", b"a b", b"d"]


# --------------------------------------------------------------------------- keys




def corpus_key(tmp_path, source: str) -> str:
    compiled = compile_spec(load_spec(spec_file(tmp_path, source)), strict_data=True)
    return next(s.key for s in compiled.graph if s.kind == "corpus")


def test_format_and_field_enter_the_corpus_key(tmp_path):
    texts = records(300)
    lines = [json.dumps({"text": t, "body": t[::-1]}) for t in texts]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    plain = corpus_key(tmp_path, "{kind: text, paths: [a.jsonl]}")
    jsonl = corpus_key(tmp_path, "{kind: text, paths: [a.jsonl], documents: jsonl}")
    assert corpus_key(tmp_path, "{kind: text, paths: [a.jsonl], documents: {jsonl: text}}") == jsonl  # one rule, two spellings
    body = corpus_key(tmp_path, "{kind: text, paths: [a.jsonl], documents: {jsonl: body}}")
    assert len({plain, jsonl, body}) == 3
    assert source_identity({"kind": "text", "paths": ["a.jsonl"], "documents": "jsonl"}, tmp_path)["documents"] == {"jsonl": "text"}

    pq.write_table(pa.table({"text": texts, "body": texts}), tmp_path / "a.parquet")
    parquet = corpus_key(tmp_path, "{kind: text, paths: [a.parquet], documents: parquet}")
    assert corpus_key(tmp_path, "{kind: text, paths: [a.parquet], documents: {parquet: text}}") == parquet
    assert corpus_key(tmp_path, "{kind: text, paths: [a.parquet], documents: {parquet: body}}") != parquet


# --------------------------------------------------------------------------- input checks at validate


def validate(tmp_path, source: str, **data):
    spec = spec_file(tmp_path, source, **data)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert "Traceback" not in result.output
    return result


def bad_jsonl(path: Path, line3: str) -> None:
    path.write_text("\n".join([json.dumps({"text": "one"}), json.dumps({"text": "two"}), line3, json.dumps({"text": "x"})]) + "\n")


@pytest.mark.parametrize(
    "line3, message",
    [
        ('{"text": "three"', "'bad.jsonl' line 3: not JSON (Expecting ',' delimiter: column 17)"),
        ('{"body": "three"}', "'bad.jsonl' line 3: has no field 'text' (its fields: body)"),
        ('{"text": 3}', "'bad.jsonl' line 3: field 'text' is not a string (it is a number)"),
        ('{"text": null}', "'bad.jsonl' line 3: field 'text' is not a string (it is null)"),
        ('["three"]', "'bad.jsonl' line 3: not a JSON object (it is an array)"),
        ('{"text": "\\ud800"}', "'bad.jsonl' line 3: field 'text' is not text: surrogates not allowed"),
    ],
)
def test_bad_jsonl_lines_exit_2_at_validate_naming_file_and_line(tmp_path, line3, message):
    bad_jsonl(tmp_path / "bad.jsonl", line3)
    (tmp_path / "good.jsonl").write_text(json.dumps({"text": "fine " * 4000}) + "\n")
    result = validate(tmp_path, "{kind: text, paths: [good.jsonl, bad.jsonl], documents: jsonl}")
    assert result.exit_code == 2, result.output
    [line] = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert re.match(r"error: .*spec\.yaml:\d+:\d+: data\.source\.paths\[1\]: ", line), line
    assert message in line, line
    # the build reports the same problem, located the same way
    with pytest.raises(DataError) as err:
        build(tmp_path / "x", {"kind": "text", "paths": [str(tmp_path / "bad.jsonl")], "documents": "jsonl"},
              train_tokens=100, val_tokens=10, heldout_tokens=10)
    assert message in err.value.message


def test_good_jsonl_and_parquet_validate(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", records(300))
    write_parquet(tmp_path / "a.parquet", records(300))
    for source in ("{kind: text, paths: [a.jsonl], documents: jsonl}", "{kind: text, paths: [a.parquet], documents: parquet}"):
        result = validate(tmp_path, source)
        assert result.exit_code == 0, result.output


def parquet_cases(tmp_path: Path) -> dict[str, str]:
    pq.write_table(pa.table({"text": ["a", "b", None, "c"]}), tmp_path / "nulls.parquet", row_group_size=2)
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "nocolumn.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "numbers.parquet")
    (tmp_path / "fake.parquet").write_text("this is not parquet at all\n")
    return {
        "nulls.parquet": "'nulls.parquet' row group 1: column 'text' has 1 null value (every row needs a string)",
        "nocolumn.parquet": "'nocolumn.parquet' has no column 'text' (its columns: body)",
        "numbers.parquet": "'numbers.parquet' column 'text' is not a string column (it holds int64)",
        "fake.parquet": "'fake.parquet' is not a Parquet file (",
    }


def test_bad_parquet_files_exit_2_at_validate_naming_the_file(tmp_path):
    for name, message in parquet_cases(tmp_path).items():
        result = validate(tmp_path, f"{{kind: text, paths: [{name}], documents: parquet}}")
        assert result.exit_code == 2, (name, result.output)
        [line] = [x for x in result.output.splitlines() if x.startswith("error:")]
        assert re.match(r"error: .*spec\.yaml:\d+:\d+: data\.source\.paths\[0\]: ", line), line
        assert message in line, line


def test_parquet_nulls_without_statistics_are_found_by_the_build_with_their_row(tmp_path):
    pq.write_table(pa.table({"text": ["a", "b", "c", None]}), tmp_path / "n.parquet", row_group_size=2, write_statistics=False)
    with pytest.raises(DataError) as err:
        list(data_sources.iter_named_documents({"kind": "text", "paths": ["n.parquet"], "documents": "parquet"}, tmp_path))
    assert err.value.message == "'n.parquet' row group 1, row 3: column 'text' is null"


def test_parquet_given_as_plain_text_is_binary_with_a_hint(tmp_path):
    write_parquet(tmp_path / "a.parquet", records(50))
    result = validate(tmp_path, "{kind: text, paths: [a.parquet]}")
    assert result.exit_code == 2
    assert "looks binary" in result.output and "documents: {parquet: COLUMN}" in result.output


def test_parquet_too_small_for_the_splits_is_exact_at_validate(tmp_path):
    texts = records(100)
    write_parquet(tmp_path / "a.parquet", texts)
    tokens = sum(len(t.encode()) + 1 for t in texts)
    result = validate(tmp_path, "{kind: text, paths: [a.parquet], documents: parquet}",
                      train_tokens=tokens - 40, val_tokens=41, heldout_tokens=40)
    assert result.exit_code == 2
    assert f"the 100 documents hold {tokens:,} tokens" in result.output and "data.train_tokens" in result.output
    ok = validate(tmp_path, "{kind: text, paths: [a.parquet], documents: parquet}",
                  train_tokens=tokens - 41, val_tokens=41, heldout_tokens=40)
    assert ok.exit_code == 0, ok.output


def test_validate_checks_jsonl_lines_past_the_binary_check_up_to_its_documented_head(tmp_path):
    """The binary check reads 64 KiB; JSON Lines are checked up to 4 MiB: a bad line at ~236 KB is found."""
    lines = [json.dumps({"text": f"record {i} " * 5}) for i in range(4000)]
    lines[3000] = json.dumps({"body": "no text"})
    text = "\n".join(lines) + "\n"
    (tmp_path / "a.jsonl").write_text(text)
    assert 64 << 10 < text.index('"body"') < 4 << 20
    result = validate(tmp_path, "{kind: text, paths: [a.jsonl], documents: jsonl}")
    assert result.exit_code == 2, result.output
    assert "'a.jsonl' line 3,001: has no field 'text'" in result.output


def test_a_documents_regex_that_backtracks_without_end_stops_with_a_located_error(tmp_path, monkeypatch):
    """`(a+)+$`, the textbook case, is fast under the `regex` engine; `(a+?)+?\\1c` is not, so each search is
    bounded (REGEX_TIMEOUT_S, 10 s; 0.5 s here) and `hepc data` stops with one line at the rule."""
    from hepc.data import sources

    (tmp_path / "a.txt").write_text(("a" * 40 + "\n") * 400)
    textbook = spec_file(tmp_path, "{kind: text, paths: [a.txt], documents: {regex: '(a+)+$'}}")
    started = time.time()  # under Python's `re` engine: 2^40 steps, hours
    done = CliRunner().invoke(app, ["data", str(textbook), "--store", str(tmp_path / "store")])
    assert time.time() - started < 30 and "Traceback" not in done.output
    monkeypatch.setattr(sources, "REGEX_TIMEOUT_S", 0.5)
    spec = spec_file(tmp_path, "{kind: text, paths: [a.txt], documents: {regex: '(a+?)+?\\1c'}}")
    started = time.time()
    result = CliRunner().invoke(app, ["data", str(spec), "--store", str(tmp_path / "store")])
    assert time.time() - started < 30
    assert result.exit_code == 2, result.output
    assert "data.source.documents.regex: the pattern took more than 0.5 s" in result.output, result.output
    assert "Traceback" not in result.output


def test_a_deeply_nested_jsonl_record_is_one_located_error(tmp_path):
    nested = '{"text": "ok", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "first"}) + "\n" + nested + "\n")
    result = validate(tmp_path, "{kind: text, paths: [a.jsonl], documents: jsonl}")
    assert result.exit_code == 2, result.output
    assert "'a.jsonl' line 2: is nested too deeply to read" in result.output
    assert "Traceback" not in result.output and "RecursionError" not in result.output


def test_a_bad_jsonl_line_past_the_checked_head_is_found_by_the_build_with_the_same_message(tmp_path, monkeypatch):
    from hepc.data import checks

    lines = [json.dumps({"text": f"record {i} " * 5}) for i in range(2000)]
    lines[1500] = json.dumps({"body": "no text"})
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(checks, "HEAD", 4096)
    monkeypatch.setattr(checks, "JSONL_HEAD", 8192)  # validate reads lines 1 to ~150 only
    monkeypatch.setattr(checks, "EXACT_ROOM_BYTES", 0)  # ... and does not count every document's tokens
    assert validate(tmp_path, "{kind: text, paths: [a.jsonl], documents: jsonl}").exit_code == 0
    spec = spec_file(tmp_path, "{kind: text, paths: [a.jsonl], documents: jsonl}")
    result = CliRunner().invoke(app, ["data", str(spec), "--store", str(tmp_path / "store")])
    assert result.exit_code == 2, result.output
    assert re.search(r"spec\.yaml:\d+:\d+: data\.source\.paths\[0\]: 'a\.jsonl' line 1,501: has no field 'text'", result.output)
    assert not (tmp_path / "store").exists()
