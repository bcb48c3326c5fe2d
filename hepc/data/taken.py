"""What the corpus step records of the pieces carving takes, fed one piece at a time as carving takes
it (hepc/data/carve.py's `sink`), so that no array of a split's pieces is ever in memory.

- `Offsets`: a split's `<split>_docs.npy`, the start offset of each piece, written to a scratch file
  as pieces come and copied under the .npy header np.save would write once their number is known.
- `SplitStats`: a split's statistics for meta.json (pieces, source documents, tokens, the LARGEST
  documents, tokens by file). A document's pieces come together, so each document is summed as it
  ends and written as one `DOC` row to a scratch file; what stays in memory is the xxh3_64 digest of
  each document's name (8 bytes a document: the distinct names of every split are compared at the
  end, `source_documents_in_other_splits`), the tokens by file (one entry a file), and, while the
  statistics are summed up, the names that several documents share (rare: documents are named by
  their place in a file) and the LARGEST largest documents so far.

So the step's memory grows by 8 bytes a document taken, never by a piece's.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xxhash

from hepc.data.spill import ScratchDir, Spool

LARGEST = 5  # documents listed per split in meta.json
CHUNK = 1 << 13  # offsets and document rows buffered in memory, and read back, at a time
DOC = np.dtype([("name", "<u8"), ("doc", "<i8"), ("tokens", "<i8"), ("pieces", "<i8")])  # a document taken


class Offsets:
    """A split's pieces' start offsets (int64), on disk until `save` writes them as a .npy file."""

    def __init__(self, scratch: ScratchDir):
        self._spool = Spool(scratch.file("offsets", np.dtype("<i8")), CHUNK)
        self.end = 0  # tokens so far

    def __len__(self) -> int:
        return len(self._spool)

    def add(self, n: int) -> None:
        """A piece of `n` tokens follows."""
        self._spool.append(self.end)
        self.end += n

    def save(self, path: Path) -> None:
        """The bytes np.save writes for the offsets as one int64 array."""
        with open(path, "wb") as f:
            header = {
                "descr": np.lib.format.dtype_to_descr(np.dtype("<i8")),
                "fortran_order": False,
                "shape": (len(self),),
            }
            np.lib.format.write_array_header_1_0(f, header)
            for chunk in self._spool.chunks(size=CHUNK):
                f.write(chunk)


class SplitStats:
    """A split's statistics, from its pieces in the order taken: `add(doc, n)` for each (`doc`: its
    document's listing index, `n`: its tokens), then `result()`. Documents are counted by their names
    (`name`: a document's name from its index), so documents of the same name count as one; `file_of`
    (each document's file, for a text source) adds the tokens taken from each file."""

    def __init__(self, scratch: ScratchDir, name: Callable[[int], str], file_of: np.ndarray | None = None):
        self._name, self._file_of = name, file_of
        self._docs = Spool(scratch.file("documents", DOC), CHUNK)
        self._names = array("Q")  # each document's name digest, in the order taken
        self._by_file: dict[int, int] = {}
        self._doc: int | None = None  # the document being summed: its index, tokens and pieces so far
        self._doc_tokens = self._doc_pieces = 0
        self.pieces = self.tokens = 0

    def add(self, doc: int, n: int) -> None:
        if doc != self._doc:
            self._end_document()
            self._doc, self._doc_tokens, self._doc_pieces = doc, 0, 0
        self._doc_tokens += n
        self._doc_pieces += 1
        self.pieces += 1
        self.tokens += n

    def _end_document(self) -> None:
        if self._doc is None:
            return
        digest = _name_digest(self._name(self._doc))
        self._names.append(digest)
        self._docs.append((digest, self._doc, self._doc_tokens, self._doc_pieces))
        if self._file_of is not None:
            file = int(self._file_of[self._doc])
            self._by_file[file] = self._by_file.get(file, 0) + self._doc_tokens
        self._doc = None

    def result(self) -> dict:
        """pieces, source documents, tokens, the LARGEST documents by tokens and the largest one's share.

        `names` (popped before meta.json is written) is the sorted xxh3_64 digests of its documents'
        names: one 8-byte integer a document, not a string, for `source_documents_in_other_splits`."""
        self._end_document()
        digests = np.frombuffer(self._names, dtype=np.uint64) if len(self._names) else np.zeros(0, np.uint64)
        names, shared = _distinct(digests)
        top = _largest_documents(self._docs, shared, self._name)
        return {
            "documents": self.pieces,
            "source_documents": int(names.size),
            "tokens": self.tokens,
            "largest": [{"name": doc_name, "tokens": -t, "pieces": count} for t, doc_name, count in top],
            "largest_share": -top[0][0] / self.tokens if self.tokens else 0.0,
            "names": names,  # popped before meta.json is written
        }

    def tokens_by_file(self) -> list[list[int]]:
        """[[file index, tokens the split takes from its documents], ...] of the files it draws on, by index."""
        self._end_document()
        return [[file, n] for file, n in sorted(self._by_file.items())]


def _name_digest(name: str) -> int:
    return xxhash.xxh3_64_intdigest(name.encode("utf-8", "surrogatepass"))


def _distinct(digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct name digests, those that more than one document has), both sorted."""
    names, counts = np.unique(digests, return_counts=True)
    return names, names[counts > 1]


def _largest_documents(docs: Spool, shared: np.ndarray, name: Callable[[int], str]) -> list[tuple[int, str, int]]:
    """The LARGEST smallest (-tokens, name, pieces) of the split's names, tokens and pieces summed per name
    (a name's first document, by listing index, names it). `docs` is read a chunk at a time: a document
    whose name is its own is a candidate at once, one whose name is `shared` is summed with the others
    first (a dictionary of the shared names)."""
    groups: dict[int, list[int]] = {}  # shared name digest -> [tokens, pieces, first document]
    top: list[tuple[int, str, int]] = []
    for rows in docs.chunks(size=CHUNK):
        many = np.isin(rows["name"], shared)
        for digest, doc, tokens, pieces in rows[many].tolist():
            group = groups.setdefault(digest, [0, 0, doc])
            group[0], group[1], group[2] = group[0] + tokens, group[1] + pieces, min(group[2], doc)
        top = _keep_largest(top, rows[~many], name)
    return heapq.nsmallest(LARGEST, top + [(-tokens, name(doc), pieces) for tokens, pieces, doc in groups.values()])


def _keep_largest(top: list[tuple[int, str, int]], rows: np.ndarray, name: Callable[[int], str]) -> list[tuple]:
    """`top` and the documents of `rows` (of DOC) cut to the LARGEST smallest (-tokens, name, pieces): names
    are read only for documents at least as large as the LARGEST-th largest of them all (no other can be
    among them)."""
    if not rows.size:
        return top
    sizes = np.concatenate([np.array([-t for t, _, _ in top], dtype=np.int64), rows["tokens"]])
    k = sizes.size - min(LARGEST, sizes.size)
    pick = rows[rows["tokens"] >= np.partition(sizes, k)[k]]
    candidates = [
        (-t, name(d), c) for t, d, c in zip(pick["tokens"].tolist(), pick["doc"].tolist(), pick["pieces"].tolist())
    ]
    return heapq.nsmallest(LARGEST, top + candidates)
