"""Atomic writes and loads for snapshots (safetensors) and training state (torch.save, weights_only loads).

Every file is written to a temporary name in the same directory and renamed into place, so a crash
at any instant leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_weights(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """Snapshot weights as contiguous float32 CPU tensors in safetensors."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    tmp = _tmp_path(path)
    save_file(tensors, str(tmp))
    _commit(tmp, path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def save_state(obj: Any, path: Path) -> None:
    """Training state (optimizer, RNG, counters); tensors are moved to CPU so any machine can load it."""
    path = Path(path)
    tmp = _tmp_path(path)
    torch.save(to_cpu(obj), tmp)
    _commit(tmp, path)


def load_state(path: Path) -> Any:
    # weights_only: a state file is data, never code to unpickle
    return torch.load(path, map_location="cpu", weights_only=True)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = _tmp_path(path)
    tmp.write_text(text)
    _commit(tmp, path)


def to_cpu(obj: Any) -> Any:
    """Recursively copy tensors inside dicts / lists / tuples to CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
