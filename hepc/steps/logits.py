"""logits: the top-K ensembles of a fitted prior, re-scored on val by weighted LOGIT averaging.

The ablation of docs/method.md §7 (q0 averages probabilities; Slowrun PR #55 measured logit averaging
≈0.011 nats worse). Needs the members' full predictive distributions, so it runs the snapshots again.
"""

from __future__ import annotations

import json
from pathlib import Path

from hepc.steps.prior import bpb_of


def run(step, inputs, out: Path, work: Path, ctx) -> dict:
    import numpy as np

    from hepc.train.score import logit_ensemble_losses

    prior = json.loads((Path(inputs["prior"]) / "prior.json").read_text())
    position = {(m["trajectory"], m["cycle"]): i for i, m in enumerate(prior["members"])}
    ensembles = [
        [(position[tuple(member)], w) for member, w in zip(e["members"], e["weights"])] for e in prior["ensembles"]
    ]
    corpus = Path(inputs["corpus"])
    meta = json.loads((corpus / "meta.json").read_text())
    losses = logit_ensemble_losses(
        model=step.context["model"],
        weights_paths=[Path(p) / "model.safetensors" for p in inputs["snapshots"]],
        ensembles=ensembles,
        tokens=np.load(corpus / "val.npy"),
        vocab_size=meta["vocab_size"],
        seq_len=step.context["seq_len"],
        runtime=ctx.runtime,
    )
    reference = {"loss": prior["ensembles"][0]["val_loss"], "bpb": prior["ensembles"][0]["val_bpb"]}
    rows = [
        {**e, "val_loss": loss, "val_bpb": bpb_of(loss, reference), "val_loss_probability": e["val_loss"]}
        for e, loss in zip(prior["ensembles"], losses)
    ]
    (out / "logits.json").write_text(json.dumps({"aggregate": "logit", "ensembles": rows}, indent=1) + "\n")
    return {"best_ensemble_val_loss": min(losses)}
