"""BPE tokenizer (`data.tokenizer: {kind: bpe, vocab_size: N}`): trained on the train split only, a
cached `tokenizer` step the corpus depends on, end to end through the CLI, stable keys, exact bits/byte."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import ROOT, hepc

from hepc.compile.compiler import compile_spec
from hepc.data.bpe_training import train_on_train_split
from hepc.data.corpus import build_corpus
from hepc.data.tokenizers import TOKENIZER_FILE, BpeTokenizer, BytesTokenizer, cut_document
from hepc.errors import HepcError
from hepc.spec.load import load_spec
from hepc.store.objects import Store
from hepc.use.source import load_tokenizer

LETTERS = "bcdfghjklmnpqrstvwxz"
COMMON = ["the", "of", "and", "data", "model", "tokens", "train", "split"]
SIZES = {"train_tokens": 8000, "val_tokens": 1500, "heldout_tokens": 1000, "seed": 0}


def write_corpus(folder: Path, files: int = 30) -> dict[str, str]:
    """Text files, one document each, each with a word of its own (frequent in it, absent elsewhere):
    a word is a single BPE token only if the tokenizer saw its file. Returns {file name: its word}."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    words = {}
    for i in range(files):
        word = "".join(rng.choice(LETTERS) for _ in range(8))
        lines = [" ".join(rng.choice(COMMON + [word] * 3) for _ in range(10)) for _ in range(40)]
        (folder / f"f{i:02d}.txt").write_text("\n".join(lines) + "\n")
        words[f"f{i:02d}.txt"] = word
    return words


SPEC = """\
version: 1
name: bpe
data:
  source: {{kind: text, paths: ["docs/*.txt"]}}
  tokenizer: {tokenizer}
  train_tokens: {train_tokens}
  val_tokens: {val_tokens}
  heldout_tokens: {heldout_tokens}
  seq_len: 32
  max_doc_tokens: null
model: {{n_layer: 1, d_model: 32, n_head: 2}}
optimizer: {{lr: 0.003, weight_decay: 0.1, batch_tokens: 512}}
population:
  trajectories: 1
  cycles: 2
  epochs_per_cycle: 1
  schedule: {{kind: cyclic}}
prior: {{kind: learned, steps: 50}}
runtime: {{device: cpu, threads: 1, checkpoint_every_steps: 0}}
"""


def write_spec(folder: Path, tokenizer: str = "{kind: bpe, vocab_size: 1024}", **sizes) -> Path:
    write_corpus(folder / "docs")
    path = folder / "bpe.yaml"
    path.write_text(SPEC.format(tokenizer=tokenizer, **{**SIZES, **sizes}))
    return path


def build(tmp_path: Path, vocab_size: int = 1024) -> tuple[BpeTokenizer, dict, dict, dict]:
    """(tokenizer, its training record, the corpus meta, {file: word}) built with the step bodies' functions."""
    words = write_corpus(tmp_path / "docs")
    source = {"kind": "text", "paths": ["docs/*.txt"]}
    cfg = {"kind": "bpe", "vocab_size": vocab_size, "min_frequency": 2}
    tok, record = train_on_train_split(source, cfg, base_dir=tmp_path, max_doc_tokens=None, **SIZES)
    tok_dir = tmp_path / "tokenizer"
    tok_dir.mkdir()
    (tok_dir / TOKENIZER_FILE).write_text(tok.to_json())
    (tok_dir / "meta.json").write_text(json.dumps(record))
    meta = build_corpus(source, cfg, base_dir=tmp_path, out_dir=tmp_path / "corpus", max_doc_tokens=None,
                        tokenizer_dir=tok_dir, **SIZES)  # fmt: skip
    return tok, record, meta, words


def split_words(tok: BpeTokenizer, corpus: Path, words: dict[str, str]) -> dict[str, set[str]]:
    """Which files' words occur in each split (decoded from its token array)."""
    out = {}
    for split in ("val", "heldout", "train"):
        text = tok.decode(np.load(corpus / f"{split}.npy"))
        out[split] = {w for w in words.values() if w in text}
    return out


