"""Scoring: p(correct token) for every target exactly once, equal to a direct full-sequence pass."""

import numpy as np
import pytest
import torch

from hepc.train.checkpoint import save_weights
from hepc.train.model import GPT, GPTConfig
from hepc.train.score import score_tokens

MODEL = {"n_layer": 1, "d_model": 32, "n_head": 2, "dropout": 0.1}
V, T = 17, 16
RUNTIME = {"device": "cpu", "dtype": "float32", "threads": None}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = GPT(GPTConfig(V, MODEL["n_layer"], MODEL["d_model"], MODEL["n_head"], 0.0, T))
    with torch.no_grad():  # move away from the near-uniform init so probabilities vary
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    path = tmp_path_factory.mktemp("w") / "model.safetensors"
    save_weights(model.state_dict(), path)
    return model.eval(), path


def _direct(model, tokens):
    with torch.no_grad():
        x = torch.from_numpy(tokens[None, :-1].astype(np.int64))
        probs = torch.softmax(model(x), -1)[0]
    return probs[torch.arange(len(tokens) - 1), torch.from_numpy(tokens[1:].astype(np.int64))].numpy()


@pytest.mark.parametrize("n", [2, 9, T + 1])
def test_equals_direct_computation_within_one_window(weights, n):
    model, path = weights
    tokens = np.random.default_rng(n).integers(0, V, n).astype(np.uint16)
    p = score_tokens(model=MODEL, weights_path=path, tokens=tokens, vocab_size=V, seq_len=T, runtime=RUNTIME)
    assert p.dtype == np.float32 and p.shape == (n - 1,)
    np.testing.assert_allclose(p, _direct(model, tokens), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n", [1, 3 * T + 1, 5 * T + 7])
def test_length_range_and_windows(weights, n):
    model, path = weights
    tokens = np.random.default_rng(n).integers(0, V, n).astype(np.int32)
    p = score_tokens(
        model=MODEL, weights_path=path, tokens=tokens, vocab_size=V, seq_len=T, runtime=RUNTIME, batch_seqs=2
    )
    assert p.shape == (max(n - 1, 0),)
    assert np.all((p > 0) & (p <= 1))
    for w in range(0, n - 1, T):  # each window restarts the context
        window = tokens[w : w + T + 1]
        np.testing.assert_allclose(p[w : w + len(window) - 1], _direct(model, window), rtol=1e-5, atol=1e-7)


def _second_weights(tmp_path):
    torch.manual_seed(1)
    model = GPT(GPTConfig(V, MODEL["n_layer"], MODEL["d_model"], MODEL["n_head"], 0.0, T))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    path = tmp_path / "other.safetensors"
    save_weights(model.state_dict(), path)
    return path


def test_logit_ensemble_of_one_member_is_its_own_loss(weights, tmp_path):
    from hepc.train.score import logit_ensemble_losses

    _, path = weights
    tokens = np.random.default_rng(5).integers(0, V, 3 * T + 5).astype(np.uint16)
    p = score_tokens(model=MODEL, weights_path=path, tokens=tokens, vocab_size=V, seq_len=T, runtime=RUNTIME)
    (loss,) = logit_ensemble_losses(
        model=MODEL, weights_paths=[path], ensembles=[[(0, 1.0)]], tokens=tokens, vocab_size=V, seq_len=T,
        runtime=RUNTIME,
    )
    assert loss == pytest.approx(float(-np.log(p.astype(np.float64)).mean()), rel=1e-5)


def test_logit_and_probability_averaging_differ_for_different_members(weights, tmp_path):
    """Averaging logits is not averaging probabilities (Jensen): both are computed, not aliased."""
    from hepc.train.score import logit_ensemble_losses

    _, path = weights
    other = _second_weights(tmp_path)
    tokens = np.random.default_rng(6).integers(0, V, 2 * T + 1).astype(np.uint16)
    probs = [
        score_tokens(model=MODEL, weights_path=w, tokens=tokens, vocab_size=V, seq_len=T, runtime=RUNTIME)
        for w in (path, other)
    ]
    prob_avg = float(-np.log((0.5 * probs[0] + 0.5 * probs[1]).astype(np.float64)).mean())
    (logit_avg, same_twice) = logit_ensemble_losses(
        model=MODEL, weights_paths=[path, other], ensembles=[[(0, 0.5), (1, 0.5)], [(0, 0.5), (0, 0.5)]],
        tokens=tokens, vocab_size=V, seq_len=T, runtime=RUNTIME,
    )
    assert abs(logit_avg - prob_avg) > 1e-4
    single = float(-np.log(probs[0].astype(np.float64)).mean())
    assert same_twice == pytest.approx(single, rel=1e-5)
