"""Spec → graph of content-hashed steps. Pure: no torch, no I/O but reading data-source digests.

Graph of one population (P trajectories × C cycles):

    corpus ─┬─ cycle t1-c001 ─ cycle t1-c002 ─ …      (each cycle: previous cycle of its trajectory)
            ├─ cycle t2-c001 ─ …
            ├─ score <cycle>-heldout, score <cycle>-val   (per snapshot)
            └─ prior (all scores) ; curve (all scores)

Prefix stability: a cycle's params hold only values fixed by its own index (schedule inside one
cycle, distillation on/off for this index, the perturbation scale of the boundary before it), so
raising `population.cycles` keeps every earlier key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hepc.errors import Problem, SpecError
from hepc.graph import Graph, StepSpec, make_step
from hepc.hashing import key_fields
from hepc.sizes import param_count, train_flops_per_token
from hepc.spec.load import LoadedSpec
from hepc.spec.models import Spec
from hepc.train.schedule import perturb_scale, steps_per_cycle

SCORER_VERSION = 1
TOKENIZER_VOCAB = {"bytes": 257}


def vocab_size(spec: Spec) -> int:
    src = spec.data.source
    return src.vocab_size if src.kind == "tokens" else TOKENIZER_VOCAB[spec.data.tokenizer]
SPLITS = ("heldout", "val")


@dataclass(frozen=True)
class Member:
    """One snapshot of the population: trajectory p, cycle c (1-based), available at `cost_epochs`."""

    trajectory: int
    cycle: int
    cost_epochs: float
    cycle_key: str
    score_keys: dict  # split → key


@dataclass
class Compiled:
    spec: Spec
    graph: Graph
    corpus_key: str
    members: list[Member]  # population order: trajectory-major (t1 c1..cC, t2 c1..cC, …)
    prior_key: str
    curve_key: str
    totals: dict
    warnings: list[str] = field(default_factory=list)

    def cycle_steps(self) -> list[StepSpec]:
        return [self.graph[m.cycle_key] for m in self.members]


def _data_identity(loaded: LoadedSpec, strict_data: bool) -> tuple[dict, list[str]]:
    from hepc.data.identity import DataError, source_identity

    cfg = loaded.spec.data.source.model_dump()
    try:
        return source_identity(cfg, loaded.base_dir), []
    except DataError as e:
        if strict_data:
            field_ = getattr(e, "field", "") or "data.source"
            message = getattr(e, "message", str(e))
            raise SpecError([Problem(loaded.where(field_), field_, message)]) from None
        # Terraform-style "known after the data exists": keys downstream are provisional.
        return {"kind": cfg["kind"], "unavailable": str(e)}, [f"data not available here: {e}"]


def compile_spec(loaded: LoadedSpec, *, strict_data: bool = False) -> Compiled:
    spec = loaded.spec
    d, pop = spec.data, spec.population
    identity, warnings = _data_identity(loaded, strict_data)
    graph = Graph()

    corpus = graph.add(
        make_step(
            "corpus",
            f"{d.source.kind}-{d.tokenizer}",
            params={
                "source": identity,
                "tokenizer": d.tokenizer,
                "train_tokens": d.train_tokens,
                "val_tokens": d.val_tokens,
                "heldout_tokens": d.heldout_tokens,
                "seed": d.seed,
            },
            inputs={},
            context={"source": d.source.model_dump(), "base_dir": str(loaded.base_dir.resolve())},
        )
    )

    trained_tokens = d.train_tokens - d.heldout_tokens
    steps_in_cycle = steps_per_cycle(pop.epochs_per_cycle, trained_tokens, spec.optimizer.batch_tokens)
    model = key_fields(spec.model)
    optimizer = key_fields(spec.optimizer)
    schedule = key_fields(pop.schedule)

    members: list[Member] = []
    for p in range(1, pop.trajectories + 1):
        prev: StepSpec | None = None
        for c in range(1, pop.cycles + 1):
            distilled = pop.distill is not None and c > pop.distill.after_cycles and pop.distill.alpha > 0
            scale = 0.0
            if pop.perturb is not None and c > 1:
                scale = perturb_scale(c, pop.perturb.start, pop.perturb.end, pop.perturb.decay_cycles)
            params = {
                "model": model,
                "optimizer": optimizer,
                "seq_len": d.seq_len,
                "schedule": schedule,
                "epochs_per_cycle": pop.epochs_per_cycle,
                "cycle": c,
                "trajectory_seed": spec.seed + p,
                "distill": (
                    {"alpha": pop.distill.alpha, "temperature": pop.distill.temperature} if distilled else None
                ),
                "perturb_scale": round(scale, 12),
            }
            inputs = {"corpus": corpus.key}
            if prev is not None:
                inputs["prev"] = prev.key
            step = graph.add(
                make_step(
                    "cycle",
                    f"t{p}-c{c:03d}",
                    params,
                    inputs,
                    context={"trajectory": p, "steps": steps_in_cycle, "tokens": steps_in_cycle * spec.optimizer.batch_tokens},
                )
            )
            scores = {}
            for split in SPLITS:
                s = graph.add(
                    make_step(
                        "score",
                        f"t{p}-c{c:03d}-{split}",
                        params={"split": split, "scorer": SCORER_VERSION},
                        inputs={"snapshot": step.key, "corpus": corpus.key},
                        context={"model": model, "seq_len": d.seq_len},
                    )
                )
                scores[split] = s.key
            cost = ((c - 1) * pop.trajectories + p) * pop.epochs_per_cycle
            members.append(Member(p, c, cost, step.key, scores))
            prev = step

    prior_params = {
        "prior": {"kind": spec.prior.kind, "steps": spec.prior.steps, "lr": spec.prior.lr},
        "budgets": list(spec.prior.budgets),
        "members": [[m.trajectory, m.cycle, m.cost_epochs] for m in members],
    }
    score_inputs = {split: [m.score_keys[split] for m in members] for split in SPLITS}
    label = f"p{pop.trajectories}xc{pop.cycles}"
    prior = graph.add(make_step("prior", label, prior_params, score_inputs))
    curve = graph.add(make_step("curve", label, prior_params, score_inputs))

    totals = _totals(spec, steps_in_cycle, trained_tokens)
    return Compiled(spec, graph, corpus.key, members, prior.key, curve.key, totals, warnings)


def _totals(spec: Spec, steps_in_cycle: int, trained_tokens: int) -> dict:
    """Budget accounting: epochs = P·C·E (training passes only); teacher and scoring FLOPs apart."""
    d, m, pop = spec.data, spec.model, spec.population
    vocab = vocab_size(spec)
    n_cycles = pop.trajectories * pop.cycles
    tokens_per_cycle = steps_in_cycle * spec.optimizer.batch_tokens
    distilled_cycles = 0
    if pop.distill is not None and pop.distill.alpha > 0:
        distilled_cycles = pop.trajectories * max(0, pop.cycles - pop.distill.after_cycles)
    per_token = train_flops_per_token(vocab, m.n_layer, m.d_model, d.seq_len)
    forward_per_token = per_token / 3
    train_tokens = n_cycles * tokens_per_cycle
    return {
        "params": param_count(vocab, m.n_layer, m.d_model),
        "members": n_cycles,
        "epochs": n_cycles * pop.epochs_per_cycle,
        "steps_per_cycle": steps_in_cycle,
        "train_tokens": train_tokens,
        "train_flops": per_token * train_tokens,
        "teacher_flops": forward_per_token * distilled_cycles * tokens_per_cycle,
        "score_flops": forward_per_token * n_cycles * (d.heldout_tokens + d.val_tokens),
        "trained_tokens_per_epoch": trained_tokens,
    }


def compile_path(path: str | Path, overrides=(), *, strict_data: bool = False) -> Compiled:
    from hepc.spec.load import load_spec

    return compile_spec(load_spec(path, overrides), strict_data=strict_data)
