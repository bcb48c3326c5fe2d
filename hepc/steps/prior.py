"""prior: fit the member weights on the held-out slice, then score the top-K ensembles on val.

Learned prior = softmax weights minimising the mixture NLL on held-out (method.md §6.3); top-K by
weight, renormalised, no refit (§6.4); weighted probability averaging on val (§6.5, §7).
"""

from __future__ import annotations

import json
from pathlib import Path


def load_scores(folders: list[Path]):
    """Stack the per-token probabilities of several score objects into an (M, N) float32 matrix."""
    import numpy as np

    return np.stack([np.load(Path(f) / "probs.npy") for f in folders])


def score_summary(folder: Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())["summary"]


def bpb_of(loss: float, reference: dict) -> float | None:
    """Bits per byte of a loss on the same split as `reference` (None when bytes are unknown)."""
    if reference.get("bpb") is None or not reference.get("loss"):
        return None
    return loss * reference["bpb"] / reference["loss"]


def run(step, inputs, out: Path, work: Path, ctx) -> dict:
    from hepc.ensemble import ensemble_loss, fit_prior, mixture_nll, top_k, uniform_weights

    prior, budgets = step.params["prior"], step.params["budgets"]
    fit_P, val_P = load_scores(inputs["heldout"]), load_scores(inputs["val"])
    val_summaries = [score_summary(f) for f in inputs["val"]]
    heldout_summaries = [score_summary(f) for f in inputs["heldout"]]
    m = fit_P.shape[0]

    if prior["kind"] == "learned":
        fit = fit_prior(fit_P, steps=prior["steps"], lr=prior["lr"])
        weights, fit_info = fit.weights, {"nll": fit.nll, "uniform_nll": fit.uniform_nll, "steps": fit.steps}
    else:
        weights = uniform_weights(m)
        nll = mixture_nll(fit_P, weights)
        fit_info = {"nll": nll, "uniform_nll": nll, "steps": 0}

    members = []
    for i, (t, c, cost) in enumerate(step.params["members"]):
        members.append({
            "trajectory": t,
            "cycle": c,
            "cost_epochs": cost,
            "weight": float(weights[i]),
            "heldout_loss": heldout_summaries[i]["loss"],
            "val_loss": val_summaries[i]["loss"],
            "val_bpb": val_summaries[i]["bpb"],
        })
    ensembles = []
    for label in budgets:
        k = m if label == "all" else int(label)
        idx, w = top_k(weights, k)
        loss = ensemble_loss(val_P, idx, w)
        ensembles.append({
            "k": int(len(idx)),
            "k_label": label,
            "members": [[members[i]["trajectory"], members[i]["cycle"]] for i in idx.tolist()],
            "weights": [float(x) for x in w],
            "val_loss": loss,
            "val_bpb": bpb_of(loss, val_summaries[0]),
        })
    result = {"prior": prior, "fit": fit_info, "members": members, "ensembles": ensembles}
    (out / "prior.json").write_text(json.dumps(result, indent=1) + "\n")
    best_single = min(members, key=lambda r: r["val_loss"])
    best_ens = min(ensembles, key=lambda r: r["val_loss"])
    return {
        "best_single_val_loss": best_single["val_loss"],
        "best_ensemble_val_loss": best_ens["val_loss"],
        "best_ensemble_k": best_ens["k"],
        "fit_nll": fit_info["nll"],
        "uniform_nll": fit_info["uniform_nll"],
    }
