"""Corpus building: exact, deterministic, disjoint splits; heldout carved from train (tests/test_data_splits.py: the rule)."""

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from hepc.data import DataError, build_corpus
from hepc.data.tokenizers import BytesTokenizer, make_tokenizer

BYTES = {"kind": "bytes"}
PYSTDLIB = {"kind": "pystdlib", "include_tests": False}
EOT = 256


def build(tmp_path, source, name="c", base_dir=Path("."), **sizes):
    sizes = {"train_tokens": 40_000, "val_tokens": 8_000, "heldout_tokens": 6_000, "seed": 0, **sizes}
    out = tmp_path / name
    meta = build_corpus(source, BYTES, base_dir=base_dir, out_dir=out, **sizes)
    arrays = {n: np.load(out / f"{n}.npy") for n in ("train", "heldout", "val", "train_docs")}
    return meta, arrays, out


@pytest.fixture
def marked_docs(tmp_path):
    """40 text files, each starting with a unique marker, of varied lengths."""
    data = tmp_path / "spec" / "docs"
    data.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(40):
        (data / f"{i:02d}.txt").write_text(f"<DOC{i:02d}>" + "lorem ipsum " * int(rng.integers(5, 60)))
    return tmp_path / "spec"


def markers(ids):
    return set(re.findall(r"<DOC(\d\d)>", BytesTokenizer().decode(ids)))


def test_tokenizer_bytes():
    tok = make_tokenizer(BYTES)
    ids = tok.encode("héllo".encode())
    assert ids.dtype == np.uint16 and ids[0] == EOT and len(ids) == 7
    assert tok.vocab_size == 257 and tok.token_bytes[ids].sum() == 6
    assert tok.decode(np.concatenate([ids, tok.encode(b"x")])) == "<|endoftext|>héllo<|endoftext|>x"
    with pytest.raises(DataError):
        make_tokenizer({"kind": "bpe"})


def test_pystdlib_corpus_exact_deterministic_and_well_formed(tmp_path):
    meta, a, out = build(tmp_path, PYSTDLIB)
    _, again, _ = build(tmp_path, PYSTDLIB, name="again")
    for name in a:
        np.testing.assert_array_equal(a[name], again[name])
    assert meta == json.loads((out / "meta.json").read_text())
    assert meta["tokens"] == {"val": 8_000, "test": 0, "heldout": 6_000, "train": 34_000}
    assert {n: len(a[n]) for n in ("val", "heldout", "train")} == {n: meta["tokens"][n] for n in ("val", "heldout", "train")}
    assert all(a[n].dtype == np.uint16 and a[n][0] == EOT for n in ("val", "heldout", "train"))
    assert meta["vocab_size"] == 257 and meta["eot_id"] == EOT and meta["tokenizer"] == BYTES
    for n in ("val", "heldout", "train"):
        assert meta["bytes"][n] == int((a[n] != EOT).sum())
        assert meta["bytes_per_token"][n] == pytest.approx(meta["bytes"][n] / meta["tokens"][n])
        assert meta["documents"][n] == int((a[n] == EOT).sum())
    assert meta["source"]["kind"] == "pystdlib"
    # train_docs: one offset per document, each at an end-of-text
    docs = a["train_docs"]
    assert docs.dtype == np.int64 and docs[0] == 0 and np.all(np.diff(docs) > 0)
    np.testing.assert_array_equal(docs, np.flatnonzero(a["train"] == EOT))


def test_seed_changes_the_split(tmp_path):
    _, a, _ = build(tmp_path, PYSTDLIB, name="s0")
    _, b, _ = build(tmp_path, PYSTDLIB, name="s1", seed=1)
    assert not np.array_equal(a["val"], b["val"])


def test_pystdlib_400k_builds_fast(tmp_path):
    start = time.perf_counter()
    meta, _, _ = build(tmp_path, PYSTDLIB, train_tokens=400_000, val_tokens=60_000, heldout_tokens=30_000)
    assert time.perf_counter() - start < 5
    assert meta["tokens"]["train"] == 370_000


