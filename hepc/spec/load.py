"""Read a spec: YAML (ruamel, YAML 1.2, locations kept) + `key=value` overrides → validated `Spec`.

Every problem is reported as `file:line:col: dotted.path: message`; nothing is raised but
`SpecError`, which carries one `Problem` per finding.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hepc.errors import Problem, SpecError
from hepc.spec.checks import consistency_problems
from hepc.spec.data_models import SWEEP_FORBIDDEN_ROOTS
from hepc.spec.messages import validation_problems
from hepc.spec.models import Spec
from hepc.spec.overrides import apply_override, parse_override
from hepc.spec.paths import dotted, locate, parse_dotted
from hepc.spec.yaml_read import MAX_SPEC_BYTES, read_yaml, to_yaml
from hepc.store.safe_io import NotRegularFile, file_kind, open_regular

__all__ = ["LoadedSpec", "Variant", "dotted", "load_spec", "locate", "parse_dotted", "read_yaml", "to_yaml"]


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
    text = _read_spec(p, filename)
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


def _read_spec(path: Path, filename: str) -> str:
    """The spec file's text: a regular file (or a link to one) of at most MAX_SPEC_BYTES, UTF-8.

    Opened without blocking (a FIFO would wait for a writer) and checked before anything is read
    (a device such as /dev/zero never ends); at most MAX_SPEC_BYTES + 1 bytes are read.
    """

    def fail(message: str) -> SpecError:
        return SpecError([Problem(filename, "", message)])

    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise fail("spec file not found") from None
    except NotRegularFile as e:
        raise fail(f"{e.strerror.removesuffix(', not a regular file')}, not a spec file") from None
    except (OSError, ValueError) as e:  # e.g. a socket (ENXIO), no permission, a NUL in the name
        kind = _kind_of(path)
        raise fail(f"is {kind}, not a spec file" if kind else f"cannot read spec: {e}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise fail(f"spec is too large ({max(size, len(data)):,} bytes; at most {MAX_SPEC_BYTES:,})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise fail(f"cannot read spec: {e}") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as text-mode reading did


def _kind_of(path: Path) -> str | None:
    """What `path` is when it exists but is not a regular file (None otherwise or when unknown)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) else file_kind(mode)


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
