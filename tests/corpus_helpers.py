"""A hand-made training corpus for the trainer's unit tests (no corpus step, no tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def counting_corpus(path: Path, vocab: int, tokens: int = 2048) -> Path:
    """`tokens` tokens in documents of random length; inside a document each token is the previous
    + 1 (mod `vocab`). Writes train.npy, train_docs.npy and meta.json into `path`."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 120, 40)
    lengths = lengths[np.cumsum(lengths) <= tokens]
    lengths = np.append(lengths, tokens - lengths.sum())
    docs = [(rng.integers(vocab) + np.arange(n)) % vocab for n in lengths]
    np.save(path / "train.npy", np.concatenate(docs).astype(np.uint16))
    np.save(path / "train_docs.npy", np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
    (path / "meta.json").write_text(json.dumps({"vocab_size": vocab}))
    return path
