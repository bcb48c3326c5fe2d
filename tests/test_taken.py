"""hepc/data/taken.py: a split's statistics and `_docs.npy` offsets, fed one piece at a time and read
back from disk a chunk at a time, are what the whole arrays of its pieces give (names shared by
several documents, ties in size, chunk ends and the empty split included)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import xxhash

from hepc.data import taken
from hepc.data.spill import ScratchDir
from hepc.data.taken import LARGEST, Offsets, SplitStats


def _expected(docs: list[int], tokens: list[int], name) -> dict:
    """The statistics from whole arrays: per name (documents of one name count as one), tokens and pieces summed."""
    per_name: dict[int, list] = {}
    for doc, n in zip(docs, tokens):
        digest = xxhash.xxh3_64_intdigest(name(doc).encode())
        entry = per_name.setdefault(digest, [0, 0, doc])
        entry[0], entry[1], entry[2] = entry[0] + n, entry[1] + 1, min(entry[2], doc)
    top = sorted((-t, name(first), count) for t, count, first in per_name.values())[:LARGEST]
    total = sum(tokens)
    return {
        "documents": len(docs),
        "source_documents": len(per_name),
        "tokens": total,
        "largest": [{"name": doc_name, "tokens": -t, "pieces": count} for t, doc_name, count in top],
        "largest_share": -top[0][0] / total if total else 0.0,
        "names": sorted(per_name),
    }


@pytest.mark.parametrize("documents", [0, 1, 40, 700])
def test_split_stats_and_offsets_match_the_whole_arrays(tmp_path, monkeypatch, documents):
    monkeypatch.setattr(taken, "CHUNK", 16)
    rng = random.Random(documents)
    docs, tokens = [], []
    for doc in sorted(rng.sample(range(10 * documents + 1), documents)):  # in the order taken: pieces together
        for _ in range(rng.randint(1, 3)):
            docs.append(doc)
            tokens.append(rng.choice([5, 10, 10, rng.randint(1, 50)]))  # many ties in size

    def name(doc: int) -> str:
        return f"file {doc % 97}" if doc % 5 == 0 else f"doc {doc}"  # some names shared by several documents

    file_of = np.array([doc % 7 for doc in range(10 * documents + 1)], dtype=np.int64)
    with ScratchDir(tmp_path / "scratch") as scratch:
        stats, offsets = SplitStats(scratch, name, file_of), Offsets(scratch)
        for doc, n in zip(docs, tokens):
            stats.add(doc, n)
            offsets.add(n)
        result = stats.result()
        offsets.save(tmp_path / "docs.npy")
        by_file = stats.tokens_by_file()
    assert {**result, "names": result["names"].tolist()} == _expected(docs, tokens, name)
    assert result["names"].dtype == np.uint64
    expected_by_file: dict[int, int] = {}
    for doc, n in zip(docs, tokens):
        expected_by_file[doc % 7] = expected_by_file.get(doc % 7, 0) + n
    assert by_file == sorted([f, n] for f, n in expected_by_file.items())
    np.save(tmp_path / "expected.npy", np.concatenate([[0], np.cumsum(tokens[:-1])]).astype(np.int64)[: len(tokens)])
    assert (tmp_path / "docs.npy").read_bytes() == (tmp_path / "expected.npy").read_bytes()
