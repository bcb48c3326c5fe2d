"""Read a spec: YAML (ruamel, YAML 1.2, locations kept) + `key=value` overrides → validated `Spec`.

Every problem is reported as `file:line:col: dotted.path: message`; nothing is raised but
`SpecError`, which carries one `Problem` per finding.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from hepc.errors import Problem, SpecError
from hepc.spec.checks import consistency_problems
from hepc.spec.models import SWEEP_FORBIDDEN_ROOTS, Spec

Path_ = tuple  # a path into the spec tree: ("population", "cycles") or ("prior", "budgets", 2)


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


def parse_dotted(text: str) -> Path_:
    """`data.source.paths[1]` → ("data", "source", "paths", 1)."""
    out: list = []
    for part in text.split("."):
        name, _, rest = part.partition("[")
        if name:
            out.append(name)
        for idx in rest.replace("]", "").split("[") if rest else []:
            out.append(int(idx) if idx.isdigit() else idx)
    return tuple(out)


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# --------------------------------------------------------------------------- YAML → plain data + locations


class _Plain:
    """Converts ruamel round-trip nodes into dict/list/scalars, recording each path's location."""

    def __init__(self, filename: str):
        self.filename = filename
        self.locations: dict[Path_, str] = {}
        self.problems: list[Problem] = []

    def at(self, line: int, col: int) -> str:
        return f"{self.filename}:{line + 1}:{col + 1}"

    def _position(self, node: Any, getter: str, arg: Any) -> tuple[int, int] | None:
        try:
            pos = getattr(node.lc, getter)(arg)
        except (AttributeError, KeyError, IndexError, TypeError):
            return None  # e.g. a key that came from a YAML merge (<<)
        return pos if isinstance(pos, tuple) and None not in pos else None

    def _tag_problem(self, node: Any, path: Path_) -> bool:
        tag = getattr(getattr(node, "tag", None), "value", None)
        if tag and tag not in ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"):
            where = self.locations.get(path, self.filename)
            self.problems.append(Problem(where, dotted(path), f"YAML tag {tag} is not allowed (tags are not allowed)"))
            return True
        return False

    def convert(self, node: Any, path: Path_) -> Any:
        if isinstance(node, (dict, list)) and self._tag_problem(node, path):
            return None
        if isinstance(node, dict):
            out = {}
            for k in node:
                pos = self._position(node, "key", k)
                where = self.at(*pos) if pos else self.locations.get(path, self.filename)
                if not isinstance(k, str):
                    self.problems.append(Problem(where, dotted(path), f"keys must be strings (got {k!r})"))
                    continue
                self.locations[path + (k,)] = where
                out[k] = self.convert(node[k], path + (k,))
            return out
        if isinstance(node, list):
            out_list = []
            for i, item in enumerate(node):
                pos = self._position(node, "item", i)
                self.locations[path + (i,)] = self.at(*pos) if pos else self.locations.get(path, self.filename)
                out_list.append(self.convert(item, path + (i,)))
            return out_list
        if node is None or isinstance(node, (bool, int, float, str)):
            # ruamel returns str/int/float subclasses (ScalarFloat, …); keep plain types for strict models.
            if isinstance(node, bool) or node is None:
                return node
            for t in (int, float, str):
                if isinstance(node, t):
                    return t(node)
        if isinstance(node, (_dt.date, _dt.datetime)):
            return str(node)  # a string field will accept it; anything else reports a type error
        where = self.locations.get(path, self.filename)
        self.problems.append(
            Problem(where, dotted(path), f"unsupported YAML value {type(node).__name__} (tags are not allowed)")
        )
        return None


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.allow_duplicate_keys = False
    return y


# Bounds on what a spec may expand to: YAML aliases can make a few lines mean billions of nodes
# ("billion laughs"), and deep nesting would exhaust the (recursive) composer.
MAX_SPEC_BYTES = 1 << 20
MAX_NODES = 100_000  # after expanding aliases
MAX_DEPTH = 64
MAX_NUMBER_CHARS = 1000  # Python refuses to convert integers of more than 4300 digits


