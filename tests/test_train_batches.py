"""The batch stream: a pure function of (seed, global step), every chunk once per epoch."""

import numpy as np
import pytest

from hepc.train.batches import BatchSource

SEQ_LEN = 7


def _source(seed=1, batch_seqs=4, n_tokens=400):
    train = np.arange(n_tokens, dtype=np.int32)  # unique ids: a chunk is identified by its tokens
    doc_starts = np.array([0, 13, 50, 51, 90, 200, 333], dtype=np.int64)
    return BatchSource(train, doc_starts, seq_len=SEQ_LEN, batch_seqs=batch_seqs, seed=seed)


def _expected_chunks(src, e):
    """The epoch's chunks rebuilt from docs/method.md §4.4 directly, in concatenation order."""
    bounds = src.doc_bounds
    docs = np.random.default_rng(src.seed * 1009 + e + 1000).permutation(len(bounds) - 1)
    stream = np.concatenate([src.train[bounds[d] : bounds[d + 1]] for d in docs])
    n = len(src.train) // (SEQ_LEN + 1)
    return stream[: n * (SEQ_LEN + 1)].reshape(n, SEQ_LEN + 1)


def test_shapes_dtype_and_shift():
    x, y = _source().batch(0)
    assert x.shape == y.shape == (4, SEQ_LEN) and x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])


def test_deterministic_and_seed_dependent():
    a, b, c = _source(seed=1), _source(seed=1), _source(seed=2)
    for step in (0, 5, 31):
        np.testing.assert_array_equal(a.batch(step)[0], b.batch(step)[0])
    assert not np.array_equal(a.batch(0)[0], c.batch(0)[0])


@pytest.mark.parametrize("epoch", [0, 1, 3])
def test_every_chunk_of_an_epoch_appears_once(epoch):
    src = _source(batch_seqs=5)  # 400 // 8 = 50 chunks = 10 batches per epoch
    steps = range(epoch * 10, (epoch + 1) * 10)
    rows = np.concatenate([np.concatenate([x, y[:, -1:]], axis=1) for x, y in map(src.batch, steps)])
    expected = _expected_chunks(src, epoch)
    assert sorted(map(tuple, rows)) == sorted(map(tuple, expected))
    assert not np.array_equal(rows, expected)  # the chunk order is shuffled too


def test_epochs_differ_in_order_and_boundaries():
    src = _source()
    assert not np.array_equal(_expected_chunks(src, 0), _expected_chunks(src, 1))
    np.testing.assert_array_equal(src.epoch(0)[0], _expected_chunks(src, 0))


def test_batch_independent_of_call_history():
    fresh = _source(batch_seqs=3).batch(7)
    used = _source(batch_seqs=3)
    for step in (3, 100, 0, 50, 7, 2):
        used.batch(step)
    for got, want in zip(used.batch(7), fresh):
        np.testing.assert_array_equal(got, want)


def test_batch_spanning_an_epoch_boundary():
    src = _source(batch_seqs=3)  # 50 chunks: step 16 takes positions 48, 49 (epoch 0) and 50 (epoch 1)
    x, y = src.batch(16)
    chunks0, order0 = src.epoch(0)
    chunks1, order1 = src.epoch(1)
    np.testing.assert_array_equal(x[0], chunks0[order0[48], :-1])
    np.testing.assert_array_equal(x[2], chunks1[order1[0], :-1])


def test_too_short_split_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than one chunk"):
        BatchSource(np.arange(5), np.array([0]), seq_len=SEQ_LEN, batch_seqs=1, seed=0)
