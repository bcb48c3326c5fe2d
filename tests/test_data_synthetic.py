"""The synthetic Markov source: exact entropy rate, prefix-stable documents, fast generation."""

import itertools
import time

import numpy as np
import pytest

from hepc.data import DataError
from hepc.data.synthetic import DOCS_PER_BLOCK, generate_blocks, iter_documents, markov_chain

CFG = {"kind": "synthetic", "alphabet_size": 32, "order": 2, "concentration": 0.1, "doc_tokens": 1000, "seed": 0}


@pytest.mark.parametrize(
    "overrides",
    [{}, {"alphabet_size": 16, "order": 3, "doc_tokens": 200}, {"order": 0, "concentration": 0.5}, {"order": 1, "concentration": 2.0}],
)
def test_entropy_rate_matches_empirical_nll_of_the_true_chain(overrides):
    cfg = {**CFG, **overrides}
    chain = markov_chain(cfg)
    symbols = generate_blocks(cfg, corpus_seed=0, first_block=0, n_blocks=max(1, 400_000 // (DOCS_PER_BLOCK * cfg["doc_tokens"])))
    assert chain.nll_nats(symbols) == pytest.approx(chain.entropy_rate_nats, abs=0.01)


def test_stationary_distribution_is_stationary():
    chain = markov_chain(CFG)
    a, s = chain.alphabet_size, chain.n_states
    step = (chain.stationary[:, None] * chain.rows).reshape(a, s // a, a).sum(axis=0).ravel()
    np.testing.assert_allclose(step, chain.stationary, atol=1e-12)
    assert chain.stationary.sum() == pytest.approx(1.0)
    # a document's first `order` symbols are a draw from pi: with doc_tokens = order, a document is just that draw
    starts = generate_blocks({**CFG, "doc_tokens": 2}, 0, 0, 400).astype(np.int64)  # 25,600 start states
    pi = chain.stationary.reshape(a, a)  # pi[oldest symbol, newest symbol]
    for axis, column in ((1, 0), (0, 1)):
        empirical = np.bincount(starts[:, column], minlength=a) / len(starts)
        assert np.abs(empirical - pi.sum(axis=axis)).sum() < 0.06
    # and every later position is stationary too: pair frequencies over whole documents match pi
    symbols = generate_blocks(CFG, 0, 0, 10).astype(np.int64)
    pairs = np.bincount((symbols[:, :-1] * a + symbols[:, 1:]).ravel(), minlength=s) / symbols[:, 1:].size
    assert np.abs(pairs - chain.stationary).sum() < 0.06


def test_lower_concentration_means_lower_entropy():
    rates = [markov_chain({**CFG, "concentration": c}).entropy_rate_nats for c in (0.03, 0.3, 3.0)]
    assert rates[0] < rates[1] < rates[2] < np.log(32)


def test_documents_are_stable_when_more_are_requested():
    few = list(itertools.islice(iter_documents(CFG, 0), 10))
    many = list(itertools.islice(iter_documents(CFG, 0), 500))
    assert many[:10] == few
    block3 = generate_blocks(CFG, 0, first_block=3, n_blocks=1)
    assert [row.tobytes() for row in np.frombuffer(markov_chain(CFG).alphabet, np.uint8)[block3]] == many[192:256]
    assert all(len(doc) == 1000 and set(doc) <= set(markov_chain(CFG).alphabet) for doc in many)
    assert list(itertools.islice(iter_documents(CFG, 1), 10)) != few  # the corpus seed picks another sample


def test_generation_speed():
    markov_chain(CFG)  # build the chain once (cached), time the sampling
    start = time.perf_counter()
    n = sum(len(doc) for doc in itertools.islice(iter_documents(CFG, 7), 2_000))
    assert n == 2_000_000
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    "field, value", [("alphabet_size", 1), ("alphabet_size", 96), ("order", 5), ("concentration", 0.0), ("doc_tokens", 1)]
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(DataError) as err:
        markov_chain({**CFG, field: value}) if field != "doc_tokens" else next(iter_documents({**CFG, field: value}, 0))
    assert err.value.field == f"data.source.{field}"
