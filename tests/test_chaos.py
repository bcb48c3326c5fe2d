"""Chaos (short version of bench/chaos.py): SIGKILL `hepc run` at random instants at least 6 times,
restarting it each time; the final results, every cycle's weights and every reported training loss
must equal an uninterrupted run's bit for bit."""

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
    report = chaos.chaos(kills=6, seed=7, overrides=overrides, workdir=tmp_path)  # more: python bench/chaos.py
    print(report.text())
    assert report.kills >= 6
    assert report.mid_cycle_kills >= 3, report.text()  # the kills did land inside training steps
    assert report.identical, report.text()
