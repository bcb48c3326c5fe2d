"""hepc/data/spill.py's external sort: `Kept` with tiny runs (many runs, merged past MAX_RUNS, merged
a few rows of each at a time) keeps and orders exactly the pieces it keeps with one run in memory,
pruning and compacting its scratch file alike; `Spilled` reads its rows back from disk."""

from __future__ import annotations

import random

import numpy as np
import pytest

from hepc.data import spill
from hepc.data.carve import Piece, carve, doc_key
from hepc.data.spill import Kept, ScratchDir

TARGETS = {"val": 900, "test": 300, "heldout": 400, "train": 6000}


def _documents(seed: int = 0, n: int = 400, copies: float = 0.05) -> list[list[Piece]]:
    """Documents of 1 to 4 pieces of random ids, a share `copies` of them exact duplicates of an earlier
    one (same key, later listing index)."""
    rng = random.Random(seed)
    docs, digests = [], []
    for doc in range(n):
        digest = rng.choice(digests) if digests and rng.random() < copies else rng.getrandbits(128)
        digests.append(digest)
        key, count = doc_key(digest, 7), rng.randint(1, 4)
        lengths = [rng.randint(1, 400) for _ in range(count)]
        pieces = []
        for index, length in enumerate(lengths):
            ids = np.random.default_rng([seed, doc, index]).integers(0, 1000, size=length).astype(np.uint16)
            pieces.append(Piece(key, doc, index, length, ids, digest, sum(lengths[index + 1 :])))
        docs.append(pieces)
    return docs


def _kept(tmp_path, name: str, docs: list[list[Piece]], targets: dict) -> tuple[list[tuple], Kept, bool]:
    """(every kept piece as (order, tokens, held, rest, digest, ids), the Kept, whether it compacted)."""
    scratch = ScratchDir(tmp_path / name)
    with scratch:
        kept = Kept(targets, scratch)
        first = kept._scratch
        for pieces in docs:
            kept.add(pieces)
        compacted = kept._scratch is not first
        order = kept.pieces()
        rows = [(p.order, p.tokens, p.held, p.rest, p.digest, p.ids.tolist()) for p in order]
        assert [p.order for p in order.iter_from(5, 40)] == [r[0] for r in rows[5:40]]
        assert [order[i].order for i in (0, len(order) - 1)] == [rows[0][0], rows[-1][0]]
        with pytest.raises(IndexError):
            order[len(order)]
        assert order.total("held", 3, 200) == sum(r[2] for r in rows[3:200])
        assert order.documents(3, 200) == len({r[0][1] for r in rows[3:200]})
        return rows, kept, compacted


def test_tiny_runs_keep_and_order_the_same_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(spill, "SLACK", 1000)
    docs = _documents()
    whole, one, compacted_one = _kept(tmp_path, "one", docs, TARGETS)
    monkeypatch.setattr(spill, "RUN", 7)
    monkeypatch.setattr(spill, "MAX_RUNS", 3)
    monkeypatch.setattr(spill, "_BATCH", 5)
    runs, many, compacted_many = _kept(tmp_path, "many", docs, TARGETS)
    assert runs == whole
    assert (many.bound, many.held, many.limit) == (one.bound, one.held, one.limit)
    assert one.bound is not None and compacted_one and compacted_many  # it pruned, and rewrote its scratch file
    assert [r[0] for r in whole] == sorted(r[0] for r in whole)
    everything = sorted((p for pieces in docs for p in pieces), key=lambda p: p.order)
    kept = (Piece(*r[0], r[1], np.array(r[5], np.uint16), r[4], r[3]) for r in whole)
    assert _taken(kept) == _taken(everything)  # what was dropped is never what carving takes


def test_tiny_runs_keep_every_piece_of_a_source_too_small_to_prune(tmp_path, monkeypatch):
    """Copies of a few documents: carving passes over the copies and runs out, so no prune drops anything."""
    docs = _documents(2, 150, copies=0.97)
    monkeypatch.setattr(spill, "RUN", 7)
    monkeypatch.setattr(spill, "MAX_RUNS", 3)
    monkeypatch.setattr(spill, "_BATCH", 5)
    rows, kept, compacted = _kept(tmp_path, "all", docs, {"val": 200, "train": 5000})
    assert kept.bound is None and not compacted and kept.limit > 2 * 5200 + 4096  # it pruned, ran out, raised its limit
    assert [r[0] for r in rows] == sorted(p.order for pieces in docs for p in pieces)
    assert [r[5] for r in rows] == [p.ids.tolist() for p in sorted((p for d in docs for p in d), key=lambda p: p.order)]


def _taken(pieces) -> list[tuple]:
    """(split, order, tokens taken) of every piece carving takes."""
    taken = []
    carve(pieces, TARGETS, sink=lambda name, piece, n: taken.append((name, piece.order, n)))
    return taken


def test_spilled_appends_and_reads_back_across_its_buffer(tmp_path, monkeypatch):
    monkeypatch.setattr(spill, "_BATCH", 4)
    pieces = [p for pieces in _documents(1, 30) for p in pieces]
    with ScratchDir(tmp_path) as scratch:
        order = spill.Spilled(scratch.file("ids"), scratch.file("rows", spill.ROW))
        for i, piece in enumerate(pieces):
            order.append(piece)
            if i % 3 == 0:  # reads between appends see every piece so far
                assert [p.order for p in order] == [p.order for p in pieces[: i + 1]]
        assert len(order) == len(pieces)
        assert [p.ids.tolist() for p in order.iter_from(2)] == [p.ids.tolist() for p in pieces[2:]]
        assert order.total("held", 0, 10**9) == sum(p.held for p in pieces)
