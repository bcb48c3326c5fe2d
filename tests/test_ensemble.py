"""Tests for hepc.prior: the learned prior, top-K selection, scoring, budgets and the curve."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from prob_helpers import adversarial_probs

from hepc.prior.curve import availability_costs, loss_curve, population_index, round_points
from hepc.prior.fit import FitResult, _objective_and_grad, fit_prior, fit_prior_em
from hepc.prior.rows import FLOOR, mixture_nll, uniform_weights
from hepc.prior.select import ensemble_loss, top_k


def _mixture_data(w_star, V=40, N=40_000, seed=1):
    """Tokens x_n ~ Σ_i w*_i q_i over V symbols; P[i, n] = q_i(x_n) (float32, as cached)."""
    rng = np.random.default_rng(seed)
    M = len(w_star)
    Q = rng.dirichlet(np.full(V, 0.3), size=M)  # M distinct categorical "models"
    z = rng.choice(M, size=N, p=w_star)
    u = rng.random(N)
    x = np.minimum((np.cumsum(Q, axis=1)[z] < u[:, None]).sum(axis=1), V - 1)
    return Q[:, x].astype(np.float32)


# ---------------------------------------------------------------------------------------------
# mixture_nll and uniform weights


def test_mixture_nll_matches_formula():
    rng = np.random.default_rng(0)
    P = rng.random((4, 50)).astype(np.float32)
    w = np.array([0.1, 0.2, 0.3, 0.4])
    expected = -np.mean(np.log(w @ P.astype(np.float64)))
    assert mixture_nll(P, w) == pytest.approx(expected, rel=1e-12)


def test_mixture_nll_floors_zero_probability():
    P = np.array([[0.0, 0.5]], dtype=np.float32)
    got = mixture_nll(P, np.array([1.0]))
    assert math.isfinite(got)
    assert got == pytest.approx((-math.log(FLOOR) - math.log(0.5)) / 2, rel=1e-12)
    # a token no member predicts, in a multi-member mixture
    P2 = np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    assert mixture_nll(P2, uniform_weights(2)) == pytest.approx(-math.log(FLOOR) / 2, rel=1e-12)


def test_mixture_nll_zero_weights_ignore_rows():
    P = np.array([[0.5, 0.5], [0.0, 0.0]], dtype=np.float32)
    assert mixture_nll(P, np.array([1.0, 0.0])) == pytest.approx(math.log(2), rel=1e-12)


def test_mixture_nll_rejects_bad_input():
    P = np.full((2, 3), 0.5)
    with pytest.raises(ValueError):
        mixture_nll(P, np.array([0.5, 0.6]))  # does not sum to 1
    with pytest.raises(ValueError):
        mixture_nll(P, np.array([1.0]))  # wrong length
    with pytest.raises(ValueError):
        mixture_nll(np.full((2, 3), 2.0), uniform_weights(2))  # not probabilities
    with pytest.raises(ValueError):
        mixture_nll(np.full((2, 3), np.nan), uniform_weights(2))


def test_uniform_weights():
    w = uniform_weights(7)
    assert w.dtype == np.float64 and w.shape == (7,)
    assert w.sum() == pytest.approx(1.0) and np.all(w == w[0])
    with pytest.raises(ValueError):
        uniform_weights(0)


# ---------------------------------------------------------------------------------------------
# the prior


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    P = rng.uniform(0.01, 1.0, size=(6, 300))
    a = rng.standard_normal(6)
    _, g = _objective_and_grad(P, a)
    h = 1e-6
    fd = np.empty_like(a)
    for j in range(a.shape[0]):
        e = np.zeros_like(a)
        e[j] = h
        fd[j] = (_objective_and_grad(P, a + e)[0] - _objective_and_grad(P, a - e)[0]) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-9)
    # the gradient through the softmax is orthogonal to the all-ones direction
    assert abs(g.sum()) < 1e-12


@pytest.mark.parametrize("solver", ["adamw", "em"])
def test_prior_recovers_true_mixture_weights(solver):
    w_star = np.array([0.45, 0.30, 0.15, 0.10])
    P = _mixture_data(w_star)
    fit = fit_prior(P) if solver == "adamw" else fit_prior_em(P)
    assert isinstance(fit, FitResult) and fit.solver == solver
    assert fit.weights.dtype == np.float64 and fit.weights.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(fit.weights, w_star, atol=0.03)
    assert fit.nll < fit.uniform_nll
    assert fit.nll == mixture_nll(P, fit.weights)


def test_both_solvers_reach_the_same_optimum():
    P = _mixture_data(np.array([0.45, 0.30, 0.15, 0.10]), seed=5)
    adam, em = fit_prior(P), fit_prior_em(P, iters=2000)
    assert abs(adam.nll - em.nll) < 1e-4
    np.testing.assert_allclose(adam.weights, em.weights, atol=0.01)
    # the EM history is monotone (no token is floored here)
    assert np.all(np.diff(em.history) <= 1e-12)


def test_fit_bookkeeping():
    P = np.random.default_rng(0).random((3, 100))
    fit = fit_prior(P, steps=20)
    assert fit.steps == 20 and len(fit.history) == 21
    assert fit.best_step == -1 or fit.history[fit.best_step] == pytest.approx(fit.nll, rel=1e-9)
    assert fit.uniform_nll == mixture_nll(P, uniform_weights(3))
    fit0 = fit_prior(P, steps=0)
    assert fit0.steps == 0 and len(fit0.history) == 1




@pytest.mark.parametrize("solver", ["adamw", "em"])
def test_never_worse_than_uniform_on_fit_data(solver):
    for P in adversarial_probs():
        fit = fit_prior(P, steps=60) if solver == "adamw" else fit_prior_em(P, iters=60)
        M = P.shape[0]
        assert fit.weights.shape == (M,)
        assert np.all(np.isfinite(fit.weights)) and np.all(fit.weights >= 0)
        assert fit.weights.sum() == pytest.approx(1.0, abs=1e-12)
        assert math.isfinite(fit.nll)
        assert fit.nll <= fit.uniform_nll
        assert mixture_nll(P, fit.weights) <= mixture_nll(P, uniform_weights(M))


def test_fit_is_deterministic():
    P = np.random.default_rng(2).random((5, 80))
    a, b = fit_prior(P, steps=40, seed=3), fit_prior(P, steps=40, seed=3)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert a.history == b.history


def test_adamw_matches_torch():
    """Same trajectory as torch.optim.AdamW + clip_grad_norm_ (the reference optimizer), float64."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    P = rng.uniform(0.0, 1.0, size=(5, 200)) ** 3
    P[:, :3] = 0.0  # floored tokens too
    steps = 25
    fit = fit_prior(P, steps=steps, seed=0)
    a = torch.tensor(np.random.default_rng(0).standard_normal(5) * 1e-4, requires_grad=True)
    Pt = torch.tensor(P)
    opt = torch.optim.AdamW([a], lr=0.5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    history = []
    for _ in range(steps):
        opt.zero_grad()
        J = -torch.log(torch.clamp(torch.softmax(a, 0) @ Pt, min=FLOOR)).mean()
        J.backward()
        torch.nn.utils.clip_grad_norm_([a], 1.0)
        opt.step()
        history.append(J.item())
    np.testing.assert_allclose(fit.history[:steps], history, rtol=1e-9, atol=1e-12)


def test_module_does_not_import_torch():
    code = (
        "import sys\n"
        "import hepc.prior.curve, hepc.prior.fit, hepc.prior.rows, hepc.prior.select, hepc.prior.shrinkage\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# top-K and scoring


def test_top_k_selects_and_renormalises():
    w = np.array([0.1, 0.4, 0.2, 0.3])
    idx, wk = top_k(w, 2)
    assert idx.tolist() == [1, 3]
    np.testing.assert_allclose(wk, [0.4 / 0.7, 0.3 / 0.7])
    assert wk.sum() == pytest.approx(1.0, abs=1e-15)


def test_top_k_clips_to_all_members():
    w = np.array([0.1, 0.4, 0.2, 0.3])
    for k in (4, 5, 100):
        idx, wk = top_k(w, k)
        assert sorted(idx.tolist()) == [0, 1, 2, 3]
        np.testing.assert_allclose(wk, w[idx])
    with pytest.raises(ValueError):
        top_k(w, 0)


def test_top_k_ties_go_to_lower_index():
    idx, wk = top_k(uniform_weights(6), 3)
    assert idx.tolist() == [0, 1, 2]
    np.testing.assert_allclose(wk, [1 / 3] * 3)
    idx, _ = top_k(np.array([0.2, 0.3, 0.2, 0.3]), 3)
    assert idx.tolist() == [1, 3, 0]
    idx, _ = top_k(np.array([0.0, 1.0, 0.0, 0.0]), 3)  # zero weights tie too
    assert idx.tolist() == [1, 0, 2]


def test_ensemble_loss_is_weighted_probability_average():
    rng = np.random.default_rng(4)
    P_val = rng.random((5, 70)).astype(np.float32)
    idx, wk = top_k(np.array([0.05, 0.35, 0.1, 0.3, 0.2]), 3)
    expected = -np.mean(np.log(wk @ P_val[idx].astype(np.float64)))
    assert ensemble_loss(P_val, idx, wk) == pytest.approx(expected, rel=1e-12)
    full = np.zeros(5)
    full[idx] = wk
    assert ensemble_loss(P_val, idx, wk) == pytest.approx(mixture_nll(P_val, full), rel=1e-12)
    with pytest.raises(ValueError):
        ensemble_loss(P_val, np.array([1, 1]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError):
        ensemble_loss(P_val, np.array([9]), np.array([1.0]))


# ---------------------------------------------------------------------------------------------
# budgets and the curve


def test_availability_costs_round_robin():
    got = availability_costs(3, 2, 0.5)
    assert got == [(1, 1, 0.5), (2, 1, 1.0), (3, 1, 1.5), (1, 2, 2.0), (2, 2, 2.5), (3, 2, 3.0)]
    for p, c, cost in got:
        assert cost == ((c - 1) * 3 + p) * 0.5
    assert got[-1][2] == 3 * 2 * 0.5  # the whole budget P·C·E
    assert [population_index(p, c, 2) for p, c, _ in got] == [0, 2, 4, 1, 3, 5]
    big = availability_costs(5, 7, 2.0)
    assert len(big) == 35 and big[-1][2] == 5 * 7 * 2.0
    assert [x[2] for x in big] == sorted(x[2] for x in big)


def test_round_points():
    assert round_points(6, 3) == [3, 6]
    assert round_points(7, 3) == [3, 6, 7]
    assert round_points(2, 3) == [2]


def _population(P=3, C=2, E=0.5, seed=0):
    rng = np.random.default_rng(seed)
    M = P * C
    P_fit = rng.beta(2, 2, size=(M, 120)).astype(np.float32)
    P_val = rng.beta(2, 2, size=(M, 150)).astype(np.float32)
    avail = availability_costs(P, C, E)
    order = [population_index(p, c, C) for p, c, _ in avail]
    costs = [cost for _, _, cost in avail]
    return P_fit, P_val, order, costs


def test_loss_curve_points_and_k_filtering():
    P_fit, P_val, order, costs = _population()
    rows = loss_curve(P_fit, P_val, order, costs, [1, 2, 4, "all"], steps=30)
    # k=1 at 6 points, k=2 at 5, k=4 at 3, "all" at 6
    assert len(rows) == 20
    assert {r["members"] for r in rows} == set(range(1, 7))
    for r in rows:
        assert set(r) == {"budget_epochs", "members", "k", "k_label", "val_loss"}
        assert r["k"] <= r["members"]
        assert r["budget_epochs"] == costs[r["members"] - 1]
        if r["k_label"] == "all":
            assert r["k"] == r["members"]
        else:
            assert r["k"] == r["k_label"]
        assert math.isfinite(r["val_loss"])
    budgets = [r["budget_epochs"] for r in rows]
    assert budgets == sorted(budgets)
    assert [r["k_label"] for r in rows if r["members"] == 3] == [1, 2, "all"]


def test_loss_curve_points_argument():
    P_fit, P_val, order, costs = _population()
    rows = loss_curve(P_fit, P_val, order, costs, ["all"], steps=10, points=round_points(6, 3))
    assert [(r["members"], r["budget_epochs"]) for r in rows] == [(3, 1.5), (6, 3.0)]
    with pytest.raises(ValueError):
        loss_curve(P_fit, P_val, order, costs, ["all"], points=[7])


def test_loss_curve_uniform_all_is_plain_average():
    P_fit, P_val, order, costs = _population()
    rows = loss_curve(P_fit, P_val, order, costs, ["all", 2], prior="uniform")
    for r in rows:
        avail = order[: r["members"]]
        if r["k_label"] == "all":
            plain = -np.mean(np.log(P_val[avail].astype(np.float64).mean(axis=0)))
        else:  # uniform ties: the first-available members
            plain = -np.mean(np.log(P_val[avail[:2]].astype(np.float64).mean(axis=0)))
        assert r["val_loss"] == pytest.approx(plain, rel=1e-12)


def test_loss_curve_learned_prior_matches_direct_computation():
    P_fit, P_val, order, costs = _population(seed=3)
    rows = loss_curve(P_fit, P_val, order, costs, [2], steps=40, points=[5])
    w = fit_prior(P_fit[order[:5]], steps=40).weights
    local, wk = top_k(w, 2)
    assert rows[0]["val_loss"] == pytest.approx(
        ensemble_loss(P_val, np.asarray(order)[local], wk), rel=1e-12)
    # scored on its own fit data, the learned "all" ensemble is never worse than uniform
    learned = loss_curve(P_fit, P_fit, order, costs, ["all"], steps=40)
    uniform = loss_curve(P_fit, P_fit, order, costs, ["all"], prior="uniform")
    for a, b in zip(learned, uniform):
        assert a["val_loss"] <= b["val_loss"] + 1e-12


def test_loss_curve_rejects_bad_input():
    P_fit, P_val, order, costs = _population()
    with pytest.raises(ValueError):
        loss_curve(P_fit, P_val, order, costs[::-1], ["all"])  # decreasing budgets
    with pytest.raises(ValueError):
        loss_curve(P_fit, P_val, order, costs, [0])
    with pytest.raises(ValueError):
        loss_curve(P_fit, P_val, order, costs, ["best"])
    with pytest.raises(ValueError):
        loss_curve(P_fit, P_val, order, costs, ["all"], prior="bayes")
    with pytest.raises(ValueError):
        loss_curve(P_fit, P_val, [0, 0, 1, 2, 3, 4], costs, ["all"])
