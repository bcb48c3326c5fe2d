"""The shrinkage prior (`prior.kind: shrinkage`): MAP-EM toward uniform, strength by cross-validation
over held-out documents; its folds, its keys, and the val-vs-uniform figures every prior reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from cli_helpers import TINY, hepc
from prob_helpers import adversarial_probs

from hepc.compile.compiler import compile_spec
from hepc.compile.graph import IMPL_VERSIONS
from hepc.errors import SpecError
from hepc.hashing import step_key
from hepc.prior.curve import loss_curve
from hepc.prior.fit import fit_prior
from hepc.prior.rows import mixture_nll, uniform_weights
from hepc.prior.select import ensemble_loss, top_k
from hepc.prior.shrinkage import (
    SHRINKAGE_EM_ITERS,
    SHRINKAGE_FOLDS,
    SHRINKAGE_STRENGTHS,
    ShrinkageFit,
    cv_folds,
    document_units,
    fit_prior_shrinkage,
)
from hepc.spec.load import load_spec
from hepc.spec.models import Prior


def _mixture_tokens(w_star, N, V=40, seed=1, tokens_seed=None):
    """Tokens x_n ~ Σ w*_i q_i over V symbols; P[i, n] = q_i(x_n) (float32, as cached): held-out
    data that carries the signal of known weights. The members q_i come from `seed`, the tokens from
    `tokens_seed` (default: the same stream)."""
    rng = np.random.default_rng(seed)
    M = len(w_star)
    Q = rng.dirichlet(np.full(V, 0.3), size=M)
    if tokens_seed is not None:
        rng = np.random.default_rng(tokens_seed)
    z = rng.choice(M, size=N, p=w_star)
    u = rng.random(N)
    x = np.minimum((np.cumsum(Q, axis=1)[z] < u[:, None]).sum(axis=1), V - 1)
    return Q[:, x].astype(np.float32)


def _noise(M, N, seed):
    """i.i.d. probabilities: no member is better than another, and uniform is the best prior."""
    return np.random.default_rng(seed).uniform(0.02, 0.98, size=(M, N)).astype(np.float32)


def _doc_starts(n_probs, length, seed=None):
    """Start offsets into heldout.npy (n_probs + 1 tokens) of documents of `length` tokens (random
    lengths around it with a seed)."""
    if seed is None:
        return np.arange(0, n_probs, length, dtype=np.int64)
    lengths = np.random.default_rng(seed).integers(1, 2 * length, size=n_probs)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    return starts[starts <= n_probs].astype(np.int64)


# ---------------------------------------------------------------------------------------------
# the fit


def test_recovers_known_weights_when_heldout_carries_signal():
    w_star = np.array([0.45, 0.30, 0.15, 0.10])
    P = _mixture_tokens(w_star, N=40_000)
    fit = fit_prior_shrinkage(P, _doc_starts(P.shape[1], 200))
    assert isinstance(fit, ShrinkageFit) and fit.solver == "map-em"
    assert fit.fold_rule == "documents" and fit.folds == SHRINKAGE_FOLDS and fit.documents == 200
    assert fit.strength <= 0.03  # plenty of signal: (almost) no pull toward uniform
    np.testing.assert_allclose(fit.weights, w_star, atol=0.03)
    assert fit.weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert fit.nll < fit.uniform_nll and fit.nll == mixture_nll(P, fit.weights)
    # and on fresh tokens from the same mixture it beats uniform
    fresh = _mixture_tokens(w_star, N=20_000, seed=1, tokens_seed=99)
    assert mixture_nll(fresh, fit.weights) < mixture_nll(fresh, uniform_weights(4))
    # the grid is ascending, 0 (maximum likelihood) to 1 (uniform), one CV figure per strength
    assert fit.strengths == sorted(SHRINKAGE_STRENGTHS) and len(fit.cv_nll) == len(fit.strengths)
    assert fit.cv_nll[-1] == pytest.approx(fit.uniform_nll, rel=1e-12)  # uniform: nothing fit


def test_shrinks_to_uniform_when_heldout_is_noise():
    """Pure-noise probabilities: whatever a fit gains on them is noise, so the one-standard-error
    rule keeps the uniform end, while the plain learned fit moves far from uniform."""
    M, N = 32, 3000
    for seed in range(6):
        P = _noise(M, N, seed)
        fit = fit_prior_shrinkage(P, _doc_starts(N, 100))
        assert fit.strength == 1.0, (seed, fit.cv_nll, fit.cv_se)
        np.testing.assert_array_equal(fit.weights, uniform_weights(M))
        learned = fit_prior(P).weights
        assert np.abs(learned - 1 / M).max() * M > 0.5
    # what the one-SE rule guards against: the lowest cv_nll alone sometimes takes a noise gain
    P = _noise(16, 3000, 7)
    plain = fit_prior_shrinkage(P, _doc_starts(3000, 100), rule="min")
    assert plain.strength < 1.0
    fresh = _noise(16, 20_000, 107)
    assert mixture_nll(fresh, plain.weights) > mixture_nll(fresh, uniform_weights(16))


def test_one_se_rule_against_min_rule():
    P = _noise(16, 3000, 7)
    docs = _doc_starts(3000, 100)
    one_se, plain = fit_prior_shrinkage(P, docs), fit_prior_shrinkage(P, docs, rule="min")
    assert plain.strength == plain.min_strength == one_se.min_strength
    assert one_se.strength >= plain.strength
    g = one_se.strengths.index(one_se.strength)
    b = one_se.strengths.index(one_se.min_strength)
    assert one_se.cv_nll[g] - one_se.cv_nll[b] <= one_se.cv_se[g]
    assert one_se.cv_se[b] == 0.0
    for s, cv, se in zip(one_se.strengths, one_se.cv_nll, one_se.cv_se):  # nothing larger qualifies
        if s > one_se.strength:
            assert cv - one_se.cv_nll[b] > se
    with pytest.raises(ValueError):
        fit_prior_shrinkage(P, docs, rule="best")




def test_never_worse_than_uniform_on_fit_data():
    for P in adversarial_probs(8, 300):
        M, N = P.shape
        for docs in (None, _doc_starts(N, 7)):
            fit = fit_prior_shrinkage(P, docs, iters=20)
            assert fit.weights.shape == (M,)
            assert np.all(np.isfinite(fit.weights)) and np.all(fit.weights >= 0)
            assert fit.weights.sum() == pytest.approx(1.0, abs=1e-12)
            assert math.isfinite(fit.nll) and fit.nll <= fit.uniform_nll
            assert mixture_nll(P, fit.weights) <= mixture_nll(P, uniform_weights(M)) + 1e-12
            assert all(math.isfinite(x) for x in fit.cv_nll + fit.cv_se)
    one_token = fit_prior_shrinkage(np.random.default_rng(0).random((3, 1)))
    assert one_token.fold_rule == "none" and one_token.folds == 0 and one_token.strength == 1.0


def test_strengths_0_and_1_are_maximum_likelihood_and_uniform():
    P = _mixture_tokens(np.array([0.6, 0.3, 0.1]), N=6000, seed=3)
    docs = _doc_starts(6000, 100)
    uni = fit_prior_shrinkage(P, docs, strengths=[1.0])
    assert uni.strength == 1.0 and np.array_equal(uni.weights, uniform_weights(3))
    ml = fit_prior_shrinkage(P, docs, strengths=[0.0], iters=500)
    assert ml.strength == 0.0
    assert ml.nll == pytest.approx(fit_prior(P, steps=2000).nll, abs=1e-5)
    # a stronger pull keeps the weights nearer uniform: every weight between ML and uniform
    mid = fit_prior_shrinkage(P, docs, strengths=[0.5])
    assert np.abs(mid.weights - 1 / 3).max() < np.abs(ml.weights - 1 / 3).max()
    with pytest.raises(ValueError):
        fit_prior_shrinkage(P, docs, strengths=[1.5])
    with pytest.raises(ValueError):
        fit_prior_shrinkage(P, docs, strengths=[])


def test_many_correlated_members_converge():
    """Snapshot-like members (a shared token difficulty, small member noise, a quality trend): every
    fit converges before the cycle cap, and the later, better members get more weight."""
    rng = np.random.default_rng(0)
    M, N = 64, 4096
    base = rng.normal(1.0, 2.0, size=N)
    P = 1 / (1 + np.exp(-(base + 0.3 * rng.standard_normal((M, N)) + np.linspace(0, 0.5, M)[:, None])))
    fit = fit_prior_shrinkage(P.astype(np.float32), _doc_starts(N, 128))
    assert fit.steps < 3 * SHRINKAGE_EM_ITERS
    assert fit.nll < fit.uniform_nll and fit.strength < 1.0
    assert fit.weights[M // 2:].sum() > fit.weights[: M // 2].sum()


# ---------------------------------------------------------------------------------------------
# folds


def test_document_units_map_heldout_offsets_to_probability_entries():
    # heldout.npy of 13 tokens, documents at 0, 5, 9: probs has 12 entries, entry t scores token t+1
    np.testing.assert_array_equal(document_units(12, np.array([0, 5, 9])), [0, 4, 8])
    np.testing.assert_array_equal(document_units(12, np.array([0, 1, 2])), [0, 1])  # a 1-token first doc
    np.testing.assert_array_equal(document_units(12, np.array([5, 9, 40])), [0, 4, 8])  # past the end: dropped
    with pytest.raises(ValueError):
        document_units(12, np.array([0.0, 5.0]))
    with pytest.raises(ValueError):
        document_units(12, np.array([-1, 5]))


@pytest.mark.parametrize("seed", range(6))
def test_cv_folds_never_split_a_document(seed):
    n = 5000
    starts = _doc_starts(n, 150, seed=seed)
    folds = cv_folds(n, 5, starts)
    assert folds.rule == "documents" and folds.count == 5
    assert folds.bounds[0] == 0 and folds.bounds[-1] == n and np.all(np.diff(folds.bounds) > 0)
    t = np.arange(n)
    doc_of = np.searchsorted(starts, t + 1, side="right") - 1  # entry t is token t+1
    fold_of = np.searchsorted(folds.bounds, t, side="right") - 1
    for d in np.unique(doc_of):
        assert np.unique(fold_of[doc_of == d]).size == 1, f"document {d} split"
    assert set(folds.bounds[1:-1].tolist()) <= set(folds.units.tolist())
    # balanced by tokens within about a document's length
    assert np.abs(np.diff(folds.bounds) - n / 5).max() < 2 * 300


def test_cv_folds_fall_back_to_token_blocks():
    folds = cv_folds(1000, 5)
    assert folds.rule == "token-blocks" and folds.documents is None
    np.testing.assert_array_equal(folds.bounds, [0, 200, 400, 600, 800, 1000])
    assert folds.units.size == 5 * 8 and set(folds.bounds[:-1].tolist()) <= set(folds.units.tolist())
    one_doc = cv_folds(1000, 5, np.array([0]))
    assert one_doc.rule == "token-blocks" and one_doc.documents == 1
    few = cv_folds(1000, 5, np.array([0, 300, 700]))  # three documents: three folds
    assert few.rule == "documents" and few.count == 3
    assert cv_folds(1, 5).rule == "none"
    with pytest.raises(ValueError):
        cv_folds(1000, 1)
    fit = fit_prior_shrinkage(_noise(4, 1000, 0))
    assert fit.fold_rule == "token-blocks" and fit.documents is None and sum(fit.fold_sizes) == 1000


# ---------------------------------------------------------------------------------------------
# the curve


def test_loss_curve_refits_the_shrinkage_prior_at_each_point():
    rng = np.random.default_rng(2)
    P_fit = rng.beta(2, 2, size=(6, 600)).astype(np.float32)
    P_val = rng.beta(2, 2, size=(6, 400)).astype(np.float32)
    order, costs = [0, 3, 1, 4, 2, 5], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    docs = _doc_starts(600, 50)
    fits: list[dict] = []
    rows = loss_curve(P_fit, P_val, order, costs, [2, "all"], prior="shrinkage", doc_starts=docs, fits=fits)
    assert len(rows) == 11 and [f["members"] for f in fits] == [1, 2, 3, 4, 5, 6]
    for r in rows:
        assert set(r) == {"budget_epochs", "members", "k", "k_label", "val_loss"}
    for f in fits:
        assert f["fold_rule"] == "documents" and f["nll"] <= f["uniform_nll"]
    w = fit_prior_shrinkage(P_fit[order[:4]], docs).weights
    local, wk = top_k(w, 2)
    got = next(r for r in rows if r["members"] == 4 and r["k_label"] == 2)
    assert got["val_loss"] == pytest.approx(ensemble_loss(P_val, np.asarray(order)[local], wk), rel=1e-12)
    learned_fits: list[dict] = []
    loss_curve(P_fit, P_val, order, costs, ["all"], steps=20, fits=learned_fits)
    assert [set(f) for f in learned_fits] == [{"members", "nll", "uniform_nll"}] * 6
    with pytest.raises(ValueError):
        loss_curve(P_fit, P_val, order, costs, ["all"], prior="shrunk")


# ---------------------------------------------------------------------------------------------
# spec and keys


def _compiled(*overrides):
    return compile_spec(load_spec(TINY, list(overrides)))


def _prior_keys(c):
    return {s.kind: s for s in c.graph if s.kind in ("prior", "curve")}


def test_defaults_match_the_library():
    p = Prior()
    assert p.kind == "learned"
    assert p.strengths == list(SHRINKAGE_STRENGTHS) and p.folds == SHRINKAGE_FOLDS and p.em_iters == SHRINKAGE_EM_ITERS


@pytest.mark.parametrize("kind", ["learned", "uniform"])
def test_learned_and_uniform_keys_unchanged(kind):
    """The prior/curve keys of learned and uniform specs follow the recipe that predates the
    shrinkage prior exactly: {kind, steps, lr} params, score inputs only."""
    c = _compiled(f"prior.kind={kind}")
    (pop,) = c.populations
    steps = _prior_keys(c)
    params = {
        "prior": {"kind": kind, "steps": 100, "lr": 0.5},
        "budgets": [1, 2, "all"],
        "members": [[m.trajectory, m.cycle, m.cost_epochs] for m in pop.members],
    }
    inputs = {split: [m.score_keys[split] for m in pop.members] for split in ("heldout", "val")}
    for kind_ in ("prior", "curve"):
        assert steps[kind_].params == params and steps[kind_].inputs == inputs
        assert steps[kind_].key == step_key(kind_, IMPL_VERSIONS[kind_], params, inputs)
    # the shrinkage fields are not part of a learned or uniform key
    assert {s.key for s in _compiled(f"prior.kind={kind}", "prior.folds=3", "prior.strengths=[0, 1]",
                                      "prior.em_iters=7").graph} == set(c.graph.steps)


def test_shrinkage_keys():
    base, shrink = _compiled(), _compiled("prior.kind=shrinkage")
    (pop,) = shrink.populations
    new = {f"{s.kind}:{s.name}" for s in shrink.graph if s.key not in base.graph.steps}
    assert new == {"prior:p2xc2", "curve:p2xc2"}
    steps = _prior_keys(shrink)
    for s in steps.values():
        assert s.inputs["corpus"] == pop.corpus_key
        assert s.params["prior"] == {"kind": "shrinkage", "folds": 5, "strengths": list(SHRINKAGE_STRENGTHS),
                                     "em_iters": 100, "solver": "map-em-squarem/1"}
    # its own fields change its keys; the learned prior's do not
    for override in ("prior.folds=3", "prior.strengths=[0, 0.5, 1]", "prior.em_iters=10"):
        other = _prior_keys(_compiled("prior.kind=shrinkage", override))
        assert all(other[k].key != steps[k].key for k in steps)
    same = _prior_keys(_compiled("prior.kind=shrinkage", "prior.steps=50", "prior.lr=0.1"))
    assert all(same[k].key == steps[k].key for k in steps)
    # integers or floats, any order, repeats: one grid, one key
    a = _prior_keys(_compiled("prior.kind=shrinkage", "prior.strengths=[0, 0.5, 1]"))
    b = _prior_keys(_compiled("prior.kind=shrinkage", "prior.strengths=[1.0, 0.5, 0.0, 0.5]"))
    assert a["prior"].key == b["prior"].key


@pytest.mark.parametrize(
    "override, field",
    [("prior.folds=1", "prior.folds"), ("prior.strengths=[]", "prior.strengths"),
     ("prior.strengths=[1.5]", "prior.strengths[0]"), ("prior.em_iters=0", "prior.em_iters"),
     ("prior.kind=bayes", "prior.kind")],
)
def test_bad_shrinkage_fields_are_located(override, field):
    with pytest.raises(SpecError) as err:
        load_spec(TINY, ["prior.kind=shrinkage", override])
    assert [p.path for p in err.value.problems] == [field]


# ---------------------------------------------------------------------------------------------
# end to end


def test_tiny_population_with_the_shrinkage_prior(tmp_path):
    res = json.loads(hepc("run", TINY, "prior.kind=shrinkage", "--json", store=tmp_path).stdout)
    fit = res["fit"]
    assert res["prior"]["kind"] == "shrinkage"
    assert fit["fold_rule"] in ("documents", "token-blocks") and fit["folds"] >= 2
    assert fit["strength"] in fit["strengths"] and len(fit["cv_nll"]) == len(fit["strengths"])
    assert fit["nll"] <= fit["uniform_nll"]
    for key in ("val_nll", "uniform_val_nll"):
        assert math.isfinite(fit[key])
    weights = np.array([m["weight"] for m in res["members"]])
    assert weights.sum() == pytest.approx(1.0, abs=1e-9)
    assert len(res["curve"]) == len([p for p in res["curve"] if {"members", "k_label", "val_loss"} <= set(p)])
    again = json.loads(hepc("results", TINY, "prior.kind=shrinkage", "--json", store=tmp_path).stdout)
    assert again["fit"] == fit
    text = hepc("results", TINY, "prior.kind=shrinkage", store=tmp_path).stdout
    assert f"prior on val {fit['val_nll']:.4f} vs uniform {fit['uniform_val_nll']:.4f}" in text
    assert "shrinkage λ=" in text
    # changing only the prior re-fits without training or scoring: learned reuses every cycle and score
    learned = json.loads(hepc("run", TINY, "--json", store=tmp_path).stdout)
    assert learned["fit"]["uniform_val_nll"] == pytest.approx(fit["uniform_val_nll"], rel=1e-12)
    assert math.isfinite(learned["fit"]["val_nll"])
