"""Spec → graph of content-hashed steps. Pure: no torch, no I/O but reading data-source digests.

Graph of one population (P trajectories × C cycles):

    corpus ─┬─ cycle t1-c001 ─ cycle t1-c002 ─ …      (each cycle: previous cycle of its trajectory)
            ├─ cycle t2-c001 ─ …
            ├─ score <cycle>-heldout, score <cycle>-val   (per snapshot)
            └─ prior (all scores) ; curve (all scores)

A spec with `sweep:` compiles into several populations inside one graph; steps they have in
common (same key) appear once.

Prefix stability: a cycle's params hold only values fixed by its own index (schedule inside one
cycle, distillation on/off for this index, the perturbation scale of the boundary before it), so
raising `population.cycles` keeps every earlier key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from hepc.errors import Problem, SpecError
from hepc.graph import Graph, StepSpec, make_step
from hepc.hashing import key_fields
from hepc.sizes import param_count, train_flops_per_token
from hepc.spec.load import LoadedSpec, Variant
from hepc.spec.models import Spec
from hepc.train.schedule import perturb_scale, steps_per_cycle

SCORER_VERSION = 1
TOKENIZER_VOCAB = {"bytes": 257}
SPLITS = ("heldout", "val")


def vocab_size(spec: Spec) -> int:
    src = spec.data.source
    return src.vocab_size if src.kind == "tokens" else TOKENIZER_VOCAB[spec.data.tokenizer]


@dataclass(frozen=True)
class Member:
    """One snapshot of the population: trajectory p, cycle c (1-based), available at `cost_epochs`."""

    trajectory: int
    cycle: int
    cost_epochs: float
    cycle_key: str
    score_keys: dict  # split → key


@dataclass
class Population:
    """One expanded population (a sweep variant, or the spec itself)."""

    label: str
    values: dict
    spec: Spec
    corpus_key: str
    members: list[Member]  # population order: trajectory-major (t1 c1..cC, t2 c1..cC, …)
    prior_key: str
    curve_key: str
    totals: dict
    logits_key: str | None = None  # prior.aggregate == "logit": the logit-averaged evaluation


@dataclass
class Compiled:
    spec: Spec
    graph: Graph
    populations: list[Population]
    warnings: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict:
        """Budget of the whole graph: every distinct step counted once."""
        return graph_totals(self.graph)


UNAVAILABLE = "data not available here"  # the warning's prefix when the data lives on another machine


def _data_identity(loaded: LoadedSpec, spec: Spec, strict_data: bool) -> tuple[dict, list[str]]:
    from hepc.data.identity import DataError, source_identity

    cfg = spec.data.source.model_dump()
    try:
        return source_identity(cfg, loaded.base_dir), []
    except DataError as e:
        if strict_data:
            field_ = getattr(e, "field", "") or "data.source"
            message = getattr(e, "message", str(e))
            raise SpecError([Problem(loaded.where(field_), field_, message)]) from None
        # Terraform-style "known after the data exists": keys downstream are provisional.
        return {"kind": cfg["kind"], "unavailable": str(e)}, [f"{UNAVAILABLE}: {e}"]


def compile_spec(loaded: LoadedSpec, *, strict_data: bool = False) -> Compiled:
    graph = Graph()
    populations, warnings = [], []
    identities: dict[str, tuple[dict, list[str]]] = {}
    for variant in loaded.variants or (Variant("", {}, loaded.spec),):
        source_cfg = repr(variant.spec.data.source)
        if source_cfg not in identities:
            identities[source_cfg] = _data_identity(loaded, variant.spec, strict_data)
        identity, warns = identities[source_cfg]
        warnings.extend(w for w in warns if w not in warnings)
        populations.append(_compile_population(graph, loaded, variant, identity))
    return Compiled(loaded.spec, graph, populations, warnings)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,-]", "_", label)[:80]


def _compile_population(graph: Graph, loaded: LoadedSpec, variant: Variant, identity: dict) -> Population:
    spec = variant.spec
    d, m, pop, opt = spec.data, spec.model, spec.population, spec.optimizer
    vocab = vocab_size(spec)
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
                "max_doc_tokens": d.max_doc_tokens,
            },
            inputs={},
            context={"source": d.source.model_dump(), "base_dir": str(loaded.base_dir.resolve())},
        )
    )

    trained_tokens = d.train_tokens - d.heldout_tokens
    steps_in_cycle = steps_per_cycle(pop.epochs_per_cycle, trained_tokens, opt.batch_tokens)
    tokens_in_cycle = steps_in_cycle * opt.batch_tokens
    train_flops = train_flops_per_token(vocab, m.n_layer, m.d_model, d.seq_len)
    forward_flops = train_flops / 3
    model, optimizer, schedule = key_fields(m), opt.step_params(), key_fields(pop.schedule)

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
                    context={
                        "steps": steps_in_cycle,
                        "tokens": tokens_in_cycle,
                        "epochs": pop.epochs_per_cycle,
                        "flops": train_flops * tokens_in_cycle,
                        "teacher_flops": forward_flops * tokens_in_cycle if distilled else 0.0,
                    },
                )
            )
            scores = {}
            for split in SPLITS:
                split_tokens = d.heldout_tokens if split == "heldout" else d.val_tokens
                s = graph.add(
                    make_step(
                        "score",
                        f"t{p}-c{c:03d}-{split}",
                        params={"split": split, "scorer": SCORER_VERSION},
                        inputs={"snapshot": step.key, "corpus": corpus.key},
                        context={"model": model, "seq_len": d.seq_len, "flops": forward_flops * split_tokens},
                    )
                )
                scores[split] = s.key
            cost = ((c - 1) * pop.trajectories + p) * pop.epochs_per_cycle
            members.append(Member(p, c, cost, step.key, scores))
            prev = step

    prior_params = {
        "prior": spec.prior.step_params(),
        "budgets": list(spec.prior.budgets),
        "members": [[mb.trajectory, mb.cycle, mb.cost_epochs] for mb in members],
    }
    prior_inputs = {split: [mb.score_keys[split] for mb in members] for split in SPLITS}
    if spec.prior.kind == "shrinkage":  # its CV folds are whole held-out documents (heldout_docs.npy)
        prior_inputs["corpus"] = corpus.key
    name = f"p{pop.trajectories}xc{pop.cycles}"
    if variant.label:
        name = f"{_slug(variant.label)}-{name}"
    prior = graph.add(make_step("prior", name, prior_params, prior_inputs))
    curve = graph.add(make_step("curve", name, prior_params, prior_inputs))
    logits_key = None
    if spec.prior.aggregate == "logit":
        logits_key = graph.add(
            make_step(
                "logits",
                name,
                params={"aggregate": "logit", "scorer": SCORER_VERSION},
                inputs={"prior": prior.key, "snapshots": [mb.cycle_key for mb in members], "corpus": corpus.key},
                context={"model": model, "seq_len": d.seq_len},
            )
        ).key

    totals = {
        "params": param_count(vocab, m.n_layer, m.d_model),
        "members": len(members),
        "epochs": len(members) * pop.epochs_per_cycle,
        "steps_per_cycle": steps_in_cycle,
        "trained_tokens_per_epoch": trained_tokens,
        **_sum_steps(graph[k] for mb in members for k in (mb.cycle_key, *mb.score_keys.values())),
    }
    return Population(
        variant.label, variant.values, spec, corpus.key, members, prior.key, curve.key, totals, logits_key
    )


def _sum_steps(steps) -> dict:
    """Budget accounting: epochs = Σ E over cycle steps (training passes only); teacher forwards and
    scoring are counted apart, in FLOPs."""
    out = {"cycles": 0, "train_tokens": 0, "train_flops": 0.0, "teacher_flops": 0.0, "score_flops": 0.0}
    for s in steps:
        if s.kind == "cycle":
            out["cycles"] += 1
            out["train_tokens"] += s.context["tokens"]
            out["train_flops"] += s.context["flops"]
            out["teacher_flops"] += s.context["teacher_flops"]
        elif s.kind == "score":
            out["score_flops"] += s.context["flops"]
    return out


def graph_totals(graph: Graph, steps=None) -> dict:
    """Totals of `steps` (default: the whole graph), each distinct step once; epochs included."""
    steps = list(graph if steps is None else steps)
    out = _sum_steps(steps)
    out["epochs"] = sum(s.context["epochs"] for s in steps if s.kind == "cycle")
    return out


def compile_path(path: str | Path, overrides=(), *, strict_data: bool = False) -> Compiled:
    from hepc.spec.load import load_spec

    return compile_spec(load_spec(path, overrides), strict_data=strict_data)
