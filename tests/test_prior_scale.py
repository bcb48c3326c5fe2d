"""The prior and the curve at scale: val streamed a column block at a time (a memory map, or one
.npy file per member read from disk as the steps do), all of a curve's ensembles scored in one pass, the curve's prefix
fits batched, and the benchmark that times them at the paper's sizes (bench/prior_scale.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hepc.prior.curve import availability_costs, loss_curve, population_index, round_points
from hepc.prior.fit import _BATCH_MIN_ELEMENTS, fit_prior, fit_prior_prefixes
from hepc.prior.rows import FLOOR, RowStack, mixture_nll, uniform_weights
from hepc.prior.select import ensemble_loss, ensemble_losses, top_k
from hepc.steps.prior import load_scores, stream_scores

ROOT = Path(__file__).resolve().parents[1]


def _probs(m: int, n: int, seed: int = 0) -> np.ndarray:
    """Logit-normal probabilities with a shared per-token difficulty and member quality (float32)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.5, 2.5, n)[None, :] + np.linspace(0.0, 1.0, m)[:, None] + 0.6 * rng.standard_normal((m, n))
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def _on_disk(tmp_path: Path, P: np.ndarray) -> tuple[np.ndarray, RowStack]:
    """P as one memory-mapped .npy file, and as one .npy file per row read in blocks (as the steps read val)."""
    np.save(tmp_path / "val.npy", P)
    folders = []
    for i, row in enumerate(P):
        (tmp_path / f"m{i}").mkdir()
        np.save(tmp_path / f"m{i}" / "probs.npy", row)
        folders.append(tmp_path / f"m{i}")
    return np.load(tmp_path / "val.npy", mmap_mode="r"), stream_scores(folders)


# ---------------------------------------------------------------------------------------------
# streamed val


def test_streamed_val_nll_equals_in_memory(tmp_path):
    P = _probs(7, 5003)  # a length no chunk divides: every block has a tail
    P[2, 17] = 0.0  # a token one member gives no probability
    P[:, 40] = 0.0  # a token nobody predicts: floored at 1e-12
    mm, stack = _on_disk(tmp_path, P)
    assert isinstance(mm, np.memmap) and stack.shape == P.shape
    w = np.random.default_rng(1).dirichlet(np.ones(7))
    expected = -np.mean(np.log(np.maximum(w @ P.astype(np.float64), FLOOR)))
    assert mixture_nll(P, w) == pytest.approx(expected, rel=1e-12)
    assert mixture_nll(mm, w) == pytest.approx(expected, rel=1e-12)
    assert mixture_nll(stack, w) == pytest.approx(expected, rel=1e-12)

    ensembles = [top_k(w, k) for k in (1, 3, 7)] + [(np.array([6, 0]), np.array([0.25, 0.75])),
                                                    (np.arange(7), uniform_weights(7))]
    direct = [ensemble_loss(P, i, wk) for i, wk in ensembles]
    for source in (P, mm, stack):
        for chunk in (None, 1, 37, 64, 10_000):
            got = ensemble_losses(source, ensembles, chunk=chunk)
            assert got == pytest.approx(direct, rel=1e-12)
    for (i, wk), d in zip(ensembles, direct):
        assert d == pytest.approx(-np.mean(np.log(np.maximum(wk @ P[i].astype(np.float64), FLOOR))), rel=1e-12)


def test_many_ensembles_in_one_pass_equal_each_alone(tmp_path):
    """More ensembles than one matrix product mixes (64), over different member subsets."""
    P = _probs(12, 2100, seed=7)
    mm, _ = _on_disk(tmp_path, P)
    rng = np.random.default_rng(8)
    ensembles = []
    for e in range(150):
        k = int(rng.integers(1, 13)) if e % 3 else 12
        idx = rng.choice(12, size=k, replace=False) if e < 100 else np.arange(min(k, 1 + e % 4))
        ensembles.append((idx, rng.dirichlet(np.ones(idx.shape[0]))))
    expected = [ensemble_loss(P, i, w) for i, w in ensembles]
    assert ensemble_losses(mm, ensembles, chunk=300) == pytest.approx(expected, rel=1e-12)
    assert ensemble_losses(P, []) == []


def test_stream_scores_reads_what_load_scores_stacks(tmp_path):
    P = _probs(4, 300)
    _, stack = _on_disk(tmp_path, P)
    folders = [tmp_path / f"m{i}" for i in range(4)]
    assert np.array_equal(load_scores(folders), P)
    assert np.array_equal(stack[:, 0:300], P)
    assert np.array_equal(stack[np.array([3, 1]), 10:20], P[[3, 1], 10:20])
    assert np.array_equal(stack[2, 295:400], P[2, 295:])  # a slice past the end stops at the end
    np.save(tmp_path / "two.npy", P[:2])
    with pytest.raises(ValueError, match="1-D"):
        RowStack.from_npy([tmp_path / "two.npy"])


