"""Read a spec: YAML (ruamel, YAML 1.2, locations kept) + `key=value` overrides → validated `Spec`.

Every problem is reported as `file:line:col: dotted.path: message`; nothing is raised but
`SpecError`, which carries one `Problem` per finding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hepc.errors import Problem, SpecError
from hepc.spec.checks import consistency_problems
from hepc.spec.messages import validation_problems
from hepc.spec.models import SWEEP_FORBIDDEN_ROOTS, Spec
from hepc.spec.overrides import apply_override, parse_override
from hepc.spec.paths import dotted, locate, parse_dotted
from hepc.spec.yaml_read import read_yaml, to_yaml

__all__ = ["LoadedSpec", "Variant", "load_spec", "to_yaml", "dotted", "locate", "parse_dotted", "read_yaml"]


@dataclass(frozen=True)
class Variant:
    """One population of a spec: the base spec with one combination of sweep values applied."""

    label: str  # "" without a sweep; else e.g. "epochs_per_cycle=4,alpha=0"
    values: dict  # dotted path → value
    spec: Spec


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec with where it came from, expanded into its populations (variants)."""

    spec: Spec
    path: Path
    overrides: tuple[str, ...] = ()
    raw: dict = field(default_factory=dict, compare=False)
    locations: dict = field(default_factory=dict, compare=False)
    variants: tuple[Variant, ...] = ()

    def where(self, dotted_path: str) -> str:
        """`file:line:col` of a dotted path such as `data.source.paths[1]` (or of its nearest parent)."""
        return locate(parse_dotted(dotted_path), self.locations, str(self.path))

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def load_spec(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> LoadedSpec:
    """Read, override and validate a spec file; raise `SpecError` listing every problem."""
    p = Path(path)
    filename = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([Problem(filename, "", "spec file not found")]) from None
    except IsADirectoryError:
        raise SpecError([Problem(filename, "", "is a directory, not a spec file")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError([Problem(filename, "", f"cannot read spec: {e}")]) from None

    data, locations = read_yaml(text, filename)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError([Problem(f"{filename}:1:1", "", "a spec must be a YAML mapping")])

    override_problems: list[Problem] = []
    for i, text_ in enumerate(overrides):
        try:
            key, value, label = parse_override(text_, i)
            apply_override(data, locations, key, value, label)
        except SpecError as e:
            override_problems.extend(e.problems)
    if override_problems:
        raise SpecError(override_problems)

    spec = _validate(data, locations, filename)
    variants = _expand_sweep(spec, data, locations, filename)
    return LoadedSpec(
        spec=spec, path=p, overrides=tuple(overrides), raw=data, locations=locations, variants=variants
    )


def _validate(data: dict, locations: dict, filename: str) -> Spec:
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        raise SpecError(validation_problems(e, data, locations, filename)) from None
    problems = [
        Problem(locate(path_, locations, filename), dotted(path_), msg)
        for path_, msg in consistency_problems(spec)
    ]
    if problems:
        raise SpecError(problems)
    return spec


def _expand_sweep(spec: Spec, data: dict, locations: dict, filename: str) -> tuple[Variant, ...]:
    """The cross product of `sweep:` values, each validated as a spec of its own (problems located
    at the sweep value that caused them)."""
    if not spec.sweep:
        return (Variant("", {}, spec),)
    problems: list[Problem] = []
    for key in spec.sweep:
        if key.split(".")[0] in SWEEP_FORBIDDEN_ROOTS:
            problems.append(Problem(locate(("sweep", key), locations, filename), f"sweep.{key}",
                                    f"cannot sweep '{key.split('.')[0]}' (it does not define a population)"))
    if problems:
        raise SpecError(problems)
    import copy
    import itertools

    keys = list(spec.sweep)
    base = {k: v for k, v in data.items() if k != "sweep"}
    variants, seen = [], set()
    for combo in itertools.product(*(range(len(spec.sweep[k])) for k in keys)):
        values = {k: spec.sweep[k][i] for k, i in zip(keys, combo)}
        variant_data, variant_locs = copy.deepcopy(base), dict(locations)
        for k, i in zip(keys, combo):
            label = locate(("sweep", k, i), locations, filename)
            try:
                apply_override(variant_data, variant_locs, tuple(k.split(".")), values[k], label)
            except SpecError as e:
                problems.extend(p for p in e.problems if p not in problems)
        try:
            variant = _validate(variant_data, variant_locs, filename)
        except SpecError as e:
            problems.extend(p for p in e.problems if p not in problems)
            continue
        name = ",".join(f"{k.rsplit('.', 1)[-1]}={_short(values[k])}" for k in keys)
        if name in seen:
            problems.append(Problem(locate(("sweep",), locations, filename), "sweep", f"two variants are both '{name}'"))
        seen.add(name)
        variants.append(Variant(name, values, variant))
    if problems:
        raise SpecError(problems)
    return tuple(variants)


def _short(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