def _check_bounds(text: str, filename: str) -> None:
    """Walk the YAML event stream (iterative, nothing built) and refuse oversized documents."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError([Problem(filename, "", f"spec is too large ({len(text):,} characters; at most {MAX_SPEC_BYTES:,})")])
    from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, ScalarEvent

    sizes: dict[Any, int] = {}  # anchor → nodes it expands to
    stack: list[list] = [[None, 0]]  # [anchor, nodes so far] per open collection
    total = 0

    def fail(event: Any, message: str) -> None:
        mark = event.start_mark
        raise SpecError([Problem(f"{filename}:{mark.line + 1}:{mark.column + 1}", "", message)])

    for event in _yaml().parse(text):
        if isinstance(event, CollectionStartEvent):
            stack.append([event.anchor, 1])
            if len(stack) - 1 > MAX_DEPTH:
                fail(event, f"nesting deeper than {MAX_DEPTH} levels")
            continue
        if isinstance(event, CollectionEndEvent):
            anchor, n = stack.pop()
            if anchor is not None:
                sizes[anchor] = n
            stack[-1][1] += n
            continue
        if isinstance(event, ScalarEvent):
            n = 1
            if event.style is None and len(event.value) > MAX_NUMBER_CHARS and event.value.lstrip("+-")[:1].isdigit():
                fail(event, f"number too long ({len(event.value):,} characters)")
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, AliasEvent):
            if any(frame[0] == event.anchor for frame in stack):
                fail(event, f"alias *{event.anchor} refers to a collection that contains it (recursive)")
            n = sizes.get(event.anchor, 1)
        else:
            continue
        stack[-1][1] += n
        total = sum(frame[1] for frame in stack)
        if total > MAX_NODES:
            fail(event, f"document expands to more than {MAX_NODES:,} values (too many or too nested aliases)")


def read_yaml(text: str, filename: str) -> tuple[Any, dict[Path_, str]]:
    """Parse YAML text into plain data and a map path → `file:line:col`."""
    try:
        _check_bounds(text, filename)
        node = _yaml().load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        msg = " ".join(str(x) for x in (e.context, e.problem) if x)
        msg = msg.replace("\n", " ").strip() or "invalid YAML"
        raise SpecError([Problem(where, "", f"YAML syntax error: {msg}")]) from None
    except YAMLError as e:
        raise SpecError([Problem(filename, "", f"YAML error: {(str(e).splitlines() or ['invalid'])[0]}")]) from None
    except RecursionError:
        raise SpecError([Problem(filename, "", f"nesting deeper than {MAX_DEPTH} levels")]) from None
    except (ValueError, TypeError, OverflowError) as e:  # a scalar the YAML library cannot construct
        raise SpecError([Problem(filename, "", f"unreadable YAML value: {str(e)[:200]}")]) from None
    plain = _Plain(filename)
    try:
        data = plain.convert(node, ())
    except RecursionError:
        raise SpecError([Problem(filename, "", "recursive or too deeply nested document")]) from None
    if plain.problems:
        raise SpecError(plain.problems)
    return data, plain.locations


# --------------------------------------------------------------------------- overrides


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


# --------------------------------------------------------------------------- pydantic errors → problems


def _data_path(loc: tuple, data: Any) -> Path_:
    """Walk pydantic's `loc` through the data, dropping union tags such as 'cyclic' or 'int'."""
    path: list = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and not path_is_tag(part, node):
            path.append(part)  # a missing key: report it under its parent's location
            node = None
        # else: a union tag / member name → skip
    return tuple(path)


def path_is_tag(part: str, node: dict) -> bool:
    return part == node.get("kind") or "[" in part or part in ("int", "str", "float", "bool", "none")


