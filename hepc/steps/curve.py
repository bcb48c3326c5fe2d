"""curve: loss vs budget. Snapshot (p, c) is available at ((c−1)·P + p)·E epochs (round-robin);
at each point the prior is refit on the snapshots available so far (on held-out only) and top-K is
scored on val, and on test when the corpus has one (the same ensembles: test chooses nothing).
The shrinkage prior re-runs its cross-validation at every point; curve.json's `fits` lists each
point's fit (held-out NLL vs uniform, and the chosen strength). The learned prior's fits at all points
run batched (``fit_prior_prefixes``); val stays on disk and every point's ensembles are scored in one
pass over it, a column block at a time, so memory stays bounded at any val size."""

from __future__ import annotations

import json
from pathlib import Path

from hepc.steps.prior import bpb_of, heldout_documents, load_scores, score_summary, stream_scores

MAX_POINTS_EVERY_SNAPSHOT = 64  # beyond this, evaluate once per completed round of trajectories


def run(step, inputs, out: Path, work: Path, ctx) -> dict:
    from hepc.prior.curve import loss_curve, round_points

    prior, budgets, members = step.params["prior"], step.params["budgets"], step.params["members"]
    fit_P, val_P = load_scores(inputs["heldout"]), stream_scores(inputs["val"])  # val: read in blocks
    first = score_summary(inputs["val"][0])

    order = sorted(range(len(members)), key=lambda i: (members[i][2], i))
    costs = [float(members[i][2]) for i in order]
    n_traj = max(t for t, _, _ in members)
    points = None
    if len(order) > MAX_POINTS_EVERY_SNAPSHOT:
        points = round_points(len(order), n_traj)
    if prior["kind"] == "shrinkage":
        options = {"doc_starts": heldout_documents(inputs), "folds": prior["folds"],
                   "strengths": prior["strengths"], "em_iters": prior["em_iters"]}
    else:
        options = {"steps": prior["steps"], "lr": prior["lr"]}
    fits: list[dict] = []
    test_P = stream_scores(inputs["test"]) if inputs.get("test") else None  # scored, never chosen on
    rows = loss_curve(fit_P, val_P, order, costs, budgets, prior=prior["kind"], points=points, fits=fits,
                      P_test=test_P, **options)
    first_test = score_summary(inputs["test"][0]) if test_P is not None else None
    for r in rows:
        r["val_bpb"] = bpb_of(r["val_loss"], first)
        if first_test is not None:
            r["test_bpb"] = bpb_of(r["test_loss"], first_test)
    (out / "curve.json").write_text(json.dumps({"points": rows, "fits": fits}, indent=1) + "\n")
    final = [r for r in rows if r["members"] == len(order)]
    summary = {"points": len(rows), "final_best_val_loss": min(r["val_loss"] for r in final)}
    if test_P is not None:
        summary["final_test_loss_k_all"] = [r["test_loss"] for r in final][-1]
    return summary