@pytest.mark.parametrize("cap", [None, 16])
def test_splits_are_disjoint_by_document(tmp_path, marked_docs, cap):
    """With or without a cap (pieces of 16 tokens) no document is in two splits."""
    source = {"kind": "text", "paths": ["docs/*.txt"], "encoding": "utf-8"}
    meta, a, _ = build(tmp_path, source, base_dir=marked_docs, train_tokens=4_000, val_tokens=1_000, heldout_tokens=1_000,
                       test_tokens=500, max_doc_tokens=cap)
    assert meta["max_doc_tokens"] == cap and meta["source_documents"] == 40
    assert meta["source_pieces"] == 40 if cap is None else meta["source_pieces"] > 400
    a["test"] = np.load(tmp_path / "c" / "test.npy")
    seen = {n: markers(a[n]) for n in ("val", "test", "heldout", "train")}
    assert all(seen.values())
    for n in seen:  # a document's marker is in its first piece: with a cap, whole documents are recognised
        for m in seen:  # by their text; every piece of a document is in its split
            assert n == m or not (seen[n] & seen[m])
    assert all(meta["splits"][n]["source_documents_in_other_splits"] == 0 for n in seen)
    assert meta["tokens"] == {"val": 1_000, "test": 500, "heldout": 1_000, "train": 3_000}


def test_more_train_tokens_keeps_val_and_heldout_and_extends_train(tmp_path, marked_docs):
    source = {"kind": "text", "paths": ["docs/*.txt"], "encoding": "utf-8"}
    _, small, _ = build(tmp_path, source, "small", base_dir=marked_docs, train_tokens=3_000, val_tokens=1_000, heldout_tokens=500)
    _, large, _ = build(tmp_path, source, "large", base_dir=marked_docs, train_tokens=6_000, val_tokens=1_000, heldout_tokens=500)
    np.testing.assert_array_equal(small["val"], large["val"])
    np.testing.assert_array_equal(small["heldout"], large["heldout"])
    np.testing.assert_array_equal(small["train"], large["train"][: len(small["train"])])


def test_not_enough_tokens_says_how_many(tmp_path, marked_docs):
    source = {"kind": "text", "paths": ["docs/*.txt"], "encoding": "utf-8"}
    with pytest.raises(DataError) as err:
        build(tmp_path, source, base_dir=marked_docs, train_tokens=1_000_000, val_tokens=1_000, heldout_tokens=500)
    assert err.value.field == "data.train_tokens"
    assert "has only" in err.value.message and "1,001,000" in err.value.message


def test_bad_sizes(tmp_path):
    with pytest.raises(DataError) as err:
        build(tmp_path, PYSTDLIB, train_tokens=1_000, heldout_tokens=1_000)
    assert err.value.field == "data.heldout_tokens"
    for bad in (1, 0, 2.5, True):
        with pytest.raises(DataError) as err:
            build(tmp_path, PYSTDLIB, max_doc_tokens=bad)
        assert err.value.field == "data.max_doc_tokens"


def test_text_encoding(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.txt").write_bytes(f"caf{'é' * (i + 1)}".encode("latin-1"))
    source = {"kind": "text", "paths": ["*.txt"], "encoding": "latin-1"}
    meta, a, _ = build(tmp_path, source, base_dir=tmp_path, train_tokens=3, val_tokens=8, heldout_tokens=1)
    assert set(BytesTokenizer().decode(a["val"]).split("<|endoftext|>")) <= {"", "café", "caféé", "cafééé"}
    assert meta["tokens"] == {"val": 8, "test": 0, "heldout": 1, "train": 2} and meta["bytes"]["val"] < 8
    with pytest.raises(DataError) as err:
        build(tmp_path, {**source, "encoding": "utf-8"}, "u", base_dir=tmp_path, train_tokens=3, val_tokens=8, heldout_tokens=1)
    assert err.value.field == "data.source.encoding"


def test_synthetic_corpus(tmp_path):
    source = {"kind": "synthetic", "alphabet_size": 16, "order": 2, "concentration": 0.1, "doc_tokens": 100, "seed": 3}
    meta, a, _ = build(tmp_path, source)
    assert meta["tokens"] == {"val": 8_000, "test": 0, "heldout": 6_000, "train": 34_000}
    assert 0 < meta["entropy_rate_nats"] < np.log(16)
    assert meta["entropy_rate_bits_per_token"] == pytest.approx(meta["entropy_rate_nats"] / np.log(2))
    assert meta["bytes_per_token"]["val"] == pytest.approx(100 / 101, abs=1e-3)
    starts = a["train_docs"]
    assert np.all(np.diff(starts) == 101)
    symbols = a["train"][a["train"] != EOT]
    assert set(np.unique(symbols).tolist()) <= set(b"abcdefghijklmnop")
