"""Pieces held on disk while a corpus is carved: their ids in a scratch file, a compact index in memory.

The corpus and tokenizer steps keep the pieces carving may need (`Kept`, the split rule's memory
bound of hepc/data/carve.py) and read them back in corpus order. Each piece is one row of `ROW` (72
bytes) in a numpy array; its ids lie in a scratch file under the step's work folder (`ScratchDir`),
written as the piece is offered and read back one piece at a time when its ids are asked for
(carving itself reads only the index). A document's name is written to a scratch file too (8
bytes of offset in memory). Dropped pieces leave dead ids in the file: when they outgrow the live
ones the file is rewritten with only the live pieces, in order, so the scratch stays under about
twice what `Kept` holds (itself at most twice what carving needs, at BYTES_PER_TOKEN_BOUND bytes a
token for a BPE's raw text). The folder and its files are removed when the step ends, done or not.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import numpy as np

from hepc.data.carve import NotEnough, Piece, carve

ROW = np.dtype([("key", "<u8"), ("doc", "<i8"), ("index", "<i8"), ("tokens", "<i8"), ("held", "<i8"), ("at", "<i8"),
                ("rest", "<i8"), ("hi", "<u8"), ("lo", "<u8")])  # a piece; hi, lo: its document's 128-bit digest
_LOW64 = (1 << 64) - 1
_BATCH = 1024  # index rows turned into Piece objects at a time


class Rows:
    """A growable numpy array (capacity grown by half): rows appended one at a time."""

    def __init__(self, dtype: np.dtype, capacity: int = 1024):
        self._a = np.empty(capacity, dtype=dtype)
        self.n = 0

    def __len__(self) -> int:
        return self.n

    @property
    def array(self) -> np.ndarray:
        """The rows so far (a view: valid until the next append)."""
        return self._a[: self.n]

    def _room(self, extra: int) -> None:
        if self.n + extra > self._a.size:
            grown = np.empty(max(self._a.size + self._a.size // 2, self.n + extra), dtype=self._a.dtype)
            grown[: self.n] = self._a[: self.n]
            self._a = grown

    def append(self, row) -> None:
        self._room(1)
        self._a[self.n] = row
        self.n += 1

    def set(self, rows: np.ndarray) -> None:
        """Replace every row by `rows` (taken as they are: a fresh array, not a view of the rows)."""
        self._a = rows
        self.n = rows.size


class Scratch:
    """A scratch file of ids of one dtype (the first write's): `write` returns where the ids begin
    (counted in ids), `read` reads them back. Removed by `close`."""

    def __init__(self, folder: Path, name: str):
        fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".bin", dir=folder)
        self.path = Path(path)
        self._file = os.fdopen(fd, "w+b")
        self.dtype: np.dtype | None = None
        self.size = 0  # ids written
        self._at_end = True

    def write(self, ids: np.ndarray) -> int:
        ids = np.asarray(ids)
        if self.dtype is None:
            self.dtype = ids.dtype
        ids = np.ascontiguousarray(ids, dtype=self.dtype)
        if not self._at_end:
            self._file.seek(0, os.SEEK_END)
            self._at_end = True
        self._file.write(ids)
        at, self.size = self.size, self.size + ids.size
        return at

    def read(self, at: int, n: int) -> np.ndarray:
        out = np.empty(n, dtype=self.dtype or np.uint8)
        if n:
            self._file.seek(at * out.itemsize)
            self._at_end = False
            got = self._file.readinto(out)
            if got != out.nbytes:
                raise OSError(f"scratch file {self.path} is shorter than what was written to it ({got} of {out.nbytes} bytes)")
        return out

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class ScratchDir:
    """A temporary folder for a step's scratch files, under `parent` (the step's work folder; the system's
    temporary folder when None): every file closed and the folder removed on exit, whether or not the
    step succeeded."""

    def __init__(self, parent: Path | None = None):
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self._tmp = tempfile.TemporaryDirectory(prefix="hepc-scratch-", dir=parent)
        self.path = Path(self._tmp.name)
        self._files: list[Scratch] = []

    def file(self, name: str) -> Scratch:
        scratch = Scratch(self.path, name)
        self._files.append(scratch)
        return scratch

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        for scratch in self._files:
            scratch.close()
        self._files.clear()
        self._tmp.cleanup()


class Names:
    """Documents' names by listing index, written to a scratch file as they are listed (8 bytes each in
    memory): callable as `name(doc)`."""

    def __init__(self, scratch: Scratch):
        self._scratch = scratch
        self._ends = Rows(np.dtype("<i8"))

    def __len__(self) -> int:
        return len(self._ends)

    def append(self, name: str) -> None:
        data = np.frombuffer(name.encode("utf-8", "surrogatepass"), dtype=np.uint8)
        if data.size:
            self._scratch.write(data)
        self._ends.append(self._scratch.size)

    def __call__(self, doc: int) -> str:
        if not 0 <= doc < len(self._ends):
            raise IndexError(doc)
        ends = self._ends.array
        begin = int(ends[doc - 1]) if doc else 0
        return self._scratch.read(begin, int(ends[doc]) - begin).tobytes().decode("utf-8", "surrogatepass")


def _row(piece: Piece, at: int) -> tuple:
    return (piece.key, piece.doc, piece.index, piece.tokens, piece.held, at, piece.rest,
            piece.digest >> 64, piece.digest & _LOW64)


def iter_rows(rows: np.ndarray, scratch: Scratch) -> Iterator[Piece]:
    """The pieces of index `rows`, in their order, their ids unread (in `scratch`)."""
    for start in range(0, rows.size, _BATCH):
        for key, doc, index, tokens, held, at, rest, hi, lo in rows[start : start + _BATCH].tolist():
            yield Piece(key, doc, index, tokens, None, (hi << 64) | lo, rest, stored=(scratch, at), held=held)


class Spilled:
    """Pieces in a fixed order whose ids lie in a scratch file: a sequence (len, [i], iteration) that
    pieces can be appended to (`append` writes its ids)."""

    def __init__(self, scratch: Scratch, rows: np.ndarray | None = None):
        self.scratch = scratch
        self._rows = Rows(ROW)
        if rows is not None:  # taken as they are, not copied
            self._rows.set(rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> Piece:
        return next(iter_rows(self._rows.array[i : i + 1], self.scratch))

    def __iter__(self) -> Iterator[Piece]:
        return iter_rows(self._rows.array, self.scratch)

    def iter_from(self, start: int, stop: int | None = None) -> Iterator[Piece]:
        """The pieces [start, stop) (to the end when None) as they are now."""
        return iter_rows(self._rows.array[start:stop], self.scratch)

    def column(self, field: str) -> np.ndarray:
        """One field of the index (`held`, `doc`, ...) for every piece, in order."""
        return self._rows.array[field]

    def append(self, piece: Piece) -> None:
        self._rows.append(_row(piece, self.scratch.write(piece.ids)))


class Kept:
    """The smallest-order documents offered so far, as few as carving `targets` may still need.

    Documents are offered whole (their held pieces); their ids are written to a scratch file and an
    index row kept per piece. While the held ids stay under a limit everything is kept; past it the
    index is sorted, carved, and documents after the last one that carving reached are dropped for
    good (`bound`: a document ordered after it is never wanted). The limit is then twice what is
    held, so the pruning costs O(n log n) over the whole source; the scratch file is rewritten with
    the live pieces only when its dead ids outnumber them."""

    def __init__(self, targets: dict[str, int], scratch: ScratchDir):
        self.targets = targets
        self._dir = scratch
        self._scratch = scratch.file("kept")
        self.rows = Rows(ROW)
        self.held = 0
        self.limit = 2 * sum(targets.values()) + 4096
        self.bound: tuple[int, int] | None = None

    def wants(self, key: int, doc: int) -> bool:
        return self.bound is None or (key, doc) <= self.bound

    def add(self, pieces: list[Piece]) -> None:
        if not pieces or not self.wants(pieces[0].key, pieces[0].doc):
            return
        for piece in pieces:
            self.rows.append(_row(piece, self._scratch.write(piece.ids)))
            self.held += piece.held
        if self.held > self.limit:
            self._prune()

    def _sort(self) -> np.ndarray:
        rows = self.rows.array
        self.rows.set(rows[np.lexsort((rows["index"], rows["doc"], rows["key"]))])
        return self.rows.array

    def _prune(self) -> None:
        rows = self._sort()
        try:
            carved = carve(iter_rows(rows, self._scratch), self.targets)
        except NotEnough:
            self.limit = 2 * self.held
            return
        if carved.last is None:
            return
        key, doc = carved.last[:2]
        keep = (rows["key"] < np.uint64(key)) | ((rows["key"] == np.uint64(key)) & (rows["doc"] <= doc))
        self.rows.set(rows[keep])
        self.bound = (key, doc)
        self.held = int(self.rows.array["held"].sum())
        self.limit = 2 * max(self.held, sum(self.targets.values())) + 4096
        if self._scratch.size > 2 * self.held + (1 << 16):
            self._compact()

    def _compact(self) -> None:
        """Rewrite the scratch file with the live pieces only, in index order."""
        old, new = self._scratch, self._dir.file("kept")
        rows = self.rows.array
        rows["at"] = [new.write(old.read(at, held)) for at, held in zip(rows["at"].tolist(), rows["held"].tolist())]
        old.close()
        self._scratch = new

    def pieces(self) -> Spilled:
        """Every kept piece in corpus order (documents by (key, listing index), pieces in index order)."""
        return Spilled(self._scratch, self._sort())
