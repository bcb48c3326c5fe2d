"""Spec → graph of content-hashed steps. Pure: no torch, no I/O but reading data-source digests.

Graph of one population (P trajectories × C cycles):

    [tokenizer ─] corpus ─┬─ cycle t1-c001 ─ cycle t1-c002 ─ …   (each cycle: previous cycle of its trajectory)
                          ├─ cycle t2-c001 ─ …
                          ├─ score <cycle>-heldout, score <cycle>-val   (per snapshot)
                          └─ prior (all scores) ; curve (all scores)

A `bpe` tokenizer is a step of its own, trained on the train split of the corpus's split rule (its
key holds the source, the split rule and the tokenizer config); the `bytes` and `none` corpora have
no tokenizer step and keep their keys.

A spec with `sweep:` compiles into several populations inside one graph; steps they have in
common (same key) appear once.

Prefix stability: a cycle's params hold only values fixed by its own index (schedule inside one
cycle, distillation on/off for this index, the perturbation scale of the boundary before it), so
raising `population.cycles` keeps every earlier key.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from hepc.compile.graph import Graph, StepSpec, make_step
from hepc.errors import Problem, SpecError
from hepc.hashing import key_fields
from hepc.sizes import param_count, train_flops_per_token
from hepc.spec.data_models import BpeTokenizer
from hepc.spec.load import LoadedSpec, Variant
from hepc.spec.models import Spec
from hepc.train.schedule import decay_efolds, perturb_scale, steps_per_cycle

SCORER_VERSION = 1
BPE_TRAINER = "tokenizers-bytelevel-bpe/1"  # names the BPE training rule (hepc/data/bpe_training.py) in tokenizer keys
TOKENIZER_VOCAB = {"bytes": 257}
SPLITS = ("heldout", "val")  # every snapshot is scored on these; on "test" too when data.test_tokens > 0


def vocab_size(spec: Spec) -> int:
    src, tok = spec.data.source, spec.data.tokenizer
    if src.kind == "tokens":
        return src.vocab_size
    return tok.vocab_size if isinstance(tok, BpeTokenizer) else TOKENIZER_VOCAB[tok]


def tokenizer_label(spec: Spec) -> str:
    """The tokenizer in step names: `bytes`, `none` or `bpe<vocab_size>`."""
    tok = spec.data.tokenizer
    return f"bpe{tok.vocab_size}" if isinstance(tok, BpeTokenizer) else tok


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
    if len(populations) > 1:
        _name_sweep_steps(graph, populations)
    return Compiled(loaded.spec, graph, populations, warnings)


def _name_sweep_steps(graph: Graph, populations: list[Population]) -> None:
    """Steps of different sweep variants that would share a display name (`cycle t1-c001` once per
    variant) are named with the sweep values of the variants that use them, e.g.
    `epochs_per_cycle=1-t1-c001`. Names are display only: no key changes, and a step that every
    variant shares keeps its plain name."""
    users: dict[str, list[Population]] = {}
    for pop in populations:
        for key in _upstream_closure(graph, [pop.prior_key, pop.curve_key, pop.logits_key]):
            users.setdefault(key, []).append(pop)
    by_name: dict[tuple[str, str], set[str]] = {}
    for step in graph:
        by_name.setdefault((step.kind, step.name), set()).add(step.key)
    for (kind, name), keys in by_name.items():
        if len(keys) < 2:
            continue
        for key in keys:
            label = _common_values(users.get(key, [])) or users.get(key, populations)[0].label
            graph.steps[key] = dataclasses.replace(graph[key], name=f"{_slug(label)}-{name}")


def _upstream_closure(graph: Graph, keys) -> set[str]:
    out: set[str] = set()
    todo = [k for k in keys if k is not None]
    while todo:
        key = todo.pop()
        if key not in out:
            out.add(key)
            todo.extend(graph[key].upstream())
    return out


def _common_values(pops: list[Population]) -> str:
    """The sweep values every population in `pops` has in common, as in their labels (`epochs_per_cycle=1`)."""
    if not pops:
        return ""
    common = [k for k, v in pops[0].values.items() if all(k in p.values and p.values[k] == v for p in pops)]
    return ",".join(f"{k.rsplit('.', 1)[-1]}={_label_value(pops[0].values[k])}" for k in common)


def _label_value(value) -> str:  # the same form as the variant labels of hepc/spec/load.py
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,-]", "_", label)[:80]


def _compile_population(graph: Graph, loaded: LoadedSpec, variant: Variant, identity: dict) -> Population:
    spec = variant.spec
    d, m, pop, opt = spec.data, spec.model, spec.population, spec.optimizer
    vocab = vocab_size(spec)
    split_rule = {
        "source": identity,
        "train_tokens": d.train_tokens,
        "val_tokens": d.val_tokens,
        "heldout_tokens": d.heldout_tokens,
        "seed": d.seed,
        "max_doc_tokens": d.max_doc_tokens,
    }
    if d.test_tokens:  # a field added later stays out of the key at its default
        split_rule["test_tokens"] = d.test_tokens
    splits = SPLITS + (("test",) if d.test_tokens else ())
    data_context = {"source": d.source.model_dump(), "base_dir": str(loaded.base_dir.resolve())}
    corpus_inputs, tokenizer = {}, d.tokenizer
    if isinstance(d.tokenizer, BpeTokenizer):  # trained on the train split of this very split rule
        tokenizer = key_fields(d.tokenizer)
        trained = graph.add(
            make_step(
                "tokenizer",
                f"{d.source.kind}-{tokenizer_label(spec)}",
                params={"tokenizer": tokenizer, "trainer": BPE_TRAINER, **split_rule},
                inputs={},
                context=data_context,
            )
        )
        corpus_inputs = {"tokenizer": trained.key}
    corpus = graph.add(
        make_step(
            "corpus",
            f"{d.source.kind}-{tokenizer_label(spec)}",
            params={"source": identity, "tokenizer": tokenizer, **{k: v for k, v in split_rule.items() if k != "source"}},
            inputs=corpus_inputs,
            context=data_context,
        )
    )

    trained_tokens = d.train_tokens if d.train_on_heldout else d.train_tokens - d.heldout_tokens
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
            if d.train_on_heldout:  # left out at its default: every other key stays as it was
                params["train_splits"] = ["train", "heldout"]
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
            for split in splits:
                split_tokens = {"heldout": d.heldout_tokens, "val": d.val_tokens, "test": d.test_tokens}[split]
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
    prior_inputs = {split: [mb.score_keys[split] for mb in members] for split in splits}
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

    efolds = {"adamw": round(decay_efolds(schedule, steps_in_cycle, opt.lr, opt.weight_decay), 6)}
    if opt.kind == "muon":
        efolds["muon"] = round(decay_efolds(schedule, steps_in_cycle, opt.muon_lr, opt.weight_decay), 6)
    totals = {
        "params": param_count(vocab, m.n_layer, m.d_model),
        "wd_efolds_per_cycle": efolds,
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
