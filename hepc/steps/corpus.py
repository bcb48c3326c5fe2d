"""corpus: read the source, tokenize, cut documents at max_doc_tokens, carve val / test / held-out /
train by whole documents (docs/data-splits.md)."""

from __future__ import annotations

from pathlib import Path


def split_args(step) -> dict:
    """The split rule of a corpus (or tokenizer) step: sizes, seed, piece cap, where paths are relative to."""
    p = step.params
    return {
        "train_tokens": p["train_tokens"],
        "val_tokens": p["val_tokens"],
        "heldout_tokens": p["heldout_tokens"],
        "test_tokens": p.get("test_tokens", 0),
        "seed": p["seed"],
        "max_doc_tokens": p.get("max_doc_tokens"),
        "base_dir": Path(step.context["base_dir"]),
    }


def run(step, inputs, out: Path, work: Path, ctx) -> dict:
    from hepc.data import build_corpus
    from hepc.data.tokenizers import tokenizer_config

    meta = build_corpus(
        step.context["source"],
        tokenizer_config(step.params["tokenizer"]),
        **split_args(step),
        out_dir=out,
        tokenizer_dir=Path(inputs["tokenizer"]) if inputs.get("tokenizer") else None,
        scratch_dir=work,  # the pieces carving may need, on disk (hepc/data/spill.py); removed when done
    )
    return {k: meta[k] for k in ("vocab_size", "tokenizer", "tokens", "bytes_per_token") if k in meta} | (
        {"entropy_rate_nats": meta["entropy_rate_nats"]} if "entropy_rate_nats" in meta else {}
    )
