"""The corpus and tokenizer steps' outputs, byte for byte: the sha256 of every file they write for a
set of small sources (text under several document rules, JSON Lines, Parquet, the standard library,
token shards with and without val_paths, synthetic, a BPE), against digests recorded in
tests/fixtures/corpus_outputs.json. The fixture was written by the implementation that held every
piece in memory (with the per-file token counts of compressed corpora); the streamed, spilled one
(hepc/data/spill.py) must write the same bytes.

    python tests/test_corpus_outputs.py --write   # re-record (only when outputs are meant to change)
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from hepc.data import DataError, build_corpus

FIXTURE = Path(__file__).parent / "fixtures" / "corpus_outputs.json"
WORDS = ["the", "of", "and", "data", "model", "tokens", "train", "split", "over", "ünïcode", "日本", "x", "—"]
VOCAB, EOT = 1000, 999


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) + ("\n" if rng.random() < 0.1 else "") for _ in range(n_words))


def make_inputs(folder: Path) -> None:
    """Every source's files, from fixed seeds (the same bytes on any machine)."""
    rng = random.Random(0)
    files = folder / "files"
    files.mkdir(parents=True)
    for i in range(40):  # one document each; some long (many pieces), some tiny, two duplicates, one empty
        size = rng.choice([3, 40, 200, 900, 3000])
        (files / f"f{i:02d}.txt").write_text(_text(rng, size), encoding="utf-8")
    (files / "f40.txt").write_text((files / "f03.txt").read_text(encoding="utf-8"), encoding="utf-8")
    (files / "f41.txt").write_text((files / "f17.txt").read_text(encoding="utf-8"), encoding="utf-8")
    (files / "f42.txt").write_text("", encoding="utf-8")
    sep = folder / "sep"
    sep.mkdir()
    for i in range(6):  # many documents, the source much larger than the corpus (Kept prunes often)
        docs = [_text(rng, rng.choice([5, 30, 120, 600])) for _ in range(150)]
        docs[7] = docs[3]  # a duplicate in the same file
        (sep / f"s{i}.txt").write_text("\n%\n".join(docs) + "\n", encoding="utf-8")
    with open(folder / "data.jsonl", "w", encoding="utf-8") as f:
        for i in range(600):
            f.write(json.dumps({"id": i, "text": _text(rng, rng.choice([4, 50, 150, 700]))}) + "\n")
            if i % 97 == 5:
                f.write(json.dumps({"id": i, "text": "a repeated record"}) + "\n")
    tokens = folder / "tokens"
    tokens.mkdir()
    nprng = np.random.default_rng(0)
    docs = [np.concatenate([[EOT], nprng.integers(0, EOT, size=int(nprng.choice([2, 30, 90, 400])))]) for _ in range(500)]
    docs[11] = docs[4]
    stream = np.concatenate([nprng.integers(0, EOT, size=7)] + docs)  # ids before the first end-of-text: a document
    for i, part in enumerate(np.array_split(stream, 3)):  # shards cut documents anywhere
        np.save(tokens / f"train_{i}.npy", part.astype(np.int32))
    np.concatenate(docs[:40]).astype("<u2").tofile(tokens / "val_0.bin")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return
    texts = [_text(rng, rng.choice([4, 60, 300])) for _ in range(400)]
    pq.write_table(pa.table({"text": texts}), folder / "rows.parquet", row_group_size=64)


SIZES = {"train_tokens": 9_000, "val_tokens": 1_500, "heldout_tokens": 700, "test_tokens": 800, "seed": 3}
SMALL = {"train_tokens": 3_000, "val_tokens": 600, "heldout_tokens": 300, "test_tokens": 0, "seed": 0}
BYTES, NONE = {"kind": "bytes"}, {"kind": "none"}
TOKENS = {"kind": "tokens", "paths": ["tokens/train_*.npy"], "vocab_size": VOCAB, "eot_id": EOT, "bytes_per_token": 3.5}
SYNTHETIC = {"kind": "synthetic", "alphabet_size": 32, "order": 2, "concentration": 0.1, "doc_tokens": 300, "seed": 0}
BPE = {"kind": "bpe", "vocab_size": 400}

