"""tokenizer: train a byte-level BPE on the train split of the corpus's split rule, never on val or
held-out (hepc/data/bpe_training.py); writes tokenizer.json (the `tokenizers` library's own format)
and meta.json (the config, end-of-text id, the merges learned and which pieces it was trained on)."""

from __future__ import annotations

import json
from pathlib import Path


def run(step, inputs, out: Path, work: Path, ctx) -> dict:
    from hepc.data.bpe_training import train_on_train_split
    from hepc.data.tokenizers import TOKENIZER_FILE
    from hepc.steps.corpus import split_args

    tokenizer, record = train_on_train_split(step.context["source"], step.params["tokenizer"], **split_args(step),
                                             scratch_dir=work)  # the raw pieces, on disk; removed when done
    (out / TOKENIZER_FILE).write_text(tokenizer.to_json(), encoding="utf-8")
    meta = {"tokenizer": tokenizer.config, "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id, **record}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {k: meta[k] for k in ("vocab_size", "learned_vocab", "trained_pieces", "trained_bytes", "rounds")}
