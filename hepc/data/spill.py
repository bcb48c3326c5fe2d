"""Pieces held on disk while a corpus is carved: their ids and their index in scratch files.

The corpus and tokenizer steps keep the pieces carving may need (`Kept`, the split rule's memory
bound of hepc/data/carve.py) and read them back in corpus order. Each piece is one index row of
`ROW` (72 bytes); its ids lie in a scratch file under the step's work folder (`ScratchDir`), written
as the piece is offered and read back one piece at a time when its ids are asked for (carving
itself reads only the index). The rows lie on disk too: `Kept` sorts them externally (a buffer of
RUN rows in memory, written as a sorted run when full, the runs merged _BATCH rows of each at a
time, at most MAX_RUNS + 1 of them) and writes the merged order to a row file that `Spilled` reads
_BATCH rows at a time. So the index costs at most about 2 x RUN x 72 bytes (the buffer and its
sorted copy, 9.4 MB) plus, while merging, 2 x (MAX_RUNS + 1) x _BATCH x 72 bytes (a chunk of each
run and a merged chunk's sorted copy, 9.6 MB): a fixed bound, whatever the number of pieces. A document's name is written
to a scratch file too (8 bytes of offset in memory, per document). Dropped pieces leave dead ids in
the file: when they outgrow the live ones the file is rewritten with only the live pieces, in
order, so the scratch stays under about twice what `Kept` holds (itself at most twice what carving
needs, at BYTES_PER_TOKEN_BOUND bytes a token for a BPE's raw text). The folder and its files are
removed when the step ends, done or not.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import numpy as np

from hepc.data.carve import NotEnough, Piece, at_or_after, carve

ROW = np.dtype([("key", "<u8"), ("doc", "<i8"), ("index", "<i8"), ("tokens", "<i8"), ("held", "<i8"), ("at", "<i8"),
                ("rest", "<i8"), ("hi", "<u8"), ("lo", "<u8")])  # a piece; hi, lo: its document's 128-bit digest
_LOW64 = (1 << 64) - 1
_BATCH = 1024  # index rows read from disk, merged or turned into Piece objects at a time
RUN = 1 << 16  # index rows `Kept` holds in memory (4.7 MB) before it writes them as a sorted run
MAX_RUNS = 64  # sorted runs `Kept` merges at once: past it, they are merged into one
SLACK = 1 << 16  # dead ids `Kept`'s scratch file may hold beyond its live ones before it is rewritten


class Rows:
    """A growable numpy array (capacity grown by half, never past `most` rows while they suffice): rows
    appended one at a time."""

    def __init__(self, dtype: np.dtype, capacity: int = 1024, most: int | None = None):
        self._a = np.empty(capacity, dtype=dtype)
        self.n = 0
        self._most = most

    def __len__(self) -> int:
        return self.n

    @property
    def array(self) -> np.ndarray:
        """The rows so far (a view: valid until the next append)."""
        return self._a[: self.n]

    def _room(self, extra: int) -> None:
        if self.n + extra > self._a.size:
            size = self._a.size + self._a.size // 2
            if self._most is not None:
                size = min(size, self._most)
            grown = np.empty(max(size, self.n + extra), dtype=self._a.dtype)
            grown[: self.n] = self._a[: self.n]
            self._a = grown

    def append(self, row) -> None:
        self._room(1)
        self._a[self.n] = row
        self.n += 1

    def clear(self) -> None:
        """Drop every row (the capacity stays)."""
        self.n = 0


class Scratch:
    """A scratch file of ids (or index rows) of one dtype (`dtype`, else the first write's): `write`
    returns where the ids begin (counted in ids), `read` reads them back. Removed by `close`."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype | None = None):
        fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".bin", dir=folder)
        self.path = Path(path)
        self._file = os.fdopen(fd, "w+b")
        self.dtype: np.dtype | None = None if dtype is None else np.dtype(dtype)
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

    def file(self, name: str, dtype: np.dtype | None = None) -> Scratch:
        scratch = Scratch(self.path, name, dtype)
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


class Spool:
    """Rows of one dtype (the file's) appended to a scratch file through an in-memory buffer of at most
    `buffer` rows, read back a chunk at a time."""

    def __init__(self, file: Scratch, buffer: int = _BATCH):
        self.file = file
        self._buffer = Rows(file.dtype, min(buffer, 1024), buffer)
        self._room = buffer

    def __len__(self) -> int:
        return self.file.size + len(self._buffer)

    def append(self, row) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self._room:
            self.flush()

    def extend(self, rows: np.ndarray) -> None:
        self.flush()
        self.file.write(rows)

    def flush(self) -> None:
        """Write the buffered rows to the file."""
        if len(self._buffer):
            self.file.write(self._buffer.array)
            self._buffer.clear()

    def chunks(self, start: int = 0, stop: int | None = None, size: int | None = None) -> Iterator[np.ndarray]:
        """The rows [start, stop) (to the end when None) as they are now, `size` at a time (_BATCH when None)."""
        self.flush()
        stop = self.file.size if stop is None else min(stop, self.file.size)
        size = size or _BATCH
        return (self.file.read(at, min(size, stop - at)) for at in range(start, stop, size))