CASES = {  # name: (source, tokenizer, sizes, max_doc_tokens)
    "files": ({"kind": "text", "paths": ["files/*.txt"]}, BYTES, SIZES, 64),
    "files-uncut": ({"kind": "text", "paths": ["files/*.txt"]}, BYTES, SIZES, None),
    "files-seed": ({"kind": "text", "paths": ["files/*.txt"]}, BYTES, {**SIZES, "seed": 11}, 200),
    "separator": ({"kind": "text", "paths": ["sep/*.txt"], "documents": {"separator": "%"}}, BYTES, SMALL, 32),
    "separator-big": ({"kind": "text", "paths": ["sep/*.txt"], "documents": {"separator": "%"}}, BYTES, SIZES, 128),
    "regex": ({"kind": "text", "paths": ["sep/s0.txt", "sep/s1.txt"], "documents": {"regex": "\n%\n"}}, BYTES, SMALL, 50),
    "jsonl": ({"kind": "text", "paths": ["data.jsonl"], "documents": "jsonl"}, BYTES, SIZES, 100),
    "parquet": ({"kind": "text", "paths": ["rows.parquet"], "documents": "parquet"}, BYTES, SMALL, 80),
    "pystdlib": ({"kind": "pystdlib", "documents": {"regex": "\n\n(?=\\S)"}}, BYTES, SIZES, 256),
    "tokens": (TOKENS, NONE, SIZES, 50),
    "tokens-uncut": (TOKENS, NONE, SMALL, None),
    "tokens-val": ({**TOKENS, "val_paths": ["tokens/val_0.bin"], "bytes_per_token": None}, NONE, SIZES, 64),
    "synthetic": (SYNTHETIC, BYTES, SIZES, 64),
    "bpe-jsonl": ({"kind": "text", "paths": ["data.jsonl"], "documents": "jsonl"}, BPE, SMALL, 64),
    "bpe-files": ({"kind": "text", "paths": ["files/*.txt"]}, BPE, SMALL, None),
    "bpe-synthetic": (SYNTHETIC, {"kind": "bpe", "vocab_size": 300}, SMALL, 64),
    "too-small": ({"kind": "text", "paths": ["files/f0*.txt"]}, BYTES, SIZES, 64),
    "too-small-tokens": ({"kind": "tokens", "paths": ["tokens/train_0.npy"], "vocab_size": VOCAB, "eot_id": EOT}, NONE,
                         {**SIZES, "train_tokens": 90_000}, 50),
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_case(folder: Path, name: str, scratch: Path | None = None) -> dict:
    """{output file: sha256} of one case (the tokenizer step's files under `tokenizer/`), or {"error": message}."""
    source, tokenizer, sizes, cap = CASES[name]
    out = folder / "out" / name
    tokenizer_dir = None
    try:
        if tokenizer.get("kind") == "bpe":
            from hepc.data.bpe_training import train_on_train_split
            from hepc.data.tokenizers import TOKENIZER_FILE

            kwargs = {"scratch_dir": scratch} if scratch is not None else {}
            bpe, record = train_on_train_split(source, tokenizer, base_dir=folder, max_doc_tokens=cap, **sizes, **kwargs)
            tokenizer_dir = out / "tokenizer"
            tokenizer_dir.mkdir(parents=True)
            (tokenizer_dir / TOKENIZER_FILE).write_text(bpe.to_json(), encoding="utf-8")
            meta = {"tokenizer": bpe.config, "vocab_size": bpe.vocab_size, "eot_id": bpe.eot_id, **record}
            (tokenizer_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        kwargs = {"scratch_dir": scratch} if scratch is not None else {}
        build_corpus(source, tokenizer, base_dir=folder, out_dir=out / "corpus", max_doc_tokens=cap,
                     tokenizer_dir=tokenizer_dir, **sizes, **kwargs)
    except DataError as e:
        left = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()] if out.exists() else []
        return {"error": str(e), **({"left behind": left} if left else {})}  # a failed build writes nothing
    return {str(p.relative_to(out)): _sha(p) for p in sorted(out.rglob("*")) if p.is_file()}


def _cases() -> list[str]:
    names = list(CASES)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        names.remove("parquet")
    return names


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus-outputs")
    make_inputs(folder)
    return folder


@pytest.mark.parametrize("name", _cases())
def test_outputs_are_byte_identical_to_the_recorded_ones(inputs, name, tmp_path):
    recorded = json.loads(FIXTURE.read_text())
    if name == "pystdlib" and recorded["python"] != sys.version.split()[0]:
        pytest.skip(f"the standard library's digests were recorded on Python {recorded['python']}")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert build_case(inputs, name, scratch) == recorded["cases"][name]
    assert not list(scratch.iterdir())  # scratch files are gone once the step is done (or failed)


def test_doc_key_is_doc_keys_a_document_at_a_time():
    from hepc.data.carve import doc_key, doc_keys

    rng = random.Random(1)
    digests = [0, 1, (1 << 64) - 1, 1 << 64, (1 << 128) - 1] + [rng.getrandbits(128) for _ in range(5000)]
    for seed in (0, 3, 11, 2**63, 2**64 - 1):
        assert [doc_key(d, seed) for d in digests] == doc_keys(digests, seed).tolist()


def main() -> int:
    import tempfile

    if sys.argv[1:] != ["--write"]:
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_inputs(folder)
        cases = {name: build_case(folder, name) for name in _cases()}
    FIXTURE.write_text(json.dumps({"python": sys.version.split()[0], "cases": cases}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE} ({len(cases)} cases)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
