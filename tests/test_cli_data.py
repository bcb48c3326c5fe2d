"""`hepc data`: the corpus as it will be (dry pass, nothing written) or was built (read from the store),
and the one-line summary `hepc plan` prints."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from data_helpers import TINY, spec_file
from typer.testing import CliRunner

from hepc.cli.main import app
from hepc.compile.compiler import compile_spec
from hepc.spec.load import load_spec
from hepc.store.objects import Store

SPLITS = ("val", "heldout", "train")


def percent_folder(folder: Path, files: int = 20, entries: int = 200) -> int:
    """`files` files of `entries` %-separated entries each; the entries' UTF-8 bytes in all."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    words = ["alpha", "beta", "gamma", "delta", "épsilon", "zeta"]
    total = 0
    for f in range(files):
        entries_text = [f"<F{f:02d}E{e:03d}> " + " ".join(rng.choice(words, int(rng.integers(3, 25)))) + "\n" for e in range(entries)]
        total += sum(len(t.encode()) for t in entries_text)
        (folder / f"quotes{f:02d}.txt").write_text("%\n".join(entries_text) + "%\n", encoding="utf-8")
    return total




def hepc(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def data_json(spec: Path, store: Path) -> dict:
    result = hepc("data", str(spec), "--store", str(store), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def commit_corpus(spec: Path, store_path: Path) -> dict:
    """Build the spec's corpus into the store as `hepc run` would (the step's own body), without training."""
    from hepc.steps import RunContext, body

    step = next(s for s in compile_spec(load_spec(spec)).graph if s.kind == "corpus")
    store = Store(store_path)
    store.open_for_writing()
    staged = store.stage(step)
    body("corpus")(step, {}, staged, staged, RunContext(runtime={}))
    meta = json.loads((staged / "meta.json").read_text())
    store.commit(step, staged, {}, {})
    return meta


def test_a_percent_separated_folder_shows_thousands_of_documents_and_nothing_dropped_beyond_cut_pieces(tmp_path):
    utf8 = percent_folder(tmp_path / "quotes")
    spec = spec_file(tmp_path, "{kind: text, paths: ['quotes/*.txt'], documents: {separator: '%'}}",
                     train_tokens=200_000, val_tokens=20_000, heldout_tokens=20_000)
    store = tmp_path / "store"
    report = data_json(spec, store)
    assert not store.exists()  # a dry pass writes nothing to the store
    [corpus] = report["corpora"]
    assert corpus["origin"] == "dry pass"
    src, splits = corpus["source"], corpus["splits"]
    assert src["documents"] == 20 * 200 and src["pieces"] == src["documents"]  # every entry is a document, none cut
    assert src["tokens"] == utf8 + src["documents"]  # all the text and one end-of-text per entry
    for name in ("val", "heldout"):
        assert splits[name]["documents"] >= 200 and splits[name]["source_documents"] >= 200, (name, splits[name])
        assert splits[name]["tokens"] == 20_000
    assert splits["train"]["documents"] >= 1_500
    biggest = max(e["tokens"] for s in splits.values() for e in s["largest"])
    for name in SPLITS:
        assert 0 <= splits[name]["tokens_dropped"] < biggest + 1  # at most the rest of the one piece cut at its end
        assert splits[name]["bytes"] > 0 and 0.9 < splits[name]["bytes_per_token"] < 1.1
    assert src["tokens_dropped"] == sum(s["tokens_dropped"] for s in splits.values())
    assert src["tokens_in_splits"] == 200_000 + 20_000
    assert src["tokens_in_splits"] + src["tokens_dropped"] + src["tokens_unused"] == src["tokens"]
    top = splits["val"]["largest"][0]
    assert re.fullmatch(r"quotes/quotes\d\d\.txt", top["file"]) and re.fullmatch(r"document \d+", top["place"])

    # the text form says the same
    result = hepc("data", str(spec), "--store", str(store))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "not built yet: a dry pass over the source, nothing written" in out
    assert f"source: {src['documents']:,} documents -> {src['pieces']:,} pieces" in out
    for name in SPLITS:
        s = splits[name]
        row = re.search(rf"(?m)^  {name}\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)%\s+([\d,]+)$", out)
        assert row, out
        assert [int(x.replace(",", "")) for x in row.groups()[:4]] + [int(row.group(7).replace(",", ""))] == [
            s["documents"], s["source_documents"], s["tokens"], s["bytes"], s["tokens_dropped"]]
        assert float(row.group(6)) == pytest.approx(100 * s["largest_share"], abs=0.05)
    assert f"{top['file']}, {top['place']}" in out
    assert not store.exists()


def test_a_built_corpus_is_read_from_the_store_and_matches_the_dry_pass(tmp_path):
    percent_folder(tmp_path / "quotes", files=6, entries=150)
    spec = spec_file(tmp_path, "{kind: text, paths: ['quotes/*.txt'], documents: {separator: '%'}}",
                     train_tokens=30_000, val_tokens=4_000, heldout_tokens=3_000)
    store = tmp_path / "store"
    dry = data_json(spec, store)["corpora"][0]
    meta = commit_corpus(spec, store)
    built = data_json(spec, store)["corpora"][0]
    assert (dry["origin"], built["origin"]) == ("dry pass", "store")
    assert {k: v for k, v in dry.items() if k != "origin"} == {k: v for k, v in built.items() if k != "origin"}
    for name in SPLITS:
        assert built["splits"][name]["documents"] == meta["documents"][name]
        assert built["splits"][name]["tokens"] == meta["tokens"][name]

    # `hepc plan`: per split from the store once built
    out = hepc("plan", str(spec), "--store", str(store)).stdout
    for name in SPLITS:
        assert re.search(rf"corpus text-bytes: {name}\s+{meta['documents'][name]:,} documents", out), out


def test_plan_summarises_a_small_unbuilt_corpus_in_one_line(tmp_path):
    percent_folder(tmp_path / "quotes", files=6, entries=150)
    spec = spec_file(tmp_path, "{kind: text, paths: ['quotes/*.txt'], documents: {separator: '%'}}",
                     train_tokens=30_000, val_tokens=4_000, heldout_tokens=3_000)
    store = tmp_path / "store"
    dry = data_json(spec, store)["corpora"][0]["splits"]
    result = hepc("plan", str(spec), "--store", str(store))
    assert result.exit_code == 0, result.output
    [line] = [x for x in result.stdout.splitlines() if x.startswith("corpus ")]
    expected = " · ".join(f"{n} {dry[n]['documents']:,} documents {dry[n]['tokens']:,} tokens" for n in SPLITS)
    assert line == f"corpus text-bytes: not built yet; a dry pass gives {expected} (of 900 source documents)"
    assert not store.exists()


def test_jsonl_largest_documents_name_their_line(tmp_path):
    lines = [json.dumps({"text": ("long " * 80 if i == 7 else f"record {i}")}) for i in range(400)]
    (tmp_path / "r.jsonl").write_text("\n".join(lines) + "\n")
    spec = spec_file(tmp_path, "{kind: text, paths: [r.jsonl], documents: jsonl}",
                     train_tokens=3_000, val_tokens=400, heldout_tokens=300, seq_len=32)
    corpus = data_json(spec, tmp_path / "store")["corpora"][0]
    largest = [e for s in corpus["splits"].values() for e in s["largest"]]
    assert corpus["source"]["documents"] == 400
    assert {"file": "r.jsonl", "place": "line 8", "name": "r.jsonl:line 8"}.items() <= max(largest, key=lambda e: e["tokens"]).items()


def test_synthetic_source_has_its_splits_and_no_source_totals(tmp_path):
    corpus = data_json(TINY, tmp_path / "store")["corpora"][0]
    assert corpus["source"]["documents"] is None  # an endless stream: not counted
    assert [corpus["splits"][n]["tokens"] for n in SPLITS] == [2000, 1000, 11000]


def test_bad_data_exits_2_located_and_writes_nothing(tmp_path):
    spec = spec_file(tmp_path, "{kind: text, paths: ['missing/*.txt'], documents: {separator: '%'}}")
    result = hepc("data", str(spec), "--store", str(tmp_path / "store"))
    assert result.exit_code == 2
    assert re.search(r"error: .*spec\.yaml:\d+:\d+: data\.source\.paths\[0\]: 'missing/\*\.txt' matched no files", result.output)
    assert not (tmp_path / "store").exists()


def test_a_corpus_too_small_at_build_exits_2_located(tmp_path):
    (tmp_path / "a.txt").write_text("x" * 3000 + "\n%\n" + "y" * 3000)
    spec = spec_file(tmp_path, "{kind: text, paths: [a.txt], documents: {separator: '%'}}",
                     train_tokens=5_000, val_tokens=1_000, heldout_tokens=500)
    result = hepc("data", str(spec), "--store", str(tmp_path / "store"))
    assert result.exit_code == 2, result.output
    assert re.search(r"spec\.yaml:\d+:\d+: data\.train_tokens: the source has only [\d,]+ tokens", result.output), result.output


def test_duplicates_test_split_and_share_warnings_are_shown(tmp_path):
    """Copied files are exact duplicates: dropped before carving and counted; a test split has its row; a
    document holding more than 5 % of a split is flagged by `hepc data`, and `validate` warns beforehand
    when the largest file could be."""
    folder = tmp_path / "docs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    words = ["lorem", "ipsum", "dolor", "sit", "amet"]
    texts = [" ".join(rng.choice(words, int(rng.integers(20, 60)))) for _ in range(120)]
    for i, text in enumerate(texts):
        (folder / f"d{i:03d}.txt").write_text(text)
    for i in range(0, 120, 10):
        (folder / f"copy{i:03d}.txt").write_text(texts[i])  # 12 exact copies
    (folder / "big.txt").write_text("x" * 1_500)  # more than 5 % of the 1,500-token test split
    spec = spec_file(tmp_path, "{kind: text, paths: ['docs/*.txt']}", train_tokens=6_000, val_tokens=1_500,
                     heldout_tokens=1_000)
    text = spec.read_text().replace("  heldout_tokens: 1000\n", "  heldout_tokens: 1000\n  test_tokens: 1500\n")
    spec.write_text(text)
    report = data_json(spec, tmp_path / "store")
    [corpus] = report["corpora"]
    assert corpus["source"]["duplicates"]["documents"] == 12
    assert list(corpus["splits"]) == ["val", "test", "heldout", "train"] and corpus["splits"]["test"]["tokens"] == 1_500
    assert all(0 < s["largest_share"] <= 1 for s in corpus["splits"].values())
    out = hepc("data", str(spec), "--store", str(tmp_path / "store")).stdout
    assert "duplicates: 12 exact copies of other documents" in out
    assert re.search(r"(?m)^  test\s+\d", out)
    flagged = [name for name, s in corpus["splits"].items() if s["largest_share"] > 0.05]
    for name in flagged:
        assert f"of {name} (" in out
    validate = hepc("validate", str(spec))
    assert validate.exit_code == 0
    said = " ".join(validate.output.split())  # however the terminal wrapped it
    assert "the largest document, 'docs/big.txt' (1,501 tokens at most), is more than 5% of the smallest split (heldout" in said
