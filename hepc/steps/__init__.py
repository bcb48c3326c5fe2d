"""Step bodies, one module per kind. Each exposes `run(step, inputs, out, work, ctx) -> summary`.

`inputs` maps each role of `step.inputs` to the committed folder(s) of its upstream steps; the body
writes its files into `out` (a staging folder) and may keep resumable state in `work`.
Torch and numpy are imported inside the bodies, never at import time of the compiler.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KINDS = ("tokenizer", "corpus", "cycle", "score", "prior", "curve", "logits")


@dataclass
class RunContext:
    """What a step body may use besides its inputs: runtime settings (never hashed) and progress."""

    runtime: dict
    progress: Callable[[dict], None] = lambda info: None
    extra: dict = field(default_factory=dict)
    note: Callable[[str], None] | None = None  # a one-line message for the user (stderr and run record)
    guard: Callable[[], None] | None = None  # raises LeaseLost when this process may no longer write


def body(kind: str) -> Callable[..., dict[str, Any]]:
    return importlib.import_module(f"hepc.steps.{kind}").run
