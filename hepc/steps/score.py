"""score: per-token probability of the correct token of one snapshot on one split (float32)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def run(step, inputs, out: Path, work: Path, ctx) -> dict:
    import numpy as np

    from hepc.train.score import score_tokens

    split = step.params["split"]
    corpus = Path(inputs["corpus"])
    meta = json.loads((corpus / "meta.json").read_text())
    tokens = np.load(corpus / f"{split}.npy")
    probs = score_tokens(
        model=step.context["model"],
        weights_path=Path(inputs["snapshot"]) / "model.safetensors",
        tokens=tokens,
        vocab_size=meta["vocab_size"],
        seq_len=step.context["seq_len"],
        runtime=ctx.runtime,
    )
    np.save(out / "probs.npy", probs.astype(np.float32))
    nll = float(-np.log(np.maximum(probs.astype(np.float64), 1e-12)).mean())
    bytes_per_token = (meta.get("bytes_per_token") or {}).get(split)  # null for token shards without it
    return {
        "split": split,
        "tokens": int(probs.size),
        "loss": nll,
        "bpb": nll / math.log(2) / bytes_per_token if bytes_per_token else None,
    }
