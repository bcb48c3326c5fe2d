"""A stateless, deterministic stream of training batches: the data position is a function of the global step.

Epoch e (docs/method.md §4.4): shuffle the documents, concatenate, cut into (seq_len+1)-token chunks (so chunk
boundaries move every epoch), then shuffle the chunk order. Epochs follow each other as one infinite
stream of chunks and optimizer step g takes chunks g·batch_seqs … g·batch_seqs + batch_seqs − 1 of it.
Because nothing depends on call history, a resumed cycle and a longer population read exactly the
same data as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch


class BatchSource:
    def __init__(self, train: np.ndarray, doc_starts: np.ndarray, *, seq_len: int, batch_seqs: int, seed: int):
        train = np.asarray(train)
        starts = np.asarray(doc_starts, dtype=np.int64)
        if train.ndim != 1:
            raise ValueError(f"train tokens must be 1-D, got shape {train.shape}")
        if seq_len < 1 or batch_seqs < 1:
            raise ValueError(f"seq_len and batch_seqs must be >= 1, got {seq_len} and {batch_seqs}")
        if len(starts) == 0 or starts[0] != 0:
            raise ValueError("doc_starts must be non-empty and start at offset 0")
        if np.any(np.diff(starts) <= 0) or starts[-1] >= len(train):
            raise ValueError("doc_starts must be strictly increasing offsets inside the train split")
        self.train = train
        self.doc_bounds = np.append(starts, len(train))  # document d spans [bounds[d], bounds[d+1])
        self.seq_len = seq_len
        self.batch_seqs = batch_seqs
        self.seed = seed
        self.chunk_len = seq_len + 1  # inputs plus the one-token-shifted targets
        self.chunks_per_epoch = len(train) // self.chunk_len  # the concatenation's length never changes
        if self.chunks_per_epoch < 1:
            raise ValueError(
                f"train split has {len(train)} tokens, fewer than one chunk of seq_len + 1 = {self.chunk_len}"
            )
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """(chunks, order) of epoch e: chunks (n, seq_len+1) in concatenation order; order serves them."""
        if e not in self._cache:
            if len(self._cache) >= 2:  # a batch spans at most two epochs; keep memory flat
                del self._cache[min(self._cache)]
            self._cache[e] = self._arrange(e)
        return self._cache[e]

    def _arrange(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        doc_order = np.random.default_rng(self.seed * 1009 + e + 1000).permutation(len(self.doc_bounds) - 1)
        stream = np.concatenate([self.train[self.doc_bounds[d] : self.doc_bounds[d + 1]] for d in doc_order])
        n = self.chunks_per_epoch
        chunks = stream[: n * self.chunk_len].reshape(n, self.chunk_len)  # drop the tail
        order = np.random.default_rng(self.seed * 1009 + e + 2000).permutation(n)
        return chunks, order

    def batch(self, global_step: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) int64 arrays of shape (batch_seqs, seq_len) for optimizer step `global_step`."""
        if global_step < 0:
            raise ValueError(f"global_step must be >= 0, got {global_step}")
        positions = global_step * self.batch_seqs + np.arange(self.batch_seqs, dtype=np.int64)
        epochs, index = np.divmod(positions, self.chunks_per_epoch)
        if epochs[0] == epochs[-1]:  # the usual case: the whole batch inside one epoch
            chunks, order = self.epoch(int(epochs[0]))
            rows = chunks[order[index]].astype(np.int64, copy=False)
        else:
            rows = np.empty((self.batch_seqs, self.chunk_len), dtype=np.int64)
            for e in np.unique(epochs):
                chunks, order = self.epoch(int(e))
                here = epochs == e
                rows[here] = chunks[order[index[here]]]
        return np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """`array` as a tensor on `device`. CUDA: through pinned memory with an asynchronous copy (a copy from
    pageable memory would wait for the GPU to finish its queued work: a host sync every step). CPU: the
    array's own memory, as before."""
    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
