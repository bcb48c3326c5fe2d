"""The trainer's unit tests: a hand-made corpus (no corpus step, no tokenizer) and output comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from hepc.train.checkpoint import load_state, load_weights


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


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_outputs(a, b):
    wa, wb = load_weights(a / "model.safetensors"), load_weights(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = load_state(a / "state.pt"), load_state(b / "state.pt")
    assert sa["global_step"] == sb["global_step"]
    assert sa["optimizer"]["state"].keys() == sb["optimizer"]["state"].keys()
    for p in sa["optimizer"]["state"]:
        for k, v in sa["optimizer"]["state"][p].items():
            assert torch.equal(v, sb["optimizer"]["state"][p][k])

    def exact(records):  # timing fields legitimately differ between runs
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]

    assert exact(read_metrics(a)) == exact(read_metrics(b))
    sum_a, sum_b = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert {k: v for k, v in sum_a.items() if k != "wall_s"} == {k: v for k, v in sum_b.items() if k != "wall_s"}
