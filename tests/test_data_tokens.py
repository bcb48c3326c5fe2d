"""Pre-tokenized shards (source `tokens`, tokenizer `none`): formats, documents, splits, identity, errors."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from hepc.data import DataError, build_corpus, source_identity
from hepc.data.carve import doc_keys
from hepc.data.pieces import ids_digest
from hepc.data.shards import HEADER_MAGIC, document_starts, iter_documents
from hepc.data.tokenizers import make_tokenizer

VOCAB, EOT = 1000, 999
NONE = {"kind": "none"}
N_DOCS = 300


def tokens_cfg(*paths, val_paths=None, **extra):
    return {"kind": "tokens", "paths": list(paths), "val_paths": val_paths, "vocab_size": VOCAB, "eot_id": EOT,
            "bytes_per_token": None, **extra}


def make_docs(seed=0, n=N_DOCS, first_marker=0):
    """Documents [EOT, marker, filler...]: marker = its index (unique), filler never an EOT or a marker."""
    rng = np.random.default_rng(seed)
    return [
        np.concatenate([[EOT, first_marker + i], rng.integers(N_DOCS * 2, EOT, size=int(rng.integers(3, 60)))]).astype(np.int64)
        for i in range(n)
    ]


def write_shard(path: Path, ids: np.ndarray) -> Path:
    """Write `ids` in the format `path`'s suffix names (`.hbin`: a headered .bin; `.dpt`: a dict in a .pt)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = np.asarray(ids)
    if path.suffix == ".npy":
        np.save(path, ids.astype(np.int32))
    elif path.suffix == ".bin":
        ids.astype("<u2").tofile(path)
    elif path.suffix == ".hbin":
        path = path.with_suffix(".bin")
        header = np.zeros(256, dtype="<i4")
        header[:3] = HEADER_MAGIC, 1, ids.size
        path.write_bytes(header.tobytes() + ids.astype("<u2").tobytes())
    elif path.suffix in (".pt", ".dpt"):
        torch = pytest.importorskip("torch")
        tensor = torch.from_numpy(ids.astype(np.int64))
        if ids.size % 2 == 0:
            tensor = tensor.reshape(2, -1)  # any shape: flattened in C order
        if path.suffix == ".dpt":
            path, tensor = path.with_suffix(".pt"), {"tokens": tensor}
        torch.save(tensor, path)
    return path


def write_stream(folder: Path, docs, n_shards=3, ext="npy", prefix="train"):
    stream = np.concatenate(docs)
    for i, part in enumerate(np.array_split(stream, n_shards)):  # shards cut documents anywhere
        write_shard(folder / f"{prefix}_{i:03d}.{ext}", part)
    return stream


def build(base, source, name="c", tokenizer=NONE, **sizes):
    sizes = {"train_tokens": 4_000, "val_tokens": 1_000, "heldout_tokens": 600, "seed": 0, **sizes}
    out = base / "out" / name
    meta = build_corpus(source, tokenizer, base_dir=base, out_dir=out, **sizes)
    arrays = {n: np.load(out / f"{n}.npy") for n in ("train", "heldout", "val", "train_docs")}
    return meta, arrays, out


def pieces(ids):
    starts = document_starts(ids, EOT)
    return np.split(ids, starts[1:])


def check_documents(arrays, docs):
    """Every document in a split is one of `docs` (the last one may be cut); none is in two splits."""
    seen = {}
    for split in ("val", "heldout", "train"):
        parts = pieces(arrays[split])
        assert parts and all(p[0] == EOT for p in parts)
        for j, part in enumerate(parts):
            original = docs[int(part[1])] if len(part) > 1 else None
            if original is not None:
                if j < len(parts) - 1:
                    np.testing.assert_array_equal(part, original)
                else:
                    np.testing.assert_array_equal(part, original[: len(part)])
                assert int(part[1]) not in seen, f"document {part[1]} in {seen.get(int(part[1]))} and {split}"
                seen[int(part[1])] = split
    return seen


