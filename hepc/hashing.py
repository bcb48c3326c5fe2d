"""Canonical JSON and xxh3_128 keys. Refuses any value it cannot serialize deterministically."""

from __future__ import annotations

import json
import math
from typing import Any

import xxhash

KEY_SCHEMA = 1  # bump only if the key recipe itself changes (it invalidates every stored object)


class UnhashableValue(TypeError):
    """A value with no canonical representation (callable, set, NaN, custom object, non-string key…)."""


def _check(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnhashableValue(f"{where}: non-finite float {value!r} has no canonical form")
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise UnhashableValue(f"{where}: dict key {k!r} is not a string")
            _check(v, f"{where}.{k}")
        return
    raise UnhashableValue(f"{where}: {type(value).__name__} has no canonical JSON form")


_SCALARS = (bool, int, str)


def _plain(value: Any) -> bool:
    """`_check` without building locations (the common case: every key of a graph is plain)."""
    if value is None or isinstance(value, _SCALARS):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, shortest round-trip floats; plain JSON types only."""
    if not _plain(value):
        _check(value, "value")  # raises, naming where
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def digest(value: Any) -> str:
    """xxh3_128 hex digest of the canonical JSON of `value`."""
    return xxhash.xxh3_128_hexdigest(canonical_json(value).encode("utf-8"))


def step_key(kind: str, impl_version: int, params: dict, inputs: dict) -> str:
    return digest(
        {"schema": KEY_SCHEMA, "kind": kind, "impl_version": impl_version, "params": params, "inputs": inputs}
    )


def key_fields(model: Any) -> Any:
    """A pydantic model as hashable plain data.

    A field declared with ``json_schema_extra={"key_omits_default": True}`` (hepc.spec.data_models.KEY_OMITS_DEFAULT)
    is left out while it equals its default, so adding a field to hepc keeps every earlier key (and result) valid.
    """
    from pydantic import BaseModel

    if isinstance(model, BaseModel):
        out = {}
        for name, info in type(model).model_fields.items():
            value = getattr(model, name)
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if extra.get("key_omits_default") and value == info.default:
                continue
            out[name] = key_fields(value)
        return out
    if isinstance(model, (list, tuple)):
        return [key_fields(v) for v in model]
    if isinstance(model, dict):
        return {k: key_fields(v) for k, v in model.items()}
    return model