class Spilled:
    """Pieces in a fixed order whose ids lie in a scratch file and whose index rows lie in another (a
    buffer of at most _BATCH rows in memory): a sequence (len, [i], iteration) that pieces can be
    appended to (`append` writes its ids and its row)."""

    def __init__(self, scratch: Scratch, rows: Scratch):
        self.scratch = scratch
        self._rows = Spool(rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> Piece:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return next(self.iter_from(i, i + 1))

    def __iter__(self) -> Iterator[Piece]:
        return self.iter_from(0)

    def iter_from(self, start: int, stop: int | None = None) -> Iterator[Piece]:
        """The pieces [start, stop) (to the end when None) as they are now."""
        return (piece for rows in self._rows.chunks(start, stop) for piece in iter_rows(rows, self.scratch))

    def total(self, field: str, start: int, stop: int) -> int:
        """The sum of one field (`held`, ...) over the pieces [start, stop)."""
        return sum(int(rows[field].sum()) for rows in self._rows.chunks(start, stop))

    def documents(self, start: int, stop: int) -> int:
        """How many documents the pieces [start, stop) belong to: a document's pieces are adjacent in
        corpus order, so this counts the changes of `doc` (np.unique's count, without the column)."""
        count, previous = 0, None
        for rows in self._rows.chunks(start, stop):
            docs = rows["doc"]
            count += int(np.count_nonzero(docs[1:] != docs[:-1])) + (int(docs[0]) != previous)
            previous = int(docs[-1])
        return count

    def append(self, piece: Piece) -> None:
        self._rows.append(_row(piece, self.scratch.write(piece.ids)))

    def extend(self, rows: np.ndarray) -> None:
        """Append index rows whose ids are already in the scratch file."""
        self._rows.extend(rows)


def _sorted(rows: np.ndarray) -> np.ndarray:
    """Index rows in corpus order: by key, then document, then piece index (a copy)."""
    return rows[np.lexsort((rows["index"], rows["doc"], rows["key"]))]


def _order_of(row) -> tuple[int, int, int]:
    return int(row["key"]), int(row["doc"]), int(row["index"])


def merge(runs: list[tuple[Callable[[int, int], np.ndarray], int]]) -> Iterator[np.ndarray]:
    """Sorted runs of index rows (each a reader `read(start, count)` of its rows, and its length) merged
    into one corpus order, yielded as sorted chunks, at most _BATCH rows of each run held at a time.

    Each round reads the next _BATCH rows of every run whose read rows are all passed on; every row up
    to the least of the open runs' last read rows comes before anything not yet read, so it is passed
    on (the run that holds that least row passes on all its rows: each round makes progress). Orders
    are unique (a piece is one (document, index)), so there are no ties to break."""
    done = [0] * len(runs)  # rows read from each run
    held = [np.empty(0, dtype=ROW) for _ in runs]  # each run's rows read and not yet passed on
    while True:
        for i, (read, n) in enumerate(runs):
            if not held[i].size and done[i] < n:
                held[i] = read(done[i], min(_BATCH, n - done[i]))
                done[i] += held[i].size
        open_ends = [_order_of(held[i][-1]) for i, (_, n) in enumerate(runs) if done[i] < n]
        if open_ends:
            key, doc, index = min(open_ends)
            cuts = [int(np.count_nonzero(~at_or_after(rows, (key, doc, index + 1)))) for rows in held]
        else:
            cuts = [rows.size for rows in held]
        if not any(cuts):
            return
        chunk = np.concatenate([rows[:cut] for rows, cut in zip(held, cuts)])
        held = [rows[cut:] for rows, cut in zip(held, cuts)]
        yield _sorted(chunk)


def _within(chunks: Iterator[np.ndarray], bound: tuple[int, int]) -> Iterator[np.ndarray]:
    """The rows of sorted `chunks` whose document is at or before `bound` (key, doc) in corpus order."""
    key, doc = bound
    for rows in chunks:
        keep = ~at_or_after(rows, (key, doc + 1, 0))
        yield rows[keep]
        if not keep.all():
            return


class Kept:
    """The smallest-order documents offered so far, as few as carving `targets` may still need.

    Documents are offered whole (their held pieces); their ids are written to a scratch file and an
    index row kept per piece. Rows are buffered in memory, RUN at most, and written as a sorted run
    to a row file when the buffer is full (an external merge sort: past MAX_RUNS runs they are merged
    into one). While the held ids stay under a limit everything is kept; past it the runs are merged,
    carved, and documents after the last one that carving reached are dropped for good (`bound`: a
    document ordered after it is never wanted), the kept rows rewritten as one run. The limit is then
    twice what is held, so the pruning costs O(n log n) over the whole source; the ids' scratch file
    is rewritten with the live pieces only (during that merge) when its dead ids outnumber them."""

    def __init__(self, targets: dict[str, int], scratch: ScratchDir):
        self.targets = targets
        self._dir = scratch
        self._scratch = scratch.file("kept")
        self._runs_file = scratch.file("runs", ROW)
        self._runs: list[tuple[int, int]] = []  # (first row, rows) of each sorted run in the runs file
        self._buffer = Rows(ROW, min(RUN, 1024), RUN)  # rows not yet in a run
        self.held = 0
        self.limit = 2 * sum(targets.values()) + 4096
        self.bound: tuple[int, int] | None = None

    def wants(self, key: int, doc: int) -> bool:
        return self.bound is None or (key, doc) <= self.bound

    def add(self, pieces: list[Piece]) -> None:
        if not pieces or not self.wants(pieces[0].key, pieces[0].doc):
            return
        for piece in pieces:
            self._buffer.append(_row(piece, self._scratch.write(piece.ids)))
            self.held += piece.held
            if len(self._buffer) >= RUN:
                self._spill()
        if self.held > self.limit:
            self._prune()

    def _spill(self) -> None:
        """Write the buffer as a sorted run; past MAX_RUNS runs, merge them all into one."""
        self._runs.append((self._runs_file.write(_sorted(self._buffer.array)), len(self._buffer)))
        self._buffer.clear()
        if len(self._runs) > MAX_RUNS:
            self._rewrite(self._merged(), compact=False)

    def _merged(self) -> Iterator[np.ndarray]:
        """Every kept row in corpus order, in sorted chunks: the runs merged with the buffer (sorted in place)."""
        buffer = self._buffer.array
        buffer[:] = _sorted(buffer)
        runs = [(self._run_reader(at), n) for at, n in self._runs]
        return merge([*runs, (lambda start, count: buffer[start : start + count], buffer.size)])

    def _run_reader(self, at: int) -> Callable[[int, int], np.ndarray]:
        file = self._runs_file
        return lambda start, count: file.read(at + start, count)

    def _rewrite(self, chunks: Iterator[np.ndarray], compact: bool) -> None:
        """Make the rows of `chunks` (in corpus order) the only run, in a fresh row file; when `compact`,
        their ids are copied to a fresh scratch file too (in that order) and the old one removed."""
        runs = self._dir.file("runs", ROW)
        ids = self._dir.file("kept") if compact else self._scratch
        for rows in chunks:
            if compact:
                rows["at"] = [
                    ids.write(self._scratch.read(at, held))
                    for at, held in zip(rows["at"].tolist(), rows["held"].tolist())
                ]
            runs.write(rows)
        self._runs_file.close()
        if compact:
            self._scratch.close()
        self._runs_file, self._scratch = runs, ids
        self._runs = [(0, runs.size)] if runs.size else []
        self._buffer.clear()

    def _all_rows(self) -> Iterator[np.ndarray]:
        """Every kept row in no particular order, RUN at a time."""
        file = self._runs_file
        yield from (file.read(at, min(RUN, file.size - at)) for at in range(0, file.size, RUN))
        yield self._buffer.array

    def _prune(self) -> None:
        try:
            carved = carve(self._pieces(), self.targets)
        except NotEnough:
            self.limit = 2 * self.held
            return
        if carved.last is None:
            return
        key, doc = carved.last[:2]
        self.bound = (key, doc)
        self.held = sum(int(rows["held"][~at_or_after(rows, (key, doc + 1, 0))].sum()) for rows in self._all_rows())
        self.limit = 2 * max(self.held, sum(self.targets.values())) + 4096
        self._rewrite(_within(self._merged(), self.bound), compact=self._scratch.size > 2 * self.held + SLACK)

    def _pieces(self) -> Iterator[Piece]:
        return (piece for rows in self._merged() for piece in iter_rows(rows, self._scratch))

    def pieces(self) -> Spilled:
        """Every kept piece in corpus order (documents by (key, listing index), pieces in index order),
        their rows merged into a row file of their own."""
        order = Spilled(self._scratch, self._dir.file("order", ROW))
        for rows in self._merged():
            order.extend(rows)
        return order
