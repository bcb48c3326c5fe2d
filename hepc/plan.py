"""Compare a compiled graph with the store: which steps are cached, new, resumable or failed before."""

from __future__ import annotations

from dataclasses import dataclass

from hepc.compile import Compiled, graph_totals
from hepc.graph import StepSpec
from hepc.store import Store

SYMBOLS = {"cached": "=", "new": "+", "resumable": "~", "failed": "!"}


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
        parts = [f"{len(self.steps)} steps: {c['cached']} cached, {len(self.to_run)} to run"]
        if c["resumable"]:
            parts.append(f"{c['resumable']} resumable")
        if c["failed"]:
            parts.append(f"{c['failed']} failed before")
        parts.append(f"{_num(todo['epochs'])} of {_num(total['epochs'])} epochs to train")
        parts.append(f"{_si(todo['train_tokens'])} tokens, {_si(todo['train_flops'])}FLOP")
        if len(self.compiled.populations) > 1:
            parts.append(f"{len(self.compiled.populations)} populations")
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
            out.append(PlannedStep(step, "failed", str(work.get("error", ""))[:120]))
        else:
            out.append(PlannedStep(step, "new"))
    return Plan(compiled, out)


def _num(x: float) -> str:
    return f"{x:g}"


def _si(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"