def test_streamed_values_are_checked_as_they_are_read(tmp_path):
    P = _probs(3, 400)
    P[1, 399] = 1.5  # not a probability, in the last block
    mm, stack = _on_disk(tmp_path, P)
    for source in (mm, stack):
        with pytest.raises(ValueError, match="probabilities"):
            ensemble_losses(source, [(np.arange(3), uniform_weights(3))], chunk=64)
    with pytest.raises(ValueError, match="equal length"):
        RowStack([np.zeros(3), np.zeros(4)])


# ---------------------------------------------------------------------------------------------
# the curve's fits: batched, the same fits as one by one


def test_batched_prefix_fits_equal_separate_fits():
    P = _probs(9, 3000, seed=2)
    lengths = [9, 2, 5, 3, 9, 1]
    batched = fit_prior_prefixes(P, lengths, batch=True)
    for j, fit in zip(lengths, batched):
        alone = fit_prior(P[:j])
        assert fit.weights.shape == (j,)
        assert fit.nll == pytest.approx(alone.nll, rel=1e-10)
        np.testing.assert_allclose(fit.weights, alone.weights, atol=1e-9)
        # The same AdamW run: every step's objective equal to rounding. (Which step is best is not
        # compared: once a fit has converged its objective is flat to the last bits, and another
        # summation order may pick another step of the plateau.)
        assert fit.steps == alone.steps == 300 and len(fit.history) == len(alone.history) == 301
        np.testing.assert_allclose(fit.history, alone.history, rtol=1e-12)
        assert fit.history[fit.best_step] == pytest.approx(alone.history[alone.best_step], rel=1e-12)
        assert fit.nll <= fit.uniform_nll  # never worse than uniform on its fit data
    with pytest.raises(ValueError):
        fit_prior_prefixes(P, [10])


def test_curve_equals_the_from_scratch_curve(tmp_path):
    """Large enough (8 × 131,072) that loss_curve batches its fits; val read from a memory map."""
    P, C, E = 2, 4, 1.0
    M = P * C
    assert M * 131_072 >= _BATCH_MIN_ELEMENTS  # the batched path is the one under test
    P_fit, P_val = _probs(M, 131_072, seed=3), _probs(M, 20_000, seed=4)
    np.save(tmp_path / "val.npy", P_val)
    val = np.load(tmp_path / "val.npy", mmap_mode="r")
    avail = availability_costs(P, C, E)
    order = [population_index(p, c, C) for p, c, _ in avail]
    costs = [cost for _, _, cost in avail]
    ks = [1, 3, "all"]
    fits: list[dict] = []
    rows = loss_curve(P_fit, val, order, costs, ks, steps=120, fits=fits, chunk=999)

    expected = []
    for j in range(1, M + 1):  # today's curve: each point's prior fit from scratch, each K scored alone
        fit = fit_prior(P_fit[order[:j]], steps=120)
        assert fits[j - 1]["nll"] == pytest.approx(fit.nll, rel=1e-10)
        assert fits[j - 1]["nll"] <= fits[j - 1]["uniform_nll"]
        for label in ks:
            k = j if label == "all" else label
            if k <= j:
                local, wk = top_k(fit.weights, k)
                expected.append((j, k, ensemble_loss(P_val, np.asarray(order)[local], wk)))
    assert [(r["members"], r["k"]) for r in rows] == [(j, k) for j, k, _ in expected]
    for r, (_, _, loss) in zip(rows, expected):
        assert r["val_loss"] == pytest.approx(loss, rel=1e-9)


def test_round_points_curve_from_a_row_stack(tmp_path):
    M = 6
    P_fit, P_val = _probs(M, 800, seed=5), _probs(M, 900, seed=6)
    _, stack = _on_disk(tmp_path, P_val)
    order, costs = list(range(M)), [float(i + 1) for i in range(M)]
    pts = round_points(M, 3)
    a = loss_curve(P_fit, stack, order, costs, [2, "all"], points=pts, steps=50)
    b = loss_curve(P_fit, P_val, order, costs, [2, "all"], points=pts, steps=50)
    assert [r["members"] for r in a] == [3, 3, 6, 6]
    for x, y in zip(a, b):
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-12)


# ---------------------------------------------------------------------------------------------
# the benchmark


def test_benchmark_quick_runs_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "prior_scale.py"), "--quick", "--dir", str(tmp_path)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for figure in ("fit learned", "fit shrinkage", "prior scoring", "curve (learned prior", "peak RssAnon",
                   "VmHWM", "from-scratch fits, estimated"):
        assert figure in out
    result = next(line for line in out.splitlines() if line.startswith("RESULT "))
    timings = dict(item.split("=") for item in result.split()[1:])
    assert {"fit_learned", "curve", "prior_scoring"} <= set(timings)
    assert all(float(v.rstrip("s")) >= 0 for v in timings.values())
    assert list(tmp_path.iterdir()) == []  # the val file and its folder are deleted at the end