def test_the_tokenizer_never_sees_val_or_heldout_text(tmp_path):
    tok, record, meta, words = build(tmp_path)
    present = split_words(tok, tmp_path / "corpus", words)
    assert present["val"] and present["heldout"] and present["train"]
    assert not (present["val"] | present["heldout"]) & present["train"]  # whole documents: one split each
    token = tok.hf.token_to_id
    for word in present["val"] | present["heldout"]:
        assert token("Ġ" + word) is None and token(word) is None, f"{word} (val/held-out only) became a token"
        assert len(tok.encode(" " + word)) > 2
    # The test can fail: the words of the documents the BPE was trained on did become single tokens.
    merged = [w for w in present["train"] if token("Ġ" + w) is not None]
    assert len(merged) >= 0.8 * len(present["train"]), (len(merged), len(present["train"]))
    assert record["rounds"] == 1 and record["eval_pieces"] == meta["documents"]["val"] + meta["documents"]["heldout"]
    training = meta["tokenizer_training"]
    assert training["val_heldout_unseen"] is True
    assert training["train_pieces_unseen"] <= max(2, training["train_pieces"] // 10)  # it saw (nearly) all of train
    # Same inputs, same tokenizer (a cached, content-hashed step must be reproducible).
    again, record_again = train_on_train_split({"kind": "text", "paths": ["docs/*.txt"]},
                                               {"kind": "bpe", "vocab_size": 1024}, base_dir=tmp_path,
                                               max_doc_tokens=None, **SIZES)  # fmt: skip
    assert again.to_json() == tok.to_json() and record_again == record


def test_a_compression_estimate_that_falls_short_takes_another_round_and_never_sees_val(tmp_path, monkeypatch):
    """The sample BPE's estimate of where val and held-out end, with no margin and a sample too small to
    compress like the real one: the first BPE sees val pieces, so it is trained again, past them."""
    from hepc.data import bpe_training

    monkeypatch.setattr(bpe_training, "MARGIN", -0.5)
    monkeypatch.setattr(bpe_training, "SAMPLE_BYTES", 2000)
    tok, record, meta, words = build(tmp_path)
    assert record["rounds"] >= 2 and meta["tokenizer_training"]["val_heldout_unseen"] is True
    present = split_words(tok, tmp_path / "corpus", words)
    for word in present["val"] | present["heldout"]:
        assert tok.hf.token_to_id("Ġ" + word) is None, word


def test_bpe_corpus_is_exact_and_bits_per_byte_are_per_split(tmp_path):
    tok, _, meta, _ = build(tmp_path)
    corpus = tmp_path / "corpus"
    assert meta["tokens"] == {"val": 1500, "test": 0, "heldout": 1000, "train": 7000}
    assert meta["vocab_size"] == tok.vocab_size == 1024 and meta["eot_id"] == tok.eot_id == 0
    assert meta["tokenizer"] == {"kind": "bpe", "vocab_size": 1024, "min_frequency": 2}
    for split in ("val", "heldout", "train"):
        ids = np.load(corpus / f"{split}.npy")
        assert ids[0] == tok.eot_id and ids.max() < 1024
        text = tok.decode(ids).replace("<|endoftext|>", "")
        assert meta["bytes"][split] == len(text.encode("utf-8"))  # bytes the tokens stand for, exactly
        assert meta["bytes_per_token"][split] == pytest.approx(meta["bytes"][split] / ids.size)
        assert meta["bytes_per_token"][split] > 1.5  # BPE: nats/token is not nats/byte
        docs = np.load(corpus / f"{split}_docs.npy")
        np.testing.assert_array_equal(docs, np.flatnonzero(ids == tok.eot_id))
    bpt = meta["bytes_per_token"]
    assert bpt["train"] > 1.5 * max(bpt["val"], bpt["heldout"])  # its words are tokens; val's and held-out's are not
    # Each val document is the start of one source file (whole documents; the last one cut).
    val = np.load(corpus / "val.npy")
    sources = [p.read_text() for p in sorted((tmp_path / "docs").iterdir())]
    for piece in np.split(val, np.load(corpus / "val_docs.npy")[1:]):
        text = tok.decode(piece[1:])
        assert any(s.startswith(text) for s in sources) and text


def test_cut_document_matches_the_corpus_rule(tmp_path):
    """For `bytes`, cut_document is the corpus's token rule; for `bpe`, the corpus holds exactly its pieces."""
    tok = BytesTokenizer()
    ids = tok.encode("abcdefghij").tolist()  # end-of-text + 10 bytes, cap 4: EOT a b c | EOT d e f | EOT g h i | EOT j
    assert [p.tolist() for p in cut_document(tok, "abcdefghij", 4)] == [
        ids[:4],
        [256, *ids[4:7]],
        [256, *ids[7:10]],
        [256, ids[10]],
    ]
    assert [p.tolist() for p in cut_document(tok, "abc", 4)] == [ids[:4]]
    words = write_corpus(tmp_path / "docs", files=24)
    source = {"kind": "text", "paths": ["docs/*.txt"]}
    sizes = {"train_tokens": 2500, "val_tokens": 300, "heldout_tokens": 200, "seed": 0}
    bpe, record = train_on_train_split(
        source, {"kind": "bpe", "vocab_size": 400}, base_dir=tmp_path, max_doc_tokens=64, **sizes
    )
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / TOKENIZER_FILE).write_text(bpe.to_json())
    (tmp_path / "tok" / "meta.json").write_text(json.dumps(record))
    meta = build_corpus(source, {"kind": "bpe", "vocab_size": 400}, base_dir=tmp_path, out_dir=tmp_path / "c",
                        max_doc_tokens=64, tokenizer_dir=tmp_path / "tok", **sizes)  # fmt: skip
    assert meta["tokens_dropped"] >= 0 and meta["documents"]["train"] > meta["splits"]["train"]["source_documents"]  # cut
    train = np.load(tmp_path / "c" / "train.npy")
    stored = {tuple(p.tolist()) for p in np.split(train, np.load(tmp_path / "c" / "train_docs.npy")[1:])}
    expected = {
        tuple(p.tolist()) for name in words for p in cut_document(bpe, (tmp_path / "docs" / name).read_bytes(), 64)
    }
    assert all(len(p) <= 64 for p in expected)
    assert len(stored & expected) >= len(stored) - 1  # every train piece but the one cut at train's end


