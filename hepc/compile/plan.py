"""Compare a compiled graph with the store: which steps are cached, new, resumable or failed before."""

from __future__ import annotations

import json
from dataclasses import dataclass

from hepc.compile.compiler import Compiled, graph_totals
from hepc.compile.graph import StepSpec
from hepc.store.objects import Store
from hepc.store.verify import Damaged, read_checked
from hepc.wording import count, shorten

SPLITS = ("val", "test", "heldout", "train")

SYMBOLS = {"cached": "=", "new": "+", "resumable": "~", "failed": "!"}
FAILURE_LIMIT = 120  # characters of a step's last error shown in the plan (cut at a word, with "…")


@dataclass(frozen=True)
class PlannedStep:
    step: StepSpec
    status: str  # cached | new | resumable | failed
    detail: str = ""

    @property
    def to_run(self) -> bool:
        return self.status != "cached"


@dataclass
class Plan:
    compiled: Compiled
    steps: list[PlannedStep]

    @property
    def to_run(self) -> list[PlannedStep]:
        return [s for s in self.steps if s.to_run]

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in SYMBOLS}
        for s in self.steps:
            out[s.status] += 1
        return out

    def totals_to_run(self) -> dict:
        return graph_totals(self.compiled.graph, [s.step for s in self.to_run])

    def summary_line(self) -> str:
        c = self.counts()
        todo, total = self.totals_to_run(), self.compiled.totals
        parts = [f"{count(len(self.steps), 'step')}: {c['cached']} cached, {len(self.to_run)} to run"]
        if c["resumable"]:
            parts.append(f"{c['resumable']} resumable")
        if c["failed"]:
            parts.append(f"{c['failed']} failed before")
        parts.append(f"{_num(todo['epochs'])} of {count(total['epochs'], 'epoch')} to train")
        parts.append(f"{_si(todo['train_tokens'])} tokens, {_si(todo['train_flops'])}FLOP")
        if len(self.compiled.populations) > 1:
            parts.append(count(len(self.compiled.populations), "population"))
        return ", ".join(parts)

    def to_json(self) -> dict:
        todo = self.totals_to_run()
        return {
            "spec": self.compiled.spec.name,
            "steps": [
                {
                    "kind": s.step.kind,
                    "name": s.step.name,
                    "key": s.step.key,
                    "status": s.status,
                    "detail": s.detail,
                    "inputs": s.step.inputs,
                }
                for s in self.steps
            ],
            "counts": self.counts(),
            "totals": {
                **self.compiled.totals,
                "epochs_to_run": todo["epochs"],
                "tokens_to_run": todo["train_tokens"],
                "flops_to_run": todo["train_flops"],
            },
            "populations": [
                {"label": p.label, "values": p.values, "prior": p.prior_key, "curve": p.curve_key, "totals": p.totals}
                for p in self.compiled.populations
            ],
            "warnings": self.compiled.warnings,
        }


def make_plan(compiled: Compiled, store: Store) -> Plan:
    out = []
    for step in compiled.graph.order():
        if store.find(step) is not None:
            out.append(PlannedStep(step, "cached"))
            continue
        work = store.work_status(step.key)
        if work and work["state"] == "resumable":
            detail = f"step {work.get('step', '?')}/{work.get('steps', '?')}"
            out.append(PlannedStep(step, "resumable", detail))
        elif work and work["state"] == "failed":
            out.append(PlannedStep(step, "failed", shorten(str(work.get("error", "")), FAILURE_LIMIT)))
        else:
            out.append(PlannedStep(step, "new"))
    return Plan(compiled, out)


def split_lines(plan: Plan, store: Store, unbuilt=None) -> list[str]:
    """One line per split of each corpus in the plan: documents and tokens, from its committed meta.json
    (checked against the digest its manifest records; nothing is written), or one line saying that
    the corpus is not built yet (`unbuilt(step)`, when given, may summarise it instead: a str or None)."""
    lines = []
    for planned in plan.steps:
        if planned.step.kind != "corpus":
            continue
        label = f"corpus {planned.step.name}"
        path = store.find(planned.step) if planned.status == "cached" else None
        if path is None:
            summary = unbuilt(planned.step) if unbuilt is not None else None
            lines.append(f"{label}: not built yet" + (
                f"; {summary}" if summary else " (its splits show here once `hepc run` has built it)"))
            continue
        meta, problem = _corpus_meta(path)
        if meta is None:
            lines.append(f"{label}: splits not shown: {problem} (`hepc run` recomputes a damaged object)")
            continue
        width = max(len(name) for name in SPLITS)
        for name in present_splits(meta):
            lines.append(f"{label}: {name:<{width}} {_split_line(meta, name)}")
    return lines


def schedule_lines(compiled: Compiled) -> list[str]:
    """One line per population: each trajectory's weight decay integrated over a cycle (∫ lr·wd from the
    actual schedule, in e-folds) — the room the anti-correlated schedule has to act."""
    lines = []
    for pop in compiled.populations:
        t, sched = pop.totals, pop.spec.population.schedule
        efolds = t["wd_efolds_per_cycle"]
        which = (f"Muon matrices {efolds['muon']:.2f}, AdamW (embedding, head) {efolds['adamw']:.2f}" if "muon" in efolds
                 else f"{efolds['adamw']:.2f}")
        text = (f"weight decay per cycle, each trajectory: {which} e-folds "
                f"(∫ lr·wd over the cycle's {count(t['steps_per_cycle'], 'step')}, {sched.kind} schedule)")
        lines.append((pop.label, text))
    if len({text for _, text in lines}) == 1:  # the same for every population: said once
        return [lines[0][1]]
    return [f"population {label}: {text}" if label else text for label, text in lines]


def present_splits(meta: dict) -> list[str]:
    """The splits a corpus has, in carving order: test only when it holds tokens (older corpora have none)."""
    tokens = meta.get("tokens") if isinstance(meta.get("tokens"), dict) else {}
    return [name for name in SPLITS if name != "test" or tokens.get("test")]


def _corpus_meta(path) -> tuple[dict | None, str]:
    """A committed corpus's meta.json when it matches its recorded digest, else (None, what is wrong)."""
    try:
        meta = json.loads(read_checked(path, "meta.json"))
    except Damaged as e:
        return None, "; ".join(e.damage.problems)
    except (OSError, ValueError) as e:
        return None, f"meta.json is unreadable ({type(e).__name__})"
    return (meta, "") if isinstance(meta, dict) else (None, "meta.json holds no object")


def _split_line(meta: dict, name: str) -> str:
    """'60 documents  30,000 tokens  (48 source documents; largest: x.py (3,072 tokens))', as far as meta.json tells."""
    try:
        documents, tokens = int(meta["documents"][name]), int(meta["tokens"][name])
    except (KeyError, TypeError, ValueError):
        return "(not recorded in meta.json)"
    line = f"{documents:>7,} {'document ' if documents == 1 else 'documents'} {count(tokens, 'token'):>18}"
    split = (meta.get("splits") or {}).get(name)
    if isinstance(split, dict):
        details = []
        if isinstance(split.get("source_documents"), int):
            details.append(count(split["source_documents"], "source document"))
        largest = split.get("largest")
        if isinstance(largest, list) and largest and isinstance(largest[0], dict):
            top = largest[0]
            share = f", {top.get('tokens', 0) / tokens:.0%}" if tokens else ""
            details.append(f"largest: {shorten(str(top.get('name')), 60)} ({count(top.get('tokens', 0), 'token')}{share})")
        if details:
            line += f"  ({'; '.join(details)})"
    return line


def _num(x: float) -> str:
    return f"{x:g}"


def _si(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"
