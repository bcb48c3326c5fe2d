"""Chaos (short version of bench/chaos.py): SIGKILL `hepc run` at random instants at least 6 times,
restarting it each time; the final results, every cycle's weights and every reported training loss
must equal an uninterrupted run's bit for bit, no restart may crash on its own or print a traceback,
and `hepc verify` must find the store intact (exit 0)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _chaos_module():
    spec = importlib.util.spec_from_file_location("hepc_bench_chaos", ROOT / "bench" / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def test_sigkill_at_random_instants_resumes_bit_identical(tmp_path):
    chaos = _chaos_module()
    overrides = ("population.epochs_per_cycle=3", "runtime.checkpoint_every_steps=2", "runtime.log_every_steps=1")
    report = chaos.chaos(kills=4, seed=7, overrides=overrides, workdir=tmp_path)  # more: python bench/chaos.py
    print(report.text())
    assert report.kills >= 4
    assert report.mid_cycle_kills >= 2, report.text()  # the kills did land inside training steps
    assert report.identical, report.text()


def test_the_harness_fails_on_a_crashed_restart_a_traceback_or_a_damaged_store(tmp_path):
    """The checks the chaos run relies on can fail: a restart that exits non-zero on its own, a traceback
    in a killed run's output, and a store `hepc verify` finds damaged are each reported."""
    from cli_helpers import tiny_store

    chaos = _chaos_module()
    log = [chaos.Kill(1, 0.5, None, [], ""), chaos.Kill(2, 0.7, 2, [], "error: something\n"),
           chaos.Kill(3, 0.2, None, [], "Traceback (most recent call last):\n  ...\nKeyError: 'x'\n")]
    problems = chaos.restart_problems(log)
    assert len(problems) == 2 and "trial 2 exited 2 on its own" in problems[0] and "trial 3 printed a traceback" in problems[1]
    store, _ = tiny_store(tmp_path)
    assert chaos.verify_problems(store) == []
    victim = next((store / "objects" / "cycle").iterdir()) / "model.safetensors"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    (problem,) = chaos.verify_problems(store)
    assert problem.startswith("hepc verify exited 1") and "damaged" in problem
    (tmp_path / "not-a-store").mkdir()
    (tmp_path / "not-a-store" / "notes.txt").write_text("a folder with content and no store marker")
    (problem,) = chaos.verify_problems(tmp_path / "not-a-store")  # exit 2 was once accepted as "no verify"
    assert problem.startswith("hepc verify exited 2")