def test_bpe_runs_end_to_end_and_reports_nats_per_token_and_bits_per_byte(tmp_path):
    spec = write_spec(tmp_path)
    store = tmp_path / "store"
    preview = hepc("data", str(spec), "--json", store=store)  # before any run: the BPE is trained in a scratch folder
    assert "training it in a scratch folder" in preview.stderr and not store.exists()  # nothing written
    plan = hepc("plan", str(spec), store=store).stdout
    assert "tokenizer" in plan and "text-bpe1024" in plan
    res = json.loads(hepc("run", str(spec), "--json", "--quiet", store=store).stdout)
    built = json.loads(hepc("data", str(spec), "--json", store=store).stdout)["corpora"][0]
    dry = json.loads(preview.stdout)["corpora"][0]
    assert (dry["origin"], built["origin"]) == ("dry pass", "store")
    assert dry["splits"] == built["splits"] and dry["source"] == built["source"]  # the preview is the corpus
    loaded = load_spec(spec)
    compiled = compile_spec(loaded)
    the_store = Store(store)
    corpus_dir = the_store.find(compiled.graph[compiled.populations[0].corpus_key])
    meta = json.loads((corpus_dir / "meta.json").read_text())
    best = res["best_single"]
    assert best["val_bpb"] == pytest.approx(best["val_loss"] / math.log(2) / meta["bytes_per_token"]["val"])
    assert res["corpus"]["vocab_size"] == 1024 and res["corpus"]["tokenizer"]["kind"] == "bpe"
    shown = hepc("results", str(spec), store=store).stdout
    bpt = meta["bytes_per_token"]["val"]
    assert f"val loss in nats/token (BPE tokens of {bpt:.2f} bytes on val" in shown
    # The model's vocabulary follows the tokenizer's.
    from safetensors.numpy import load_file

    cycle = the_store.find(compiled.graph[compiled.populations[0].members[0].cycle_key])
    shapes = {k: v.shape for k, v in load_file(cycle / "model.safetensors").items()}
    assert (1024, 32) in shapes.values()
    # load_tokenizer gives the tokenizer the corpus was built with.
    tok = load_tokenizer(compiled, the_store)
    assert isinstance(tok, BpeTokenizer) and tok.vocab_size == 1024 and tok.eot_id == 0
    val = np.load(corpus_dir / "val.npy")
    first = val[: np.load(corpus_dir / "val_docs.npy")[1]]
    np.testing.assert_array_equal(tok.encode(tok.decode(first[1:])), first)
    assert tok.decode(tok.encode("héllo wörld")) == "<|endoftext|>héllo wörld"
    # Cached: a second run trains nothing, the tokenizer included.
    again = hepc("plan", str(spec), store=store).stdout
    assert "tokenizer" in again and "+ new" not in again