# --- formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["npy", "bin", "hbin", "pt", "dpt"])
def test_every_format_gives_the_same_exact_disjoint_corpus(tmp_path, ext):
    docs = make_docs()
    write_stream(tmp_path / "ref", docs, ext="npy")
    write_stream(tmp_path / "fmt", docs, ext=ext)
    pattern = "*.bin" if ext == "hbin" else "*.pt" if ext == "dpt" else f"*.{ext}"
    ref_meta, ref, _ = build(tmp_path, tokens_cfg("ref/*.npy"), "ref")
    meta, a, out = build(tmp_path, tokens_cfg(f"fmt/{pattern}"), "fmt")
    for name in ref:
        np.testing.assert_array_equal(a[name], ref[name])
    assert meta["tokens"] == {"val": 1_000, "test": 0, "heldout": 600, "train": 3_400}
    assert {n: len(a[n]) for n in ("val", "heldout", "train")} == {n: meta["tokens"][n] for n in ("val", "heldout", "train")}
    assert all(a[n].dtype == np.uint16 for n in ("val", "heldout", "train")) and meta["dtype"] == "uint16"
    seen = check_documents(a, docs)
    assert set(seen.values()) == {"val", "heldout", "train"}
    assert meta["vocab_size"] == VOCAB and meta["eot_id"] == EOT and meta["tokenizer"] == NONE
    assert meta["documents"] == {n: len(pieces(a[n])) for n in ("val", "heldout", "train")} | {"test": 0}
    np.testing.assert_array_equal(a["train_docs"], np.flatnonzero(a["train"] == EOT))
    # no bytes_per_token configured: null, and meta.json is still valid JSON
    assert meta["bytes_per_token"] == {"val": None, "test": None, "heldout": None, "train": None}
    assert meta["bytes"] == {"val": None, "test": None, "heldout": None, "train": None}
    assert json.loads((out / "meta.json").read_text()) == meta


def test_documents_split_at_every_eot_across_shards(tmp_path):
    write_shard(tmp_path / "a.npy", [5, 6, EOT, 1, 2])
    write_shard(tmp_path / "b.npy", [3, EOT, 4, EOT])
    docs = list(iter_documents(tokens_cfg("*.npy"), tmp_path, seed=0))
    assert sorted(d.tolist() for d in docs) == sorted([[5, 6], [EOT, 1, 2, 3], [EOT, 4], [EOT]])
    np.testing.assert_array_equal(document_starts(np.array([EOT, 1, EOT]), EOT), [0, 2])
    np.testing.assert_array_equal(document_starts(np.array([7, 1, EOT]), EOT), [0, 2])
    assert document_starts(np.array([7, 1]), EOT).tolist() == [0] and document_starts(np.zeros(0), EOT).size == 0


def test_seed_deterministic_and_more_train_extends(tmp_path):
    write_stream(tmp_path / "s", make_docs())
    source = tokens_cfg("s/*.npy")
    _, a, _ = build(tmp_path, source, "a")
    _, again, _ = build(tmp_path, source, "again")
    _, other, _ = build(tmp_path, source, "other", seed=1)
    _, large, _ = build(tmp_path, source, "large", train_tokens=6_000)
    for name in a:
        np.testing.assert_array_equal(a[name], again[name])
    assert not np.array_equal(a["val"], other["val"])
    np.testing.assert_array_equal(a["val"], large["val"])
    np.testing.assert_array_equal(a["heldout"], large["heldout"])
    np.testing.assert_array_equal(a["train"], large["train"][: len(a["train"])])


def test_bytes_per_token_is_reported_as_configured(tmp_path):
    write_stream(tmp_path / "s", make_docs())
    meta, _, out = build(tmp_path, tokens_cfg("s/*.npy", bytes_per_token=4.25))
    assert meta["bytes_per_token"] == {"val": 4.25, "test": 4.25, "heldout": 4.25, "train": 4.25}
    assert meta["bytes"]["val"] == round(1_000 * 4.25)
    assert json.loads((out / "meta.json").read_text()) == meta


def test_large_vocab_is_stored_as_int32(tmp_path):
    write_shard(tmp_path / "big.npy", np.stack([np.full(100, 70_000 - 1), np.arange(100), np.full(100, 65_536)], 1).ravel())
    source = {**tokens_cfg("big.npy"), "vocab_size": 70_000, "eot_id": 69_999}
    meta, a, _ = build(tmp_path, source, train_tokens=150, val_tokens=60, heldout_tokens=30)
    assert meta["dtype"] == "int32" and a["train"].dtype == np.int32 and 65_536 in a["train"]


# --- val_paths -----------------------------------------------------------------------------------


