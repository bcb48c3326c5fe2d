"""A synthetic source with an exactly known entropy rate: an order-k Markov chain over printable ASCII.

The chain: the state is the last `order` symbols; each state's next-symbol distribution is a row
drawn from Dirichlet(concentration) with the source's own seed (small concentration -> peaked rows
-> low entropy, structured, learnable). Its entropy rate h = sum_s pi(s) H(row_s) is computed from
the exact stationary distribution pi of the state chain.

A document is `doc_tokens` symbols: its first `order` symbols are a state drawn from pi (so every
position of every document is stationary), then `doc_tokens - order` transitions. Hence a
document's entropy is exactly H(pi) + (doc_tokens - order) * h, and an ideal model's per-symbol
loss on the transitions is h. Each symbol is one printable ASCII byte, so the bytes tokenizer sees
one token per symbol (plus the end-of-text before each document).

Documents come in fixed blocks of DOCS_PER_BLOCK; block b is generated from
default_rng([tag, source seed, corpus seed, b]) alone, so asking for more data appends documents
and never changes earlier ones ("fresh data is free"). The corpus seed plays the role the shuffle
plays for file sources: it picks a different sample of the same chain.
"""

from __future__ import annotations

import math
import string
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from hepc.data.identity import DataError

# 95 printable ASCII characters, most readable first; a source uses the first `alphabet_size`.
ALPHABET = (string.ascii_lowercase + " " + string.digits + string.ascii_uppercase + string.punctuation).encode()
DOCS_PER_BLOCK = 64
MAX_TABLE_ENTRIES = 1 << 22  # states x alphabet: 32 MiB of float64 rows
_ROWS_TAG, _DOCS_TAG = 1, 2  # keep the two random streams apart
_STATIONARY_TOL, _STATIONARY_MAX_ITERS = 1e-13, 100_000


@dataclass(frozen=True, eq=False)
class MarkovChain:
    alphabet: bytes
    order: int
    rows: np.ndarray  # (S, A) next-symbol probabilities; state = last `order` symbols in base A, newest last digit
    stationary: np.ndarray  # (S,) stationary distribution of the state chain

    @property
    def alphabet_size(self) -> int:
        return len(self.alphabet)

    @property
    def n_states(self) -> int:
        return self.rows.shape[0]

    @cached_property
    def cum_rows(self) -> np.ndarray:
        cum = np.cumsum(self.rows, axis=1)
        cum[:, -1] = 1.0  # u < 1 always lands in a row, whatever the rounding
        return cum

    @cached_property
    def entropy_rate_nats(self) -> float:
        """h = sum_s pi(s) H(row_s): the ideal per-symbol loss after the first `order` symbols."""
        return float(self.stationary @ _entropy(self.rows))

    @cached_property
    def state_entropy_nats(self) -> float:
        """H(pi): the entropy of a document's first `order` symbols together."""
        return float(_entropy(self.stationary[None, :])[0])

    def document_entropy_nats(self, doc_tokens: int) -> float:
        """Exact entropy of one document: H(pi) + (doc_tokens - order) h."""
        return self.state_entropy_nats + (doc_tokens - self.order) * self.entropy_rate_nats

    def nll_nats(self, symbols: np.ndarray) -> float:
        """Mean -log p(symbol | state) over the transitions (positions >= order) of (D, L) symbol ids."""
        symbols = np.asarray(symbols, dtype=np.int64)
        state = np.zeros(symbols.shape[0], dtype=np.int64)
        total = 0.0
        for t in range(symbols.shape[1]):
            if t >= self.order:
                total -= np.log(self.rows[state, symbols[:, t]]).sum()
            state = (state * self.alphabet_size + symbols[:, t]) % self.n_states
        return total / (symbols.shape[0] * (symbols.shape[1] - self.order))


def _entropy(p: np.ndarray) -> np.ndarray:
    """Row-wise entropy in nats, with 0 log 0 = 0."""
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(axis=1)


def check_config(source_cfg: dict, field: str = "data.source") -> tuple[int, int, float, int, int]:
    """(alphabet_size, order, concentration, doc_tokens, seed), or DataError naming the bad field."""
    a, k = int(source_cfg.get("alphabet_size", 32)), int(source_cfg.get("order", 2))
    alpha, doc_tokens, seed = float(source_cfg.get("concentration", 0.1)), int(source_cfg.get("doc_tokens", 1000)), int(source_cfg.get("seed", 0))
    if not 2 <= a <= len(ALPHABET):
        raise DataError(f"must be between 2 and {len(ALPHABET)} (got {a})", f"{field}.alphabet_size")
    if k < 0 or a ** (k + 1) > MAX_TABLE_ENTRIES:
        raise DataError(f"alphabet_size^(order+1) must be <= {MAX_TABLE_ENTRIES} (got order {k})", f"{field}.order")
    if not alpha > 0:
        raise DataError(f"must be > 0 (got {alpha})", f"{field}.concentration")
    if doc_tokens < max(1, k):
        raise DataError(f"must be >= max(1, order) (got {doc_tokens})", f"{field}.doc_tokens")
    return a, k, alpha, doc_tokens, seed