def test_load_tokenizer_before_the_run_says_what_to_do(tmp_path):
    spec = write_spec(tmp_path)
    compiled = compile_spec(load_spec(spec))
    with pytest.raises(HepcError, match="not trained yet.*hepc run"):
        load_tokenizer(compiled, Store(tmp_path / "store"))
    bytes_spec = compile_spec(load_spec(spec, ["data.tokenizer=bytes"]))
    assert isinstance(load_tokenizer(bytes_spec, Store(tmp_path / "store")), BytesTokenizer)


def keys(spec: Path, *overrides: str) -> dict[str, str]:
    compiled = compile_spec(load_spec(spec, list(overrides)))
    return {s.kind: s.key for s in compiled.graph if s.kind in ("tokenizer", "corpus")}


def test_keys_are_stable_and_cover_source_split_rule_and_config(tmp_path):
    spec = write_spec(tmp_path)
    base = keys(spec)
    assert set(base) == {"tokenizer", "corpus"}
    assert keys(spec) == base
    assert keys(spec, "model.d_model=64", "population.cycles=3") == base  # training does not touch them
    for override in ("data.tokenizer.vocab_size=512", "data.tokenizer.min_frequency=3", "data.val_tokens=1400",
                     "data.seed=1", "data.max_doc_tokens=256"):  # fmt: skip
        changed = keys(spec, override)
        assert changed["tokenizer"] != base["tokenizer"] and changed["corpus"] != base["corpus"], override
    (tmp_path / "docs" / "f00.txt").write_text("changed\n")
    changed = keys(spec)
    assert changed["tokenizer"] != base["tokenizer"] and changed["corpus"] != base["corpus"]
    # The string forms keep their shape: no tokenizer step, the tokenizer name in the corpus params.
    compiled = compile_spec(load_spec(spec, ["data.tokenizer=bytes"]))
    corpus = next(s for s in compiled.graph if s.kind == "corpus")
    assert corpus.inputs == {} and corpus.params["tokenizer"] == "bytes" and corpus.name == "text-bytes"
    assert "tokenizer" not in {s.kind for s in compiled.graph}


def test_plan_of_a_bpe_spec_never_imports_torch(tmp_path):
    spec = write_spec(tmp_path)
    code = (
        "import sys\nfrom hepc.cli.main import main\nsys.argv = ['hepc', 'plan', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    env = {**os.environ, "HEPC_STORE": str(tmp_path / "store")}
    out = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True, cwd=ROOT, env=env,
                         check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "tokenizer text-bpe1024" in out.stdout


@pytest.mark.parametrize(
    "tokenizer, message",
    [
        ("{kind: bpe, vocab_size: 100}", "data.tokenizer.vocab_size: must be >= 257 (got 100)"),
        ("{kind: bpe}", "data.tokenizer.vocab_size: required key is missing"),
        ("{kind: bpe, vocab_size: 300, merges: 2}", "data.tokenizer.merges: unknown key"),
        ("{kind: wordpiece, vocab_size: 300}", "data.tokenizer: must be 'bytes', 'none' or a mapping with kind: bpe"),
        ("bpe", "data.tokenizer: must be 'bytes' or 'none' (got 'bpe')"),
    ],
)
def test_bad_tokenizer_specs_are_located(tmp_path, tokenizer, message):
    spec = write_spec(tmp_path, tokenizer)
    out = hepc("validate", str(spec), store=tmp_path / "store", check=False)
    assert out.returncode == 2
    assert "bpe.yaml:5:" in out.stderr and message in out.stderr, out.stderr
    assert not (tmp_path / "store").exists()
