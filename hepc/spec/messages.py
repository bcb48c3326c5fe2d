"""Pydantic validation errors → one located, readable `Problem` per field."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from hepc.errors import Problem
from hepc.spec.models import Spec
from hepc.spec.paths import Path_, dotted, locate


def _data_path(loc: tuple, data: Any) -> Path_:
    """Walk pydantic's `loc` through the data, dropping union tags such as 'cyclic' or 'int'."""
    path: list = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
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
        "union_tag_not_found": lambda: "needs a 'kind' key (one of the known kinds)",
        "finite_number": lambda: f"must be a finite number{shown}",
        "value_error": lambda: str(ctx.get("error") or err["msg"]),  # our validators' own words, value included
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
        if "kind" in c.model_fields and kind in typing.get_args(c.model_fields["kind"].annotation):
            return c
    return None
