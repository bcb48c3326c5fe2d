"""Shared by the prior tests: probability matrices that break naive fits."""

from __future__ import annotations

import numpy as np


def adversarial_probs(count: int = 12, max_n: int = 200) -> list:
    """Probability matrices that break naive prior fits: random, identical rows, floored members,
    M = 1, all-zero tokens, certain members, N = 1."""
    rng = np.random.default_rng(7)
    cases = []
    for _ in range(count):
        M, N = int(rng.integers(1, 9)), int(rng.integers(1, max_n))
        cases.append(rng.beta(0.3, 0.3, size=(M, N)).astype(np.float32))
    cases.append(np.tile(rng.random(64), (5, 1)).astype(np.float32))  # identical rows
    tiny = rng.random((4, 64)).astype(np.float32)
    tiny[2] = 1e-30  # one member predicts (almost) nothing: floored
    cases.append(tiny)
    cases.append(rng.random((1, 50)).astype(np.float32))  # M = 1
    cases.append(np.zeros((3, 10), dtype=np.float32))  # every token floored
    zero_col = rng.random((4, 30)).astype(np.float32)
    zero_col[:, :5] = 0.0  # tokens nobody predicts
    cases.append(zero_col)
    cases.append(np.ones((3, 8), dtype=np.float32))  # everyone certain
    cases.append(rng.random((3, 1)).astype(np.float32))  # N = 1
    return cases
