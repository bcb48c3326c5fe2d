"""LR/WD multipliers, perturbation scale and cycle length (pure math, no torch)."""

import math
import subprocess
import sys

import numpy as np
import pytest

from hepc.train.schedule import constant_multipliers, cyclic_multipliers, perturb_scale, steps_per_cycle


def test_schedule_does_not_import_torch():
    # The compiler prints schedules; it must not pay for importing torch.
    code = "import sys, hepc.train.schedule; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("steps", [1, 7, 381])
def test_cyclic_endpoints(steps):
    lr0, wd0 = cyclic_multipliers(0, steps, 0.08, 0.7)
    assert lr0 == 1.0 and wd0 == pytest.approx(0.7)
    lr_last, wd_last = cyclic_multipliers(steps - 1, steps, 0.08, 0.7)
    assert lr_last == pytest.approx(0.08 + 0.92 / steps)  # one step above the floor
    assert wd_last == pytest.approx(1.0 - 0.3 / steps)  # one step below the peak


def test_cyclic_lr_and_wd_are_exactly_anticorrelated():
    steps = 200
    lr, wd = np.array([cyclic_multipliers(s, steps, 0.08, 0.7) for s in range(steps)]).T
    assert np.all(np.diff(lr) < 0) and np.all(np.diff(wd) > 0)
    assert np.corrcoef(lr, wd)[0, 1] == pytest.approx(-1.0, abs=1e-9)


def test_flat_wd_when_wd_floor_is_one():
    assert {cyclic_multipliers(s, 50, 0.08, 1.0)[1] for s in range(50)} == {1.0}


def test_lr_floor_one_is_safe():
    for s in range(10):
        assert cyclic_multipliers(s, 10, 1.0, 0.7) == (1.0, 0.7)


def test_constant_warmdown_shape():
    steps, warmdown = 100, 0.2
    lr = [constant_multipliers(s, steps, warmdown)[0] for s in range(steps)]
    assert lr[:81] == [1.0] * 81  # (L − s)/W reaches 1 exactly where the warmdown starts
    assert np.all(np.diff(lr[80:]) < 0)
    assert lr[-1] == pytest.approx(1 / 20) and lr[-1] > 0
    assert {constant_multipliers(s, steps, warmdown)[1] for s in range(steps)} == {1.0}
    assert {constant_multipliers(s, steps, 0.0)[0] for s in range(steps)} == {1.0}


def test_step_outside_cycle_is_an_error():
    with pytest.raises(ValueError):
        cyclic_multipliers(10, 10, 0.08, 0.7)
    with pytest.raises(ValueError):
        constant_multipliers(-1, 10, 0.2)


def test_perturb_scale_cosine_endpoints():
    assert perturb_scale(1, 0.25, 0.05, 10) == 0.0
    assert perturb_scale(2, 0.25, 0.05, 10) == pytest.approx(0.25)  # first boundary: start
    assert perturb_scale(11, 0.25, 0.05, 10) == pytest.approx(0.05)  # boundary 10: end
    assert perturb_scale(50, 0.25, 0.05, 10) == pytest.approx(0.05)  # stays at end afterwards
    mid = perturb_scale(6, 0.25, 0.05, 9)
    assert mid == pytest.approx(0.15)  # boundary 5 of 9: half way
    scales = [perturb_scale(c, 0.25, 0.05, 10) for c in range(2, 12)]
    assert np.all(np.diff(scales) < 0)


def test_perturb_scale_matches_leaderboard_formula():
    # The reference (docs/method.md §4.3): s_c = 0.05 + 0.20·½(1 + cos(π(c−1)/(C−2))), c = 1..C−1
    # boundaries, decay over C − 1.
    C = 96
    for c in range(1, C):
        expected = 0.05 + 0.20 * 0.5 * (1 + math.cos(math.pi * (c - 1) / (C - 2)))
        assert perturb_scale(c + 1, 0.25, 0.05, C - 1) == pytest.approx(expected)


def test_perturb_scale_is_prefix_stable():
    # The function has no total-cycle argument; a population with more cycles sees the same prefix.
    short = [perturb_scale(c, 0.25, 0.05, 6) for c in range(1, 9)]
    long = [perturb_scale(c, 0.25, 0.05, 6) for c in range(1, 13)]
    assert long[:8] == short


def test_steps_per_cycle():
    assert steps_per_cycle(2.0, 99_800_000, 524_288) == 381
    assert steps_per_cycle(0.001, 1000, 512) == 1
    assert steps_per_cycle(1.0, 1000, 100) == 10
