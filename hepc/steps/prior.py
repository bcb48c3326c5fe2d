"""prior: fit the member weights on the held-out slice, then score the top-K ensembles on val.

Learned prior = softmax weights minimising the mixture NLL on held-out (docs/method.md §6.3); top-K by
weight, renormalised, no refit (§6.5); weighted probability averaging on val (§6.2, §6.6). The
`shrinkage` prior pulls the same fit toward uniform, its strength chosen by cross-validation over
held-out documents (``hepc.prior.shrinkage.fit_prior_shrinkage``, §6.4). Every fit also reports its val NLL next
to the uniform prior's (and its test NLL when the corpus has a test split): a report only, val and test
choose nothing.
"""

from __future__ import annotations

import json
from pathlib import Path


def load_scores(folders: list[Path]):
    """Stack the per-token probabilities of several score objects into an (M, N) float32 matrix."""
    import numpy as np

    return np.stack([np.load(Path(f) / "probs.npy") for f in folders])


def stream_scores(folders: list[Path]):
    """The same (M, N) matrix as ``load_scores``, left on disk: a ``RowStack`` of the members' files.

    For val (10M tokens × 480 members in the paper: 19 GB as float32), which the scoring functions
    of ``hepc.prior`` read a column block at a time, straight from each ``probs.npy``.
    """
    from hepc.prior.rows import RowStack

    return RowStack.from_npy([Path(f) / "probs.npy" for f in folders])


def score_summary(folder: Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())["summary"]


def bpb_of(loss: float, reference: dict) -> float | None:
    """Bits per byte of a loss on the same split as `reference` (None when bytes are unknown)."""
    if reference.get("bpb") is None or not reference.get("loss"):
        return None
    return loss * reference["bpb"] / reference["loss"]


def heldout_documents(inputs: dict):
    """Document start offsets into the corpus's heldout.npy (its `heldout_docs.npy`), or None.

    None when the step has no corpus input (kinds other than `shrinkage`) or the corpus predates
    held-out document boundaries; the shrinkage fit then folds contiguous blocks of tokens.
    """
    import numpy as np

    corpus = inputs.get("corpus")
    if corpus is None or not (Path(corpus) / "heldout_docs.npy").is_file():
        return None
    return np.load(Path(corpus) / "heldout_docs.npy", allow_pickle=False)


def fit_weights(prior: dict, fit_P, doc_starts=None):
    """(weights, fit info) of the prior `prior` (the step's `prior` params) on held-out P (M×N).

    Fit info: `nll` and `uniform_nll` on the held-out fit data, `steps` (optimizer steps or EM
    updates) and, for `shrinkage`, how the strength was chosen (``ShrinkageFit``).
    """
    from hepc.prior.fit import fit_prior
    from hepc.prior.rows import mixture_nll, uniform_weights
    from hepc.prior.shrinkage import fit_prior_shrinkage

    kind = prior["kind"]
    if kind == "learned":
        fit = fit_prior(fit_P, steps=prior["steps"], lr=prior["lr"])
        return fit.weights, {"nll": fit.nll, "uniform_nll": fit.uniform_nll, "steps": fit.steps}
    if kind == "shrinkage":
        fit = fit_prior_shrinkage(fit_P, doc_starts, folds=prior["folds"], strengths=prior["strengths"],
                                  iters=prior["em_iters"])
        return fit.weights, {
            "nll": fit.nll,
            "uniform_nll": fit.uniform_nll,
            "steps": fit.steps,
            "strength": fit.strength,
            "rule": fit.rule,
            "min_strength": fit.min_strength,
            "strengths": fit.strengths,
            "cv_nll": fit.cv_nll,
            "cv_se": fit.cv_se,
            "folds": fit.folds,
            "fold_rule": fit.fold_rule,
            "documents": fit.documents,
            "fold_sizes": fit.fold_sizes,
        }
    if kind == "uniform":
        weights = uniform_weights(fit_P.shape[0])
        nll = mixture_nll(fit_P, weights)
        return weights, {"nll": nll, "uniform_nll": nll, "steps": 0}
    raise ValueError(f"unknown prior kind {kind!r}")


def run(step, inputs, out: Path, work: Path, ctx) -> dict:
    import numpy as np

    from hepc.prior.rows import uniform_weights
    from hepc.prior.select import ensemble_losses, top_k

    prior, budgets = step.params["prior"], step.params["budgets"]
    fit_P, val_P = load_scores(inputs["heldout"]), stream_scores(inputs["val"])
    val_summaries = [score_summary(f) for f in inputs["val"]]
    heldout_summaries = [score_summary(f) for f in inputs["heldout"]]
    test_summaries = [score_summary(f) for f in inputs.get("test") or []]
    m = fit_P.shape[0]

    # The weights see held-out only: val and test are scored with them, never fit or chosen on.
    weights, fit_info = fit_weights(prior, fit_P, heldout_documents(inputs))
    # Reported, never used to choose: the prior's val NLL with every member, against uniform's.
    everyone = np.arange(m)
    chosen = [top_k(weights, m if label == "all" else int(label)) for label in budgets]
    scored = [(everyone, weights), (everyone, uniform_weights(m)), *chosen]
    # One pass over val (read from disk a column block at a time) scores every ensemble.
    val_nll, uniform_val_nll, *losses = ensemble_losses(val_P, scored)
    fit_info["val_nll"] = val_nll
    fit_info["uniform_val_nll"] = uniform_val_nll
    test_losses = None
    if test_summaries:
        fit_info["test_nll"], fit_info["uniform_test_nll"], *test_losses = ensemble_losses(
            stream_scores(inputs["test"]), scored)

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
        if test_summaries:
            members[-1]["test_loss"] = test_summaries[i]["loss"]
            members[-1]["test_bpb"] = test_summaries[i]["bpb"]
    ensembles = []
    for j, (label, (idx, w), loss) in enumerate(zip(budgets, chosen, losses)):
        ensembles.append({
            "k": len(idx),
            "k_label": label,
            "members": [[members[i]["trajectory"], members[i]["cycle"]] for i in idx.tolist()],
            "weights": [float(x) for x in w],
            "val_loss": loss,
            "val_bpb": bpb_of(loss, val_summaries[0]),
        })
        if test_losses is not None:
            ensembles[-1]["test_loss"] = test_losses[j]
            ensembles[-1]["test_bpb"] = bpb_of(test_losses[j], test_summaries[0])
    result = {"prior": prior, "fit": fit_info, "members": members, "ensembles": ensembles}
    (out / "prior.json").write_text(json.dumps(result, indent=1) + "\n")
    best_single = min(members, key=lambda r: r["val_loss"])
    best_ens = min(ensembles, key=lambda r: r["val_loss"])
    summary = {
        "best_single_val_loss": best_single["val_loss"],
        "best_ensemble_val_loss": best_ens["val_loss"],
        "best_ensemble_k": best_ens["k"],
        "fit_nll": fit_info["nll"],
        "uniform_nll": fit_info["uniform_nll"],
        "val_nll": fit_info["val_nll"],
        "uniform_val_nll": fit_info["uniform_val_nll"],
    }
    if test_losses is not None:
        summary["test_nll"] = fit_info["test_nll"]
        summary["uniform_test_nll"] = fit_info["uniform_test_nll"]
    if "strength" in fit_info:
        summary["strength"] = fit_info["strength"]
        summary["fold_rule"] = fit_info["fold_rule"]
    return summary
