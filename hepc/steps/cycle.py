"""cycle: train one cycle of one trajectory, starting from the previous cycle's saved state."""

from __future__ import annotations

from pathlib import Path


def run(step, inputs, out: Path, work: Path, ctx) -> dict:
    from hepc.train.loop import train_cycle

    p = step.params
    return train_cycle(
        model=p["model"],
        optimizer=p["optimizer"],
        schedule=p["schedule"],
        distill=p["distill"],
        perturb_scale=p["perturb_scale"],
        cycle_index=p["cycle"],
        trajectory_seed=p["trajectory_seed"],
        epochs_per_cycle=p["epochs_per_cycle"],
        seq_len=p["seq_len"],
        train_splits=tuple(p.get("train_splits", ("train",))),
        corpus_dir=inputs["corpus"],
        prev_dir=inputs.get("prev"),
        out_dir=out,
        work_dir=work,
        runtime=ctx.runtime,
        progress=ctx.progress,
        note=getattr(ctx, "note", None),  # a discarded checkpoint is reported here (default: stderr)
        guard=getattr(ctx, "guard", None),  # raises once this process no longer holds the step's lease
    )
