"""A tiny population on the Python standard library (bytes tokenizer, like the quickstart), trained
once per test module that uses the ensemble (tests/test_use.py, tests/test_lm_eval.py): ~10 s."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import hepc

SPEC = """\
version: 1
name: tinypy
seed: 0
data:
  source: {kind: pystdlib}
  tokenizer: bytes
  train_tokens: 12000
  val_tokens: 2000
  heldout_tokens: 1000
  seq_len: 32
model: {n_layer: 1, d_model: 32, n_head: 2, dropout: 0.1}
optimizer: {lr: 0.01, weight_decay: 0.1, batch_tokens: 512, grad_clip: 1.0}
population:
  trajectories: 2
  cycles: 2
  epochs_per_cycle: 2
  schedule: {kind: cyclic, lr_floor: 0.08, wd_floor: 0.7}
  distill: {after_cycles: 1, alpha: 0.45, temperature: 1.2}
prior: {kind: learned, steps: 100, lr: 0.5, budgets: [1, 2, all]}
runtime: {device: cpu, threads: 1, checkpoint_every_steps: 0, log_every_steps: 5}
"""


def trained_population(folder: Path, tokenizer: str = "bytes") -> tuple[str, Path, dict]:
    """(spec path, store, `hepc run --json` results) of the tiny population, trained in `folder`
    (`tokenizer`: the spec's data.tokenizer, e.g. "{kind: bpe, vocab_size: 400}")."""
    spec = folder / "tinypy.yaml"
    spec.write_text(SPEC.replace("tokenizer: bytes", f"tokenizer: {tokenizer}"))
    store = folder / "store"
    results = json.loads(hepc("run", str(spec), "--json", "--quiet", store=store).stdout)
    return str(spec), store, results


def val_tokens(store: Path):
    """The corpus's val split (the tokens the score steps scored)."""
    import numpy as np

    (path,) = (store / "objects" / "corpus").glob("*/val.npy")
    return np.load(path)


class Outcome:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli(*args, store: Path, check: bool = True) -> Outcome:
    """`hepc ARGS` in this process through Typer's CliRunner (no interpreter start-up, no torch import
    per call): the same commands, exit codes and messages as `python -m hepc.cli`; never a traceback."""
    import traceback

    from typer.testing import CliRunner

    from hepc.cli.main import app

    result = CliRunner().invoke(app, [str(a) for a in args], env={"HEPC_STORE": str(store)})
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (in process):\n" + "".join(traceback.format_exception(result.exception))
    assert "Traceback" not in stderr, stderr
    if check and result.exit_code != 0:
        raise AssertionError(f"hepc {' '.join(map(str, args))} exited {result.exit_code}\n{stderr}")
    return Outcome(result.exit_code, result.stdout, stderr)