def markov_chain(source_cfg: dict, field: str = "data.source") -> MarkovChain:
    a, k, alpha, _, seed = check_config(source_cfg, field)
    return _build_chain(a, k, alpha, seed, field)


@lru_cache(maxsize=8)
def _build_chain(a: int, k: int, alpha: float, seed: int, field: str) -> MarkovChain:
    rows = np.random.default_rng([_ROWS_TAG, seed]).dirichlet(np.full(a, alpha), size=a**k)
    rows /= rows.sum(axis=1, keepdims=True)
    stationary = _stationary(rows, a, field)
    rows.setflags(write=False)
    stationary.setflags(write=False)
    return MarkovChain(ALPHABET[:a], k, rows, stationary)


def _stationary(rows: np.ndarray, a: int, field: str) -> np.ndarray:
    """Stationary distribution of the state chain by (lazy) power iteration."""
    n_states = rows.shape[0]
    pi = np.full(n_states, 1.0 / n_states)
    if n_states == 1:
        return pi
    for _ in range(_STATIONARY_MAX_ITERS):
        flow = pi[:, None] * rows  # (S, A): mass leaving state s by symbol x
        # state s = hi * A^(k-1) + rest moves to rest * A + x: sum over the oldest symbol `hi`
        step = flow.reshape(a, n_states // a, a).sum(axis=0).ravel()
        new = 0.5 * (pi + step)  # lazy step: same fixed point, no periodic oscillation
        if np.abs(new - pi).sum() < _STATIONARY_TOL:
            return new / new.sum()
        pi = new
    raise DataError("the chain mixes too slowly to find its stationary distribution; raise concentration", f"{field}.concentration")


def _walk(chain: MarkovChain, uniforms: np.ndarray) -> np.ndarray:
    """Symbol ids (D, order + n - 1) from uniforms (D, n): column 0 picks the start state, the rest the transitions."""
    a, k, n_states = chain.alphabet_size, chain.order, chain.n_states
    d, n = uniforms.shape
    out = np.empty((d, k + n - 1), dtype=np.uint8)
    state = np.minimum(np.searchsorted(np.cumsum(chain.stationary), uniforms[:, 0], side="right"), n_states - 1)
    for j in range(k):  # the start state's symbols, oldest first
        out[:, j] = state // a ** (k - 1 - j) % a
    cum = chain.cum_rows
    for t in range(1, n):
        symbol = (uniforms[:, t, None] >= cum[state]).sum(axis=1)  # inverse CDF: P(symbol = x) = rows[state, x]
        out[:, k + t - 1] = symbol
        state = (state * a + symbol) % n_states
    return out


def generate_blocks(source_cfg: dict, corpus_seed: int, first_block: int, n_blocks: int, field: str = "data.source") -> np.ndarray:
    """Symbol ids (n_blocks * DOCS_PER_BLOCK, doc_tokens) of blocks first_block .. first_block + n_blocks - 1."""
    _, k, _, doc_tokens, seed = check_config(source_cfg, field)
    chain = markov_chain(source_cfg, field)
    uniforms = np.concatenate([
        np.random.default_rng([_DOCS_TAG, seed, corpus_seed, block]).random((DOCS_PER_BLOCK, doc_tokens - k + 1))
        for block in range(first_block, first_block + n_blocks)
    ])
    return _walk(chain, uniforms)


def iter_documents(source_cfg: dict, corpus_seed: int, field: str = "data.source") -> Iterator[bytes]:
    """Documents as ASCII bytes, forever; generated in batches of 1, 2, 4, ... blocks (up to ~1M symbols)."""
    doc_tokens = check_config(source_cfg, field)[3]
    table = np.frombuffer(markov_chain(source_cfg, field).alphabet, dtype=np.uint8)
    max_blocks = max(1, (1 << 20) // (DOCS_PER_BLOCK * doc_tokens))
    block, n_blocks = 0, 1
    while True:
        for row in table[generate_blocks(source_cfg, corpus_seed, block, n_blocks, field)]:
            yield row.tobytes()
        block, n_blocks = block + n_blocks, min(2 * n_blocks, max_blocks)


def entropy_meta(source_cfg: dict, eot_tokens_per_document: int = 1) -> dict:
    """The entropy figures written to meta.json for a synthetic corpus."""
    chain = markov_chain(source_cfg)
    doc_tokens = check_config(source_cfg)[3]
    per_token = chain.document_entropy_nats(doc_tokens) / (doc_tokens + eot_tokens_per_document)
    return {
        "entropy_rate_nats": chain.entropy_rate_nats,
        "entropy_rate_bits_per_token": chain.entropy_rate_nats / math.log(2),
        "entropy_per_token_with_eot_nats": per_token,
        "entropy_note": (
            "entropy_rate_* is per chain symbol (= byte) after a document's first `order` symbols; "
            "entropy_per_token_with_eot_nats is the exact entropy of a whole document "
            "(H(pi) + (doc_tokens - order) h) spread over its doc_tokens + 1 tokens, end-of-text "
            "included at zero cost: the floor for a model that knows where documents end"
        ),
    }