def _phrase(err: dict) -> str:
    t, ctx, got = err["type"], err.get("ctx", {}) or {}, err.get("input")
    shown = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
    simple = {
        "greater_than_equal": lambda: f"must be >= {ctx.get('ge')}{shown}",
        "greater_than": lambda: f"must be > {ctx.get('gt')}{shown}",
        "less_than_equal": lambda: f"must be <= {ctx.get('le')}{shown}",
        "less_than": lambda: f"must be < {ctx.get('lt')}{shown}",
        "int_type": lambda: f"must be an integer{shown}",
        "int_from_float": lambda: f"must be an integer{shown}",
        "float_type": lambda: f"must be a number{shown}",
        "bool_type": lambda: f"must be true or false{shown}",
        "string_type": lambda: f"must be a string{shown}",
        "list_type": lambda: f"must be a list{shown}",
        "dict_type": lambda: f"must be a mapping{shown}",
        "model_type": lambda: f"must be a mapping{shown}",
        "model_attributes_type": lambda: f"must be a mapping{shown}",
        "literal_error": lambda: f"must be {ctx.get('expected')}{shown}",
        "missing": lambda: "required key is missing",
        "extra_forbidden": lambda: "unknown key",
        "string_pattern_mismatch": lambda: f"must match {ctx.get('pattern')}{shown}",
        "string_too_short": lambda: f"must not be empty{shown}",
        "too_short": lambda: f"must have at least {ctx.get('min_length')} item(s)",
        "too_long": lambda: f"must have at most {ctx.get('max_length')} item(s)",
        "union_tag_invalid": lambda: f"unknown kind {ctx.get('tag')!r} (expected one of {ctx.get('expected_tags')})",
        "union_tag_not_found": lambda: f"needs a 'kind' key (one of the known kinds)",
        "finite_number": lambda: f"must be a finite number{shown}",
    }
    if t in simple:
        return simple[t]()
    return err["msg"][0].lower() + err["msg"][1:] + shown


def validation_problems(exc: ValidationError, data: Any, locations: dict, filename: str) -> list[Problem]:
    grouped: dict[Path_, list[str]] = {}
    for err in exc.errors():
        path = _data_path(err["loc"], data)
        phrase = _phrase(err)
        if err["type"] == "extra_forbidden":
            phrase = _unknown_key_phrase(err["loc"], data)
        grouped.setdefault(path, [])
        if phrase not in grouped[path]:
            grouped[path].append(phrase)
    problems = []
    for path, phrases in grouped.items():
        if len(phrases) > 1:  # union members: "must be an integer or must be 'all' (got 'x')"
            got = phrases[-1][phrases[-1].rfind(" (got "):] if " (got " in phrases[-1] else ""
            phrases = [ph.replace(got, "") if got else ph for ph in phrases]
            phrases = [phrases[0]] + [ph.removeprefix("must be ") for ph in phrases[1:]]
            phrases[-1] += got
        problems.append(Problem(locate(path, locations, filename), dotted(path), " or ".join(phrases)))
    return problems


def _unknown_key_phrase(loc: tuple, data: Any) -> str:
    """Name the keys that are allowed where an unknown key was found."""
    model: Any = Spec
    node: Any = data
    for part in _data_path(loc, data)[:-1]:
        fields = getattr(model, "model_fields", {})
        if isinstance(part, int) or part not in fields or not isinstance(node, dict):
            return "unknown key"
        node = node.get(part)
        model = _model_for(fields[part].annotation, node)
        if model is None:
            return "unknown key"
    names = sorted(model.model_fields)
    return f"unknown key (expected one of: {', '.join(names)})"


def _model_for(annotation: Any, node: Any) -> Any:
    """The pydantic model inside `annotation` that validates `node` (by its `kind` tag in a union)."""
    import typing

    from pydantic import BaseModel

    candidates, stack = [], [annotation]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            candidates.append(a)
        else:
            stack.extend(typing.get_args(a))
    if len(candidates) == 1:
        return candidates[0]
    kind = node.get("kind") if isinstance(node, dict) else None
    for c in candidates:
        if kind in typing.get_args(c.model_fields["kind"].annotation):
            return c
    return None


def locate(path: Path_, locations: dict, filename: str) -> str:
    for n in range(len(path), -1, -1):
        if path[:n] in locations:
            return locations[path[:n]]
    return filename


# --------------------------------------------------------------------------- entry point


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


def to_yaml(spec: Spec) -> str:
    """The resolved spec (defaults filled in) as YAML text."""
    import io

    y = YAML(typ="safe", pure=True)
    y.default_flow_style = False
    y.sort_base_mapping_type_on_output = False
    buf = io.StringIO()
    y.dump(spec.model_dump(mode="json", exclude_none=True), buf)
    return buf.getvalue()
