"""Splits by whole documents (docs/data-splits.md): documents ordered by a seeded hash of their content,
exact duplicates dropped, cut into pieces of at most max_doc_tokens, val / test / heldout / train carved in
that order; every document in one split only; exact, stable, independent of names and listing order."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import TINY, hepc
from data_helpers import reference_corpus

from hepc.compile.compiler import compile_spec
from hepc.data import build_corpus
from hepc.data import sources as data_sources
from hepc.data.carve import DEFAULT_MAX_DOC_TOKENS, n_pieces
from hepc.data.identity import list_pystdlib, stdlib_root
from hepc.data.shards import document_starts
from hepc.data.synthetic import iter_documents as synthetic_documents
from hepc.data.tokenizers import BytesTokenizer
from hepc.spec.load import load_spec
from hepc.store.objects import Store

BYTES = {"kind": "bytes"}
PYSTDLIB = {"kind": "pystdlib"}
# specs/repro's document rule: every top-level definition and method of the standard library a document
METHODS = {"regex": "\n(?=(?:    )?(?:async def|def|class|@)[ \\w])"}
EOT = 256
SPLITS = ("val", "test", "heldout", "train")
SMALL_DOCS = {**PYSTDLIB, "documents": METHODS}
REPRO = {"train_tokens": 63_000, "heldout_tokens": 3_000, "val_tokens": 30_000, "test_tokens": 20_000}


def build(tmp_path, source=PYSTDLIB, name="c", base_dir=Path("."), tokenizer=BYTES, **sizes):
    sizes = {**REPRO, "seed": 0, **sizes}
    out = tmp_path / name
    meta = build_corpus(source, tokenizer, base_dir=base_dir, out_dir=out, **sizes)
    arrays = {}
    for split in SPLITS:
        arrays[split] = np.load(out / f"{split}.npy")
        arrays[f"{split}_docs"] = np.load(out / f"{split}_docs.npy")
    return meta, arrays, out


def pieces(arrays, split) -> list[np.ndarray]:
    return np.split(arrays[split], arrays[f"{split}_docs"][1:])


def stdlib_docs() -> list[tuple[str, bytes]]:
    root = stdlib_root()
    return [(rel, (root / rel).read_bytes()) for rel, _ in list_pystdlib(False, root)]


def assert_rule(tmp_path, meta, a, docs, cap, seed, sizes):
    expected, names, _ = reference_corpus(docs, cap, seed, sizes)
    for key, array in expected.items():
        np.testing.assert_array_equal(a[key], array, err_msg=key)
    every = [name for split in SPLITS for name in names[split]]
    assert len(every) == len(set(every))  # no document in two splits
    for split in SPLITS:
        assert meta["splits"][split]["source_documents"] == len(names[split])
        assert meta["splits"][split]["source_documents_in_other_splits"] == 0


# --------------------------------------------------------------------------- the rule


def test_repro_splits_hold_many_whole_documents_exact_and_disjoint(tmp_path):
    """The standard library with specs/repro's rule (every top-level definition and method a document):
    val and test hold dozens of documents, none dominates, none is in two splits."""
    meta, a, out = build(tmp_path, SMALL_DOCS)
    assert meta["max_doc_tokens"] == DEFAULT_MAX_DOC_TOKENS == 512
    assert meta["tokens"] == {"val": 30_000, "test": 20_000, "heldout": 3_000, "train": 60_000}
    splits = meta["splits"]
    assert splits["val"]["source_documents"] >= 40 and splits["test"]["source_documents"] >= 25
    assert splits["heldout"]["source_documents"] >= 4 and splits["train"]["source_documents"] >= 80
    assert meta["source_documents"] > 15_000 and meta["duplicates"]["documents"] > 100  # e.g. `def __init__(self): pass`
    for split in SPLITS:
        docs = a[f"{split}_docs"]
        assert docs.dtype == np.int64 and docs[0] == 0 and np.all(np.diff(docs) > 0)
        np.testing.assert_array_equal(docs, np.flatnonzero(a[split] == EOT))  # every piece starts with its EOT
        assert max(len(p) for p in pieces(a, split)) <= 512
        stats = splits[split]
        assert stats["documents"] == meta["documents"][split] == docs.size
        assert stats["tokens"] == meta["tokens"][split] and stats["bytes"] == meta["bytes"][split]
        largest = [entry["tokens"] for entry in stats["largest"]]
        assert largest == sorted(largest, reverse=True) and stats["largest_share"] == largest[0] / stats["tokens"]
        assert stats["source_documents_in_other_splits"] == 0
    assert json.loads((out / "meta.json").read_text()) == meta


@pytest.mark.parametrize("seed", [0, 3])
def test_pystdlib_corpus_is_the_documented_rule(tmp_path, seed):
    """Arrays and offsets equal the rule applied to whole files; no file is in two splits."""
    sizes = {**REPRO, "val_tokens": 120_000, "test_tokens": 60_000, "train_tokens": 303_000}
    meta, a, _ = build(tmp_path, seed=seed, **sizes)
    assert_rule(tmp_path, meta, a, stdlib_docs(), 512, seed, sizes)


@pytest.mark.parametrize("cap", [2, 7, None])
@pytest.mark.parametrize("chunk", [3, 1 << 20], ids=["chunk3", "chunk1M"])
def test_streamed_documents_match_whole_files(tmp_path, monkeypatch, cap, chunk):
    """Tiny caps and chunks: pieces cross chunk ends, files end on and off piece ends, empty files,
    exact duplicates (dropped), a document larger than any split (read only as far as one can take)."""
    monkeypatch.setattr(data_sources, "_CHUNK", chunk)
    rng = np.random.default_rng(2)
    words = ["a", "bb", "café", "✓", "日本語", "\n", "x" * 9]
    docs = []
    for i in range(40):
        text = "".join(rng.choice(words, int(rng.integers(0, 30)))) if i % 7 else ""
        if i == 5:
            text = "y" * 6  # ends exactly on a piece end when cap = 7
        if i in (11, 23):
            text = docs[3][1].decode()  # copies of document 3
        if i == 30:
            text = "z" * 700  # more than any split takes
        (tmp_path / f"d{i:02d}.txt").write_text(text)
        docs.append((f"d{i:02d}.txt", text.encode()))
    sizes = {"train_tokens": 300, "val_tokens": 80, "heldout_tokens": 40, "test_tokens": 30}
    for seed in (0, 1, 2):
        meta = build_corpus({"kind": "text", "paths": ["*.txt"]}, BYTES, seed=seed, base_dir=tmp_path,
                            out_dir=tmp_path / f"o{seed}", max_doc_tokens=cap, **sizes)
        a = {}
        for split in SPLITS:
            a[split] = np.load(tmp_path / f"o{seed}" / f"{split}.npy")
            a[f"{split}_docs"] = np.load(tmp_path / f"o{seed}" / f"{split}_docs.npy")
        assert_rule(tmp_path, meta, a, docs, cap, seed, sizes)
        assert meta["source_pieces"] == sum(n_pieces(len(text) + 1, cap) for _, text in docs)
        assert meta["duplicates"]["documents"] >= 2  # 11 and 23 (and the empty documents beyond the first)


def test_duplicates_are_dropped_and_names_and_listing_order_do_not_matter(tmp_path, monkeypatch):
    """The same documents under other names, in another folder, listed in another order, some copied
    twice: the same splits, byte for byte (identity is content, never a name or a place)."""
    rng = np.random.default_rng(5)
    texts = ["".join(rng.choice(list("abcdefgh \n"), int(rng.integers(20, 300)))) for _ in range(60)]
    one, two = tmp_path / "one", tmp_path / "elsewhere" / "two"
    one.mkdir()
    two.mkdir(parents=True)
    for i, text in enumerate(texts):
        (one / f"doc{i:03d}.txt").write_text(text)
        (two / f"{59 - i:03d}-renamed.txt").write_text(text)
    for i in range(0, 60, 7):  # copies: exact duplicates, dropped before carving
        (two / f"copy{i:03d}.txt").write_text(texts[i])
    sizes = {"train_tokens": 4_000, "val_tokens": 1_500, "heldout_tokens": 500, "test_tokens": 1_000, "seed": 4}
    built = []
    for folder, name in ((one, "a"), (two, "b")):
        meta = build_corpus({"kind": "text", "paths": ["*.txt"]}, BYTES, base_dir=folder, out_dir=tmp_path / name, **sizes)
        built.append(meta)
    real = data_sources.list_data_files
    monkeypatch.setattr(data_sources, "list_data_files", lambda *a, **k: random.Random(1).sample(real(*a, **k), len(real(*a, **k))))
    built.append(build_corpus({"kind": "text", "paths": ["*.txt"]}, BYTES, base_dir=two, out_dir=tmp_path / "c", **sizes))
    for split in SPLITS:
        arrays = [np.load(tmp_path / name / f"{split}.npy") for name in "abc"]
        np.testing.assert_array_equal(arrays[0], arrays[1])
        np.testing.assert_array_equal(arrays[0], arrays[2])
    assert built[0]["duplicates"]["documents"] == 0 and built[1]["duplicates"]["documents"] == 9
    # nothing shared between splits, even though the copies exist
    texts_in = {split: set(BytesTokenizer().decode(np.load(tmp_path / "b" / f"{split}.npy")).split("<|endoftext|>")) - {""}
                for split in SPLITS}
    for x in SPLITS:
        for y in SPLITS:
            if x < y:
                full = {t for t in texts_in[x] if t in texts} & {t for t in texts_in[y] if t in texts}
                assert not full


# --------------------------------------------------------------------------- stability


def same_window(old, new) -> int:
    """new train = old train from a document boundary on, as far as both go (new train may begin with
    a document the old carve cut at an earlier split's end and dropped). Returns that boundary's piece."""
    old_pieces, new_pieces = pieces(old, "train"), pieces(new, "train")
    for skip, first in enumerate(new_pieces[:8]):
        m = next((i for i, p in enumerate(old_pieces) if np.array_equal(p, first)), None)
        if m is not None:
            break
    assert m is not None, "new train shares no document with old train"
    start, new_start = int(old["train_docs"][m]), int(new["train_docs"][skip])
    common = min(new["train"].size - new_start, old["train"].size - start)
    np.testing.assert_array_equal(new["train"][new_start : new_start + common], old["train"][start : start + common])
    assert common > 0.5 * min(old["train"].size, new["train"].size)
    return m


@pytest.mark.parametrize("seed, heldout", [(0, 6_000), (1, 3_500)])
def test_more_heldout_extends_heldout_and_takes_whole_documents_from_train(tmp_path, seed, heldout):
    _, old, _ = build(tmp_path, SMALL_DOCS, name="old", seed=seed)
    _, new, _ = build(tmp_path, SMALL_DOCS, name="new", seed=seed, heldout_tokens=heldout)
    for split in ("val", "test"):
        np.testing.assert_array_equal(new[split], old[split])
    np.testing.assert_array_equal(new["heldout"][: old["heldout"].size], old["heldout"])
    same_window(old, new)  # train lost whole documents at its front to heldout (or none: heldout's last document
    # had room); the rest is unchanged, in order


@pytest.mark.parametrize("seed, val", [(0, 40_000), (1, 30_700)])
def test_more_val_moves_the_later_splits_along_the_same_order(tmp_path, seed, val):
    _, old, _ = build(tmp_path, SMALL_DOCS, name="old", seed=seed)
    _, new, _ = build(tmp_path, SMALL_DOCS, name="new", seed=seed, val_tokens=val)
    np.testing.assert_array_equal(new["val"][: old["val"].size], old["val"])
    same_window(old, new)


def test_a_test_split_keeps_val_and_is_carved_next(tmp_path):
    _, without, _ = build(tmp_path, SMALL_DOCS, name="without", test_tokens=0)
    _, with_test, _ = build(tmp_path, SMALL_DOCS, name="with")
    assert without["test"].size == 0 and with_test["test"].size == 20_000
    np.testing.assert_array_equal(without["val"], with_test["val"])
    np.testing.assert_array_equal(without["heldout"][:500], with_test["test"][:500])  # test takes heldout's place


def test_more_train_keeps_the_other_splits_and_extends_train(tmp_path):
    _, old, _ = build(tmp_path, SMALL_DOCS, name="old")
    _, new, _ = build(tmp_path, SMALL_DOCS, name="new", train_tokens=80_000)
    for split in ("val", "test", "heldout"):
        np.testing.assert_array_equal(new[split], old[split])
    np.testing.assert_array_equal(new["train"][: old["train"].size - DEFAULT_MAX_DOC_TOKENS],
                                  old["train"][: old["train"].size - DEFAULT_MAX_DOC_TOKENS])


def test_same_seed_same_bytes_other_seed_other_split(tmp_path):
    _, _, a = build(tmp_path, name="a", seed=5)
    _, _, b = build(tmp_path, name="b", seed=5)
    _, _, c = build(tmp_path, name="c", seed=6)
    for f in sorted(a.iterdir()):
        assert f.read_bytes() == (b / f.name).read_bytes(), f.name
    assert (a / "val.npy").read_bytes() != (c / "val.npy").read_bytes()


# --------------------------------------------------------------------------- other sources


def test_synthetic_documents_are_never_cut_and_come_in_stream_order(tmp_path):
    source = {"kind": "synthetic", "alphabet_size": 16, "order": 2, "concentration": 0.1, "doc_tokens": 1000, "seed": 3}
    meta, a, _ = build(tmp_path, source, train_tokens=12_000, val_tokens=5_000, heldout_tokens=2_000, test_tokens=3_003)
    assert meta["max_doc_tokens"] is None and meta["tokens"] == {"val": 5_000, "test": 3_003, "heldout": 2_000, "train": 10_000}
    for split in ("val", "heldout", "train"):
        assert np.all(np.diff(a[f"{split}_docs"]) == 1_001)
    first = BytesTokenizer().encode(next(synthetic_documents(source, 0)))
    np.testing.assert_array_equal(a["val"][:1_001], first)


VOCAB = 1 << 20


def token_docs(n=120, seed=0, base=0):
    """Documents [EOT, unique ids...] of 2 to 2,000 tokens: id = base + 4,000 * document + position."""
    rng = np.random.default_rng(seed)
    return [np.concatenate([[VOCAB - 1], base + i * 4_000 + np.arange(int(rng.integers(1, 2_000)))]) for i in range(n)]


@pytest.mark.parametrize("with_val", [False, True])
def test_tokens_source_pieces_are_capped_disjoint_and_val_paths_still_given(tmp_path, with_val):
    docs = token_docs()
    np.save(tmp_path / "train.npy", np.concatenate(docs).astype(np.int32))
    source = {"kind": "tokens", "paths": ["train.npy"], "val_paths": None, "vocab_size": VOCAB, "eot_id": VOCAB - 1}
    if with_val:
        val_stream = np.concatenate(token_docs(30, seed=9, base=600_000)).astype(np.int32)
        np.save(tmp_path / "val.npy", val_stream)
        source["val_paths"] = ["val.npy"]
    meta, a, _ = build(tmp_path, source, base_dir=tmp_path, tokenizer={"kind": "none"}, train_tokens=60_000, val_tokens=8_000,
                       heldout_tokens=4_000, test_tokens=5_000, max_doc_tokens=300)
    assert meta["tokens"] == {"val": 8_000, "test": 5_000, "heldout": 4_000, "train": 56_000} and meta["dtype"] == "int32"
    seen, split_of = set(), {}
    for split in ("test", "heldout", "train") if with_val else SPLITS:
        parts = pieces(a, split)
        for j, part in enumerate(parts):
            assert part[0] == VOCAB - 1 and part.size <= 300
            assert part.size >= 2 or j == len(parts) - 1  # only a split's last piece may be cut to its EOT
            body = part[1:]
            if body.size:
                doc, at = divmod(int(body[0]), 4_000)
                assert at % 299 == 0  # every piece holds (up to) 299 ids after its end-of-text
                np.testing.assert_array_equal(body, docs[doc][1 + at : 1 + at + body.size])
                assert (doc, at) not in seen and split_of.setdefault(doc, split) == split  # a document in one split
                seen.add((doc, at))
    assert meta["source_pieces"] == sum(n_pieces(d.size, 300) for d in docs)
    if with_val:
        np.testing.assert_array_equal(a["val"], val_stream[:8_000])
        np.testing.assert_array_equal(a["val_docs"], document_starts(val_stream[:8_000], VOCAB - 1))
        assert meta["splits"]["val"]["largest"][0]["name"].startswith("val_paths document ")


# --------------------------------------------------------------------------- plan


def test_plan_prints_each_split_once_the_corpus_is_committed(tmp_path):
    store_path = tmp_path / "store"
    out = hepc("plan", TINY, store=store_path).stdout.splitlines()
    assert out[-2] == "corpus synthetic-bytes: not built yet (its splits show here once `hepc run` has built it)"
    compiled = compile_spec(load_spec(TINY))
    step = next(s for s in compiled.graph if s.kind == "corpus")
    store = Store(store_path)
    store.open_for_writing()
    staged = store.stage(step)
    p = step.params
    meta = build_corpus(step.context["source"], {"kind": p["tokenizer"]}, train_tokens=p["train_tokens"],
                        val_tokens=p["val_tokens"], heldout_tokens=p["heldout_tokens"], seed=p["seed"],
                        base_dir=Path(step.context["base_dir"]), out_dir=staged)
    obj = store.commit(step, staged, {}, {})
    out = hepc("plan", TINY, store=store_path).stdout.splitlines()
    lines = [line for line in out if line.startswith("corpus synthetic-bytes: ")]
    shown = [split for split in SPLITS if split != "test"]  # the fixture has no test split
    assert [line.split()[2] for line in lines] == shown
    for line, split in zip(lines, shown):
        assert f"{meta['documents'][split]:,} documents" in line and f"{meta['tokens'][split]:,} tokens" in line
    assert out[-1].startswith("15 steps: 1 cached")
    (obj / "meta.json").write_text((obj / "meta.json").read_text().replace('"val": 2000', '"val": 2001'))
    out = hepc("plan", TINY, store=store_path).stdout
    assert "corpus synthetic-bytes: splits not shown: meta.json does not match its recorded digest" in out
