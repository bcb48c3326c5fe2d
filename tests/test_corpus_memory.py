"""The corpus and tokenizer steps' memory does not grow with the corpus (hepc/data/spill.py): the
pieces carving may need lie in scratch files, their ids and their index rows alike, and each split
is written a chunk at a time. Measured with tracemalloc (Python and numpy allocations) in a fresh
process at two corpus sizes, 4x apart: the peak may grow by 8 bytes a document taken
(hepc/data/taken.py) and by buffers that fill up to their fixed size (a split's write buffer, while
val grows with the corpus), but neither with the pieces' index (72 bytes a piece, on disk; in memory
the BPE corpus step's peak grew ~97 bytes a piece) nor with the corpus (the in-memory
implementation's peak grew ~4x, ~20 bytes a token)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
INDEX_BYTES = 24  # allowed per added piece: nothing is kept per piece, this is the margin for documents and buffers

SCRIPT = r"""
import json, random, sys, tracemalloc
from pathlib import Path

from hepc.data import spill
from hepc.data.corpus import build_corpus

spill.RUN, spill.MAX_RUNS = 256, 4  # the external sort's fixed cost (up to 20 MB by default), reached at both sizes
folder, mb, kind, cap = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rng = random.Random(0)
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 9))) for _ in range(3000)]
written = 0
with open(folder / "data.jsonl", "w") as f:
    while written < mb * 1e6:
        text = " ".join(rng.choices(words, k=rng.randint(500, 5000)))
        f.write(json.dumps({"text": text}) + "\n")
        written += len(text)
source = {"kind": "text", "paths": ["data.jsonl"], "documents": "jsonl"}
tokens = written if kind == "bytes" else written // 3
sizes = {"train_tokens": int(tokens * 0.9), "val_tokens": tokens // 100, "heldout_tokens": tokens // 100, "seed": 0}
tokenizer_dir, peaks = None, {}
if kind == "bpe":
    from hepc.data.bpe_training import train_on_train_split
    from hepc.data.tokenizers import TOKENIZER_FILE

    tracemalloc.start()
    bpe, record = train_on_train_split(source, {"kind": "bpe", "vocab_size": 512}, base_dir=folder, max_doc_tokens=cap,
                                       **sizes)
    peaks["tokenizer"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    tokenizer_dir = folder / "tokenizer"
    tokenizer_dir.mkdir()
    (tokenizer_dir / TOKENIZER_FILE).write_text(bpe.to_json(), encoding="utf-8")
    (tokenizer_dir / "meta.json").write_text(json.dumps({"tokenizer": bpe.config, **record}))
tracemalloc.start()
meta = build_corpus(source, {"kind": "bpe", "vocab_size": 512} if kind == "bpe" else {"kind": "bytes"}, base_dir=folder,
                    out_dir=folder / "out", max_doc_tokens=cap, tokenizer_dir=tokenizer_dir, **sizes)
peaks["corpus"] = tracemalloc.get_traced_memory()[1]
print(json.dumps({"peaks": peaks, "tokens": sum(meta["tokens"].values()), "pieces": meta["source_pieces"]}))
"""


def _measure(tmp_path: Path, mb: float, kind: str, cap: int) -> dict:
    folder = tmp_path / f"{kind}-{mb}"
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), str(mb), kind, str(cap)], check=False,
                          capture_output=True, text=True, env=env, cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check(small: dict, large: dict, step: str) -> None:
    """The peak at 4x the corpus is at most the small one's plus INDEX_BYTES per added piece: never a share of
    the added tokens, nor their index."""
    assert large["tokens"] > 3.5 * small["tokens"]
    peak_small, peak_large = small["peaks"][step], large["peaks"][step]
    allowed = peak_small + INDEX_BYTES * (large["pieces"] - small["pieces"])
    assert peak_large <= allowed, (step, peak_small / MB, peak_large / MB, allowed / MB)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tracemalloc figures measured on Linux")
def test_corpus_step_memory_does_not_grow_with_the_corpus(tmp_path):
    small, large = _measure(tmp_path, 2, "bytes", 4096), _measure(tmp_path, 8, "bytes", 4096)
    _check(small, large, "corpus")  # measured: 2.0 and 2.0 MB; the in-memory builder's 35 and 139 MB
    assert large["peaks"]["corpus"] < 0.25 * 2 * large["tokens"]  # under a quarter of the corpus's uint16 ids (9x before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tracemalloc figures measured on Linux")
def test_bpe_steps_memory_does_not_grow_with_the_corpus(tmp_path):
    # short pieces: 1 MB is already four ENCODE_BATCHes of them (an index in memory would be most of the growth)
    small, large = _measure(tmp_path, 1, "bpe", 256), _measure(tmp_path, 4, "bpe", 256)
    for step in ("tokenizer", "corpus"):  # the library's own memory (Rust) is not traced, the steps' is
        _check(small, large, step)  # measured: 2.86 -> 2.82, 3.11 -> 3.28 MB (index in memory: 3.0 -> 3.9, 2.9 -> 4.0)