def test_val_paths_gives_the_first_val_tokens_unshuffled(tmp_path):
    docs = make_docs()
    write_stream(tmp_path / "s", docs)
    val_stream = write_stream(tmp_path / "v", make_docs(seed=9, n=100, first_marker=N_DOCS), n_shards=4, ext="bin", prefix="val")
    source = tokens_cfg("s/*.npy", val_paths=["v/*.bin"])
    meta, a, _ = build(tmp_path, source)
    np.testing.assert_array_equal(a["val"], val_stream[:1_000])
    assert meta["tokens"] == {"val": 1_000, "test": 0, "heldout": 600, "train": 3_400}
    assert meta["documents"]["val"] == int((val_stream[:1_000] == EOT).sum())
    # nothing is carved from train for val: heldout and train are what the carving gives them first
    seen = check_documents({**a, "val": np.array([EOT], np.uint16)}, docs)
    assert set(seen.values()) == {"heldout", "train"}
    first = docs[int(np.argmin(doc_keys([ids_digest(d) for d in docs], 0)))]  # the carve order's first document
    np.testing.assert_array_equal(a["heldout"][: len(first)], first)
    assert source_identity(source, tmp_path)["val_files"][0]["name"] == "v/val_000.bin"


def test_val_paths_too_short_or_shared_with_train(tmp_path):
    write_stream(tmp_path / "s", make_docs())
    write_shard(tmp_path / "v" / "val.npy", [EOT] * 500)
    with pytest.raises(DataError) as err:
        build(tmp_path, tokens_cfg("s/*.npy", val_paths=["v/val.npy"]))
    assert err.value.field == "data.val_tokens" and "500" in err.value.message
    with pytest.raises(DataError) as err:
        build(tmp_path, tokens_cfg("s/*.npy", val_paths=["s/train_000.npy"]))
    assert err.value.field == "data.source.val_paths" and "train_000.npy" in err.value.message


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, where", [(VOCAB, "b.npy"), (-1, "b.npy"), (VOCAB + 5, "b.bin")])
def test_out_of_range_id_names_the_file(tmp_path, bad, where):
    write_shard(tmp_path / "a.npy", [EOT, 1, 2, 3])
    ids = np.array([EOT, 4, 5, bad, 6])
    if where.endswith(".npy"):
        np.save(tmp_path / where, ids.astype(np.int64))
    else:
        write_shard(tmp_path / where, ids)
    with pytest.raises(DataError) as err:
        build(tmp_path, tokens_cfg("a.npy", where), train_tokens=5, val_tokens=2, heldout_tokens=2)
    assert err.value.field == "data.source.vocab_size"
    assert where in err.value.message and str(bad) in err.value.message and "at token 3" in err.value.message


@pytest.mark.parametrize("key", ["paths", "val_paths"])
@pytest.mark.parametrize("pattern", ["s/missing.npy", "s/*.bin"])
def test_missing_file_or_empty_glob_names_the_field(tmp_path, key, pattern):
    write_stream(tmp_path / "s", make_docs())
    cfg = tokens_cfg("s/*.npy", val_paths=["s/train_000.npy"])
    cfg[key] = [cfg[key][0], pattern]
    with pytest.raises(DataError) as err:
        source_identity(cfg, tmp_path)
    assert err.value.field == f"data.source.{key}[1]" and pattern in err.value.message
    with pytest.raises(DataError) as err:
        build(tmp_path, cfg)
    assert err.value.field == f"data.source.{key}[1]"


