"""Dotted `key=value` overrides (values parsed as YAML), applied to the plain data with locations."""

from __future__ import annotations

from typing import Any

from hepc.errors import Problem, SpecError
from hepc.spec.paths import Path_, dotted
from hepc.spec.yaml_read import read_yaml


def parse_override(text: str, index: int) -> tuple[Path_, Any, str]:
    """`population.cycles=12` → (("population","cycles"), 12, label). Values are parsed as YAML."""
    label = f"override '{text}'"
    if "=" not in text:
        raise SpecError([Problem(label, "", "expected key=value (e.g. population.cycles=12)")])
    key, _, value = text.partition("=")
    parts = key.strip().split(".")
    if not key.strip() or any(not p or not p.replace("_", "").isalnum() for p in parts):
        raise SpecError([Problem(label, "", f"invalid key '{key}' (use dotted names such as prior.steps)")])
    try:
        data, _ = read_yaml(value if value.strip() else "null", label)
    except SpecError as e:
        raise SpecError([Problem(label, "", p.message) for p in e.problems]) from None
    return tuple(parts), data, label


def apply_override(data: dict, locations: dict, path: Path_, value: Any, label: str) -> None:
    node = data
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SpecError([Problem(label, dotted(path[: i + 1]), "is not a mapping; cannot set a key inside it")])
        node = child
    node[path[-1]] = value
    for p in [p for p in locations if p[: len(path)] == path]:
        del locations[p]
    locations[path] = label
    _relabel(value, path, label, locations)


def _relabel(value: Any, path: Path_, label: str, locations: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            locations[path + (k,)] = label
            _relabel(v, path + (k,), label, locations)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            locations[path + (i,)] = label
            _relabel(v, path + (i,), label, locations)
