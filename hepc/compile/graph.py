"""Steps and the graph: pure descriptions of what to compute, ordered with the stdlib's graphlib."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from typing import Any

from hepc.hashing import step_key

# Bump a kind's version when a change to its code changes its results (old objects stay valid otherwise).
IMPL_VERSIONS = {"tokenizer": 3, "corpus": 3, "cycle": 1, "score": 1, "prior": 1, "curve": 1, "logits": 1}


@dataclass(frozen=True)
class StepSpec:
    """What to compute. `params` and `inputs` (role → upstream key or list of keys) make the key;
    `context` carries what the body needs but must not change the result (paths, display data)."""

    kind: str
    name: str
    params: dict
    inputs: dict
    key: str
    context: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def key12(self) -> str:
        return self.key[:12]

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.key12}"

    def upstream(self) -> list[str]:
        out: list[str] = []
        for v in self.inputs.values():
            out.extend(v if isinstance(v, list) else [v])
        return out


def make_step(kind: str, name: str, params: dict, inputs: dict, context: dict | None = None) -> StepSpec:
    key = step_key(kind, IMPL_VERSIONS[kind], params, inputs)
    return StepSpec(kind=kind, name=name, params=params, inputs=inputs, key=key, context=context or {})


class Graph:
    """Steps by key, in insertion order; identical steps (same key) are stored once."""

    def __init__(self) -> None:
        self.steps: dict[str, StepSpec] = {}

    def add(self, step: StepSpec) -> StepSpec:
        return self.steps.setdefault(step.key, step)

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[StepSpec]:
        return iter(self.steps.values())

    def __getitem__(self, key: str) -> StepSpec:
        return self.steps[key]

    def order(self) -> list[StepSpec]:
        """A topological order: insertion order when it already is one (the compiler adds upstream
        steps first, so plans read naturally), else graphlib's order (which also rejects cycles)."""
        seen: set[str] = set()
        for s in self.steps.values():
            if not all(u in seen for u in s.upstream()):
                break
            seen.add(s.key)
        else:
            return list(self.steps.values())
        sorter: TopologicalSorter[str] = TopologicalSorter({s.key: s.upstream() for s in self.steps.values()})
        return [self.steps[k] for k in sorter.static_order()]


def by_kind(steps: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in steps:
        counts[s.kind] = counts.get(s.kind, 0) + 1
    return counts