def test_bad_shards_name_the_file(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    np.save(tmp_path / "f.npy", np.array([1.0, 2.0]))
    np.save(tmp_path / "m.npy", np.zeros((2, 3), np.int32))
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    header = np.zeros(256, "<i4")
    header[:3] = HEADER_MAGIC, 1, 10
    (tmp_path / "short.bin").write_bytes(header.tobytes() + np.arange(4, dtype="<u2").tobytes())
    header[1] = 2
    (tmp_path / "v2.bin").write_bytes(header.tobytes() + np.arange(10, dtype="<u2").tobytes())
    for name in ("a.txt", "f.npy", "m.npy", "odd.bin", "short.bin", "v2.bin"):
        with pytest.raises(DataError) as err:
            build(tmp_path, tokens_cfg(name), train_tokens=3, val_tokens=1, heldout_tokens=1)
        assert err.value.field == "data.source.paths" and f"'{name}'" in err.value.message, name


def test_bad_pt_shards(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"a": torch.zeros(3, dtype=torch.long), "b": torch.zeros(3, dtype=torch.long)}, tmp_path / "two.pt")
    torch.save(torch.zeros(3), tmp_path / "float.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    for name in ("two.pt", "float.pt", "list.pt"):
        with pytest.raises(DataError) as err:
            build(tmp_path, tokens_cfg(name), train_tokens=3, val_tokens=1, heldout_tokens=1)
        assert err.value.field == "data.source.paths" and f"'{name}'" in err.value.message, name


def test_not_enough_tokens_says_how_many(tmp_path):
    write_stream(tmp_path / "s", make_docs(n=20))
    with pytest.raises(DataError) as err:
        build(tmp_path, tokens_cfg("s/*.npy"), train_tokens=100_000)
    assert err.value.field == "data.train_tokens" and "has only" in err.value.message and "101,000" in err.value.message


def test_tokenizer_and_source_must_match(tmp_path):
    write_stream(tmp_path / "s", make_docs())
    (tmp_path / "a.txt").write_text("hello " * 100)
    with pytest.raises(DataError) as err:
        build(tmp_path, tokens_cfg("s/*.npy"), tokenizer={"kind": "bytes"})
    assert err.value.field == "data.tokenizer"
    with pytest.raises(DataError) as err:
        build(tmp_path, {"kind": "text", "paths": ["a.txt"]}, tokenizer=NONE, train_tokens=100, val_tokens=10, heldout_tokens=5)
    assert err.value.field == "data.tokenizer"
    with pytest.raises(DataError):
        make_tokenizer(NONE)
    tok = make_tokenizer(NONE, tokens_cfg("s/*.npy", bytes_per_token=3.5))
    assert (tok.vocab_size, tok.eot_id, tok.bytes_per_token, tok.config) == (VOCAB, EOT, 3.5, NONE)
    with pytest.raises(DataError) as err:
        make_tokenizer(NONE, {**tokens_cfg("s/*.npy"), "eot_id": VOCAB})
    assert err.value.field == "data.source.eot_id"


# --- identity ------------------------------------------------------------------------------------


def test_identity_is_independent_of_the_folder(tmp_path):
    write_stream(tmp_path / "spec" / "shards", make_docs())
    write_shard(tmp_path / "spec" / "val" / "v.bin", [EOT, 1, 2, 3])
    source = tokens_cfg("shards/*.npy", val_paths=["val/v.bin"])
    ident = source_identity(source, tmp_path / "spec")
    assert set(ident) == {"kind", "vocab_size", "eot_id", "files", "val_files"}
    assert [f["name"] for f in ident["files"]] == ["shards/train_000.npy", "shards/train_001.npy", "shards/train_002.npy"]
    assert [f["name"] for f in ident["val_files"]] == ["val/v.bin"]
    assert str(tmp_path) not in json.dumps(ident)
    moved = Path(shutil.move(str(tmp_path / "spec"), str(tmp_path / "else" / "where")))
    assert source_identity(source, moved) == ident
    absolute = tokens_cfg(str(moved / "shards" / "*.npy"), val_paths=[str(moved / "val" / "v.bin")])
    renamed = {**ident, "files": [{**f, "name": f["name"].removeprefix("shards/")} for f in ident["files"]],
               "val_files": [{**f, "name": "v.bin"} for f in ident["val_files"]]}
    assert source_identity(absolute, Path("/")) == renamed
    # bytes_per_token only labels bpb: not part of the identity
    assert source_identity({**source, "bytes_per_token": 4.0}, moved) == ident


def test_identity_changes_with_content_and_settings(tmp_path):
    write_stream(tmp_path / "s", make_docs())
    write_shard(tmp_path / "v.bin", [EOT, 1, 2, 3])
    source = tokens_cfg("s/*.npy")
    before = source_identity(source, tmp_path)
    assert before["val_files"] is None
    assert source_identity({**source, "val_paths": ["v.bin"]}, tmp_path) != before
    assert source_identity({**source, "eot_id": 0}, tmp_path) != before
    assert source_identity({**source, "vocab_size": VOCAB + 1}, tmp_path) != before
    ids = np.load(tmp_path / "s" / "train_001.npy")
    ids[5] = (ids[5] + 1) % EOT
    np.save(tmp_path / "s" / "train_001.npy", ids)
    assert source_identity(source, tmp_path) != before


# --- scale ---------------------------------------------------------------------------------------


def test_five_million_tokens_build_fast(tmp_path):
    rng = np.random.default_rng(0)
    stream = rng.integers(0, 50_000, size=5_000_000).astype("<u2")
    stream[rng.random(stream.size) < 1 / 400] = 50_256
    stream.tofile(tmp_path / "big.bin")
    source = {**tokens_cfg("big.bin"), "vocab_size": 50_257, "eot_id": 50_256}
    start = time.perf_counter()
    meta, _, _ = build(tmp_path, source, train_tokens=4_000_000, val_tokens=500_000, heldout_tokens=100_000)
    assert time.perf_counter() - start < 3
    assert meta["tokens"] == {"val": 500_000, "test": 0, "heldout": 100_000, "train": 3_900_000}
