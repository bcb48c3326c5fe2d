"""Compare two specs: changed fields (old → new) and which steps they share, by kind."""

from __future__ import annotations

from typing import Any

from hepc.compile import Compiled, graph_totals
from hepc.graph import by_kind
from hepc.spec.load import LoadedSpec

_MISSING = "<absent>"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
        return out or {prefix: {}}
    return {prefix: value}


def diff(a: LoadedSpec, ca: Compiled, b: LoadedSpec, cb: Compiled) -> dict:
    fa = flatten(a.spec.model_dump(mode="json"))
    fb = flatten(b.spec.model_dump(mode="json"))
    changed = [
        {"field": k, "old": fa.get(k, _MISSING), "new": fb.get(k, _MISSING)}
        for k in sorted(set(fa) | set(fb))
        if fa.get(k, _MISSING) != fb.get(k, _MISSING)
    ]
    ka, kb = set(ca.graph.steps), set(cb.graph.steps)
    shared = [s for s in ca.graph if s.key in kb]
    only_a = [s for s in ca.graph if s.key not in kb]
    only_b = [s for s in cb.graph if s.key not in ka]
    return {
        "a": str(a.path),
        "b": str(b.path),
        "changed": changed,
        "steps": {"shared": by_kind(shared), "only_a": by_kind(only_a), "only_b": by_kind(only_b)},
        "epochs": {
            "a": ca.totals["epochs"],
            "b": cb.totals["epochs"],
            "only_a": graph_totals(ca.graph, only_a)["epochs"],
            "only_b": graph_totals(cb.graph, only_b)["epochs"],
        },
    }
