"""Compare two specs: changed fields (old → new) and which steps they share, by kind."""

from __future__ import annotations

from typing import Any

from hepc.compile.compiler import Compiled, graph_totals
from hepc.compile.graph import by_kind
from hepc.spec.load import LoadedSpec

_MISSING = "<absent>"


def changes(a: Any, b: Any, prefix: str = "") -> list[dict]:
    """Fields that differ, A's value → B's. Sections present on both sides are compared field by
    field; a section that one side has and the other sets to null (or lacks) is one change of the
    whole section, in the direction A → B."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[dict] = []
        for k in sorted(set(a) | set(b)):
            out.extend(changes(a.get(k, _MISSING), b.get(k, _MISSING), f"{prefix}.{k}" if prefix else k))
        return out
    return [] if a == b else [{"field": prefix, "old": a, "new": b}]


def diff(a: LoadedSpec, ca: Compiled, b: LoadedSpec, cb: Compiled) -> dict:
    changed = changes(a.spec.model_dump(mode="json"), b.spec.model_dump(mode="json"))
    ka, kb = set(ca.graph.steps), set(cb.graph.steps)
    shared = [s for s in ca.graph if s.key in kb]
    only_a = [s for s in ca.graph if s.key not in kb]
    only_b = [s for s in cb.graph if s.key not in ka]
    return {
        "a": _label(a),
        "b": _label(b),
        "changed": changed,
        "steps": {"shared": by_kind(shared), "only_a": by_kind(only_a), "only_b": by_kind(only_b)},
        "epochs": {
            "a": ca.totals["epochs"],
            "b": cb.totals["epochs"],
            "only_a": graph_totals(ca.graph, only_a)["epochs"],
            "only_b": graph_totals(cb.graph, only_b)["epochs"],
        },
    }


def _label(loaded: LoadedSpec) -> str:
    """The spec's path, with its overrides as given (`q0.yaml::population.cycles=8`)."""
    return "::".join((str(loaded.path), *loaded.overrides))
