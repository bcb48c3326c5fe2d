"""Per-token probabilities of the correct token, held or streamed: a matrix, a memory map or a
``RowStack`` of one ``probs.npy`` per member, read a column block at a time; their checks, and the
mixture's loss (weighted probability averaging, accumulated in float64) over any number of ensembles in one pass."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FLOOR = 1e-12
"""Lower clamp on a mixed probability before the log: a token nobody predicts costs −log(1e-12) ≈ 27.6 nats."""

_CHUNK_ELEMENTS = 1 << 22  # float64 elements per column block when scoring (≈32 MiB)
_SCORE_COLUMNS = 1 << 14  # columns per block when scoring: a fixed grid (an ensemble's loss never depends on it)
_SUM_TOL = 1e-6  # how far Σw may stray from 1 where weights must already be normalised
_P_MAX = 1.0 + 1e-5  # fp32 softmax can round a hair above 1; anything larger is not a probability


# ---------------------------------------------------------------------------------------------
# validation helpers


class RowStack:
    """A population matrix kept as separate rows, read a column block at a time.

    ``rows`` are 1-D arrays of equal length N, or ``NpyRow`` files (``RowStack.from_npy``: one
    ``probs.npy`` per member, read from disk a block at a time), so an M×N val matrix is never held
    in memory. It
    supports what the scoring functions here read: ``shape``, ``dtype``, ``ndim`` and
    ``P[rows, start:stop]`` (rows a slice, an int or an integer array) returning an in-memory block.
    Values are checked a block at a time while scoring, not up front.
    """

    ndim = 2

    def __init__(self, rows: Sequence[np.ndarray]):
        rows = list(rows)
        if not rows:
            raise ValueError("a RowStack needs at least one row")
        n = None
        for i, r in enumerate(rows):
            if getattr(r, "ndim", None) != 1:
                raise ValueError(f"row {i} must be 1-D, got shape {getattr(r, 'shape', None)}")
            if n is None:
                n = r.shape[0]
            elif r.shape[0] != n:
                raise ValueError(f"rows must have equal length: row 0 has {n}, row {i} has {r.shape[0]}")
        self._rows = rows
        self.shape = (len(rows), int(n))
        self.dtype = np.result_type(*[r.dtype for r in rows])

    @classmethod
    def from_npy(cls, paths) -> RowStack:
        """The rows of 1-D ``.npy`` files, each read from disk a column block at a time (``NpyRow``)."""
        return cls([NpyRow(p) for p in paths])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[1], slice)):
            raise TypeError("a RowStack is read as P[rows, start:stop]")
        rows, cols = key
        if isinstance(rows, slice):
            idx = range(*rows.indices(self.shape[0]))
        else:
            idx = np.atleast_1d(np.asarray(rows, dtype=np.int64)).tolist()
        block = np.stack([np.asarray(self._rows[i][cols]) for i in idx]) if len(idx) else \
            np.empty((0, len(range(*cols.indices(self.shape[1])))), dtype=self.dtype)
        return block[0] if np.ndim(rows) == 0 and not isinstance(rows, slice) else block


class NpyRow:
    """A 1-D ``.npy`` file read a slice at a time, straight from disk (``row[start:stop]``).

    Unlike a memory map it holds no open file (a population of thousands of members stays within
    the open-file limit) and maps no pages (what the process reads is all it holds).
    """

    ndim = 1

    def __init__(self, path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            self.offset = f.tell()
        if len(shape) != 1 or dtype.hasobject:
            raise ValueError(f"{self.path}: expected a 1-D numeric array, got shape {shape}, dtype {dtype}")
        self.shape, self.dtype = (int(shape[0]),), dtype

    def __getitem__(self, cols: slice) -> np.ndarray:
        start, stop, step = cols.indices(self.shape[0])
        if step != 1:
            raise TypeError("an NpyRow is read as row[start:stop]")
        count, size = max(0, stop - start), self.dtype.itemsize
        fd = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(fd, count * size, self.offset + start * size)
        finally:
            os.close(fd)
        if len(data) != count * size:
            raise ValueError(f"{self.path}: file is shorter than its header says")
        return np.frombuffer(data, dtype=self.dtype)


def _is_streamed(P) -> bool:
    """True for sources read a block at a time (a RowStack or a memory map): values checked while read."""
    return isinstance(P, (RowStack, np.memmap))


def _check_block(block: np.ndarray, name: str) -> None:
    # NaN fails both comparisons, so this also rejects NaN.
    if not (np.all(block >= 0.0) and np.all(block <= _P_MAX)):
        raise ValueError(f"{name} must hold probabilities in [0, 1] (no NaN)")


def check_probs(P, name: str = "P"):
    """Return ``P`` as a 2-D float source with M ≥ 1 rows and N ≥ 1 columns, entries in [0, 1].

    An in-memory array is checked here, a column block at a time (bounded temporaries); a
    ``RowStack`` or a memory map is returned as is and its values are checked as they are scored.
    """
    if not _is_streamed(P):
        P = np.asarray(P)
    if P.ndim != 2:
        raise ValueError(f"{name} must be 2-D (members × tokens), got shape {P.shape}")
    if P.shape[0] < 1 or P.shape[1] < 1:
        raise ValueError(f"{name} must have at least one member and one token, got shape {P.shape}")
    if not np.issubdtype(P.dtype, np.floating):
        if _is_streamed(P):
            raise ValueError(f"{name} must hold floating-point probabilities, got {P.dtype}")
        P = P.astype(np.float64)
    if not _is_streamed(P):
        step = max(1, _CHUNK_ELEMENTS // P.shape[0])
        for start in range(0, P.shape[1], step):
            _check_block(P[:, start:start + step], name)
    return P


def fit_matrix(P, name: str = "P") -> np.ndarray:
    """``P`` checked and in memory as float64 (a fit reads every entry many times)."""
    P = check_probs(P, name)
    if _is_streamed(P):
        P = np.array(P[:, 0:P.shape[1]], dtype=np.float64)
        _check_block(P, name)
    return np.asarray(P, dtype=np.float64)


def check_weights(weights: np.ndarray, m: int, *, normalised: bool) -> np.ndarray:
    """Return ``weights`` as a finite, non-negative float64 vector of length ``m``.

    With ``normalised`` the weights must already sum to 1 (within 1e-6); otherwise only Σw > 0.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != m:
        raise ValueError(f"weights must be a vector of length {m}, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0.0):
        raise ValueError("weights must be finite and non-negative")
    total = float(w.sum())
    if normalised and abs(total - 1.0) > _SUM_TOL:
        raise ValueError(f"weights must sum to 1, got {total!r}")
    if total <= 0.0:
        raise ValueError("weights must not all be zero")
    return w


# ---------------------------------------------------------------------------------------------
# the mixture loss


def row_log_sums(mix: np.ndarray) -> np.ndarray:
    """Σ_n log mix[e, n] for each row e of a float64 matrix whose entries lie in [FLOOR, 1 + 1e-5].

    Products of 16 neighbours are formed first (pairwise, ≥ 1e-192, no underflow) and their logs
    summed: the same sum to within a few ulps per term, at a sixteenth of the logarithms.
    """
    n = mix.shape[1]
    n16 = n - n % 16
    total = np.log(mix[:, n16:]).sum(axis=1) if n16 < n else np.zeros(mix.shape[0])
    if n16:
        v = mix[:, :n16]
        for _ in range(4):
            h = v.shape[1] // 2
            v = v[:, :h] * v[:, h:]
        total += np.log(v).sum(axis=1)
    return total


def stream_nll(P, ensembles: Sequence[tuple[np.ndarray, np.ndarray]], name: str = "P",
                chunk: int | None = None) -> np.ndarray:
    """−(1/N) Σ_n log max(Σ_r w_r P[idx_r, n], FLOOR) for every ensemble (idx, w), in float64.

    One pass over the columns of ``P`` (an array, a memory map or a ``RowStack``), a block of
    ``chunk`` columns at a time (default ``_SCORE_COLUMNS``, a fixed grid): only the rows some
    ensemble uses are read, each block is converted to float64 and checked when ``P`` is streamed.
    Each ensemble's mixture is summed over its own rows in the order it lists them, one row at a
    time (elementwise, no matrix product), so an ensemble's value depends only on its rows, their
    order and weights: never on the other ensembles scored in the same pass, on rows it does not
    use, or on the number of threads. The prior step, the curve and ``hepc.load_ensemble`` (members
    in ``top_k`` order) therefore give the same number bit for bit. Memory: the block, never N.
    """
    n_tokens = P.shape[1]
    chunk = _SCORE_COLUMNS if chunk is None else int(chunk)
    checked = [(np.asarray(i, dtype=np.int64), np.asarray(w, dtype=np.float64)) for i, w in ensembles]
    used = np.unique(np.concatenate([i for i, _ in checked])) if checked else np.zeros(0, dtype=np.int64)
    rows = None if used.shape[0] == P.shape[0] else used
    plans = [(np.searchsorted(used, i) if rows is not None else i, w) for i, w in checked]
    streamed = _is_streamed(P)
    total = np.zeros(len(checked))
    for start in range(0, n_tokens, chunk):
        stop = min(n_tokens, start + chunk)
        block = P[:, start:stop] if rows is None else P[rows, start:stop]
        block = np.asarray(block).astype(np.float64, copy=False)
        if streamed:
            _check_block(block, name)
        mix, term = np.empty((1, stop - start)), np.empty(stop - start)
        for e, (pos, w) in enumerate(plans):
            np.multiply(block[pos[0]], w[0], out=mix[0])
            for r, wr in zip(pos[1:].tolist(), w[1:].tolist()):
                np.multiply(block[r], wr, out=term)
                mix[0] += term
            np.maximum(mix, FLOOR, out=mix)
            total[e] += row_log_sums(mix)[0]
    return -total / n_tokens


def nll_rows(P, rows: np.ndarray | None, w: np.ndarray) -> float:
    """−(1/N) Σ_n log max(Σ_r w_r P[rows[r], n], FLOOR), in float64, a column block at a time."""
    idx = np.arange(P.shape[0]) if rows is None else rows
    return float(stream_nll(P, [(idx, w)])[0])


def mixture_nll(P: np.ndarray, weights: np.ndarray) -> float:
    """Mean negative log-likelihood of the probability mixture with ``weights``.

        mixture_nll(P, w) = −(1/N) Σ_n log( max( Σ_i w_i P[i,n], 1e-12 ) )

    ``P`` is M×N (any float dtype; accumulated in float64), ``weights`` a length-M vector summing to 1
    (zeros allowed: zero-weight rows are never read). A token with zero mixed probability costs
    −log(1e-12) ≈ 27.63 nats rather than infinity. ``P`` may also be a memory map or a ``RowStack``:
    it is read a column block at a time, so memory stays bounded whatever N is.
    """
    P = check_probs(P)
    w = check_weights(weights, P.shape[0], normalised=True)
    nz = np.flatnonzero(w)
    if nz.shape[0] == w.shape[0]:
        return nll_rows(P, None, w)
    return nll_rows(P, nz, w[nz])


def uniform_weights(m: int) -> np.ndarray:
    """The uniform prior over ``m`` members: w_i = 1/m (float64, length m, m ≥ 1)."""
    m = int(m)
    if m < 1:
        raise ValueError(f"need at least one member, got m={m}")
    return np.full(m, 1.0 / m, dtype=np.float64)
