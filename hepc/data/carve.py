"""The split rule: documents ordered by a seeded hash of their content, carved whole into val, test,
held-out and train (docs/data-splits.md has it with measured figures).

1. Documents and pieces. A document is what the source's document rule says (a file, a `%`-entry,
   a JSON Lines record, a Parquet row, an end-of-text-delimited run of token ids, a synthetic draw).
   A document longer than `max_doc_tokens` tokens (its leading end-of-text included) is cut into
   pieces of at most that many tokens: piece 0 is its first `max_doc_tokens` tokens, each later
   piece an end-of-text followed by the next `max_doc_tokens - 1` tokens. Pieces are the sequences
   everything downstream sees (`*_docs.npy`, batching, scoring); they never leave their document's
   split.
2. Identity and duplicates. A document's identity is a digest of its content (xxh3_128 of its UTF-8
   bytes, or of its token ids): never its name, its folder or the order a folder lists it in, so the
   same documents give the same splits wherever they live. Exact duplicates (equal digests) are
   dropped before carving: one copy is kept, named by the first of their names in listing order.
3. Order. Each document gets a 64-bit key, a seeded hash of its digest: key / 2^64 is a uniform draw,
   independent across documents. Documents are ordered by (key, listing index); a document's pieces
   follow each other in index order. The synthetic source's documents are independent draws in an
   endless stream: their order is the stream.
4. Carve. val takes documents in that order until it holds `val_tokens`, then test until
   `test_tokens` (none when 0), held-out until `heldout_tokens`, train until `train_tokens -
   heldout_tokens` (held-out is carved out of the train budget and never trained on). The document
   that fills a split is cut there, so the split is exact, and the rest of that document is dropped:
   it is in no split. So every document lies in exactly one split, or none.

Stability: each split is a contiguous window of one fixed order of documents that depends only on
the documents' contents, `seed` and `max_doc_tokens`. A larger train_tokens keeps val, test and
held-out and extends train; a larger val, test or held-out moves the later splits along the same
order; train never reorders.

Memory: a source offers its documents' pieces one document at a time (holding at most the first
`room` tokens of each, all that one split can take from it); `Kept` (hepc/data/spill.py) holds the
smallest-order documents seen so far and, whenever it holds twice what carving needs, drops those
that carving can no longer reach. Their ids and their index (72 bytes a piece) lie in scratch files,
sorted on disk a bounded run at a time; carving reads them back one piece at a time, in order, and
tells `sink` of each piece it takes, keeping nothing of it (the corpus step's records of what it
takes, hepc/data/taken.py, cost 8 bytes a document taken). So memory is a fixed multiple of one
piece (and of one shard of a token source), never a multiple of the corpus's tokens or of the source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from hepc.data.identity import DataError

SPLITS = ("val", "test", "heldout", "train")  # carving order
DEFAULT_MAX_DOC_TOKENS = 512  # keep in step with Data.max_doc_tokens in hepc/spec/models.py
SHARE_WARNING = 0.05  # a document holding more of a split than this is worth a warning
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_LOW64 = (1 << 64) - 1


class Piece:
    """A piece of a document: its place in the order, its full length and (up to what a split can take) its ids.

    The ids are held (`ids` given) or lie in a scratch file (`stored`: (a spill.Scratch, where), read
    back each time `ids` is asked for); `held` is how many there are, without reading them."""

    __slots__ = ("_ids", "_stored", "digest", "doc", "held", "index", "key", "rest", "tokens")

    def __init__(self, key: int, doc: int, index: int, tokens: int, ids: np.ndarray | None, digest: int = 0,
                 rest: int = 0, *, stored=None, held: int | None = None):
        self.key = key  # its document's seeded key (the stream index for synthetic documents)
        self.doc = doc  # the document's index in the source's listing (ties, names)
        self.index = index  # the piece's index in its document
        self.tokens = tokens  # full length in tokens, its end-of-text included
        self.digest = digest  # the document's content digest (duplicates)
        self.rest = rest  # tokens of its document after this piece (what is dropped when a split ends inside it)
        self._ids, self._stored = ids, stored
        self.held = int(ids.size) if held is None else held  # ids held: all of them, or at least as many as any split can take

    @property
    def ids(self) -> np.ndarray:
        if self._ids is not None:
            return self._ids
        scratch, at = self._stored
        return scratch.read(at, self.held)

    @property
    def order(self) -> tuple[int, int, int]:
        return self.key, self.doc, self.index

    def recount(self, tokens: int, rest: int) -> Piece:
        """The same piece (its ids unread) counted as `tokens` long with `rest` after it."""
        return Piece(self.key, self.doc, self.index, tokens, self._ids, self.digest, rest, stored=self._stored,
                     held=self.held)


@dataclass
class PieceSource:
    """The pieces of a source in corpus order, and what is known about all of it (for meta and errors)."""

    pieces: Iterable[Piece]
    name: Callable[[int], str]  # a document's name, from its listing index
    rule: str
    documents: int | None = None  # None: not counted (an endless synthetic stream)
    pieces_total: int | None = None
    tokens: int | None = None
    duplicates: dict | None = None  # {"documents", "tokens"}: exact duplicates in the whole source
    file_of: np.ndarray | None = None  # a text source's documents' files (int64 indices in identity order), by document
    file_text_bytes: dict[int, int] | None = None  # a text source's file index -> UTF-8 bytes of all its documents


def mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer on a uint64 array (wraps modulo 2^64): a bijection that scatters bits."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def doc_keys(digests, seed: int) -> np.ndarray:
    """Keys (uint64) of documents from their content digests (any integers; the low 64 bits count),
    hashed with the seed: key / 2^64 is each document's uniform draw, and documents are ordered by it."""
    low = np.atleast_1d(np.asarray([int(d) & _LOW64 for d in np.atleast_1d(digests).tolist()], dtype=np.uint64))
    salt = mix(np.asarray([seed], dtype=np.uint64) + _GOLDEN)
    return mix(mix(low ^ salt) + _GOLDEN)


def _mix_int(x: int) -> int:
    """`mix` of one Python integer in [0, 2^64)."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _LOW64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _LOW64
    return x ^ (x >> 31)


def doc_key(digest: int, seed: int) -> int:
    """`doc_keys` of one digest, in Python integers (a document at a time, without numpy's per-call cost)."""
    salt = _mix_int((seed + int(_GOLDEN)) & _LOW64)
    return _mix_int((_mix_int((digest & _LOW64) ^ salt) + int(_GOLDEN)) & _LOW64)


def n_pieces(tokens: int, cap: int | None) -> int:
    """How many pieces a document of `tokens` tokens (end-of-text included) is cut into."""
    if cap is None or tokens <= cap:
        return 1
    return 1 + -(-(tokens - cap) // (cap - 1))


def count_duplicates(digests: np.ndarray, tokens: np.ndarray) -> dict:
    """{"documents", "tokens"}: copies beyond the first of every content digest, and their tokens.
    `digests`: a structured array with fields `hi` and `lo` (a 128-bit digest's two halves), a row a document."""
    if digests.size == 0:
        return {"documents": 0, "tokens": 0}
    order = np.lexsort((digests["lo"], digests["hi"]))  # stable: a digest's first copy comes first
    hi, lo = digests["hi"][order], digests["lo"][order]
    first = order[np.concatenate([[True], (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])])]
    tokens = np.asarray(tokens, dtype=np.int64)
    return {"documents": int(digests.size - first.size), "tokens": int(tokens.sum() - tokens[first].sum())}


# --------------------------------------------------------------------------- carving


class NotEnough(Exception):
    """The pieces ran out before every split was full."""

    def __init__(self, split: str, filled: int, dropped: int):
        super().__init__(split)
        self.split, self.filled, self.dropped = split, filled, dropped


@dataclass
class Carved:
    """What carving passed over and where each split lies in the stream (its pieces went to `sink`)."""

    dropped: dict[str, int]  # per split: tokens of the document that filled it, after the cut
    duplicates: int  # duplicate documents passed over
    spans: dict[str, tuple[int, int]]  # per split: [first, end) positions of its pieces in the stream
    last: tuple[int, int, int] | None  # order of the last piece taken


def carve(pieces: Iterable[Piece], targets: dict[str, int],
          sink: Callable[[str, Piece, int], None] | None = None) -> Carved:
    """Carve `targets` (split → tokens, in carving order) from pieces in corpus order: whole documents,
    the one that fills a split cut at the split's end and its rest dropped, duplicates passed over.
    Reads no further than the last piece it takes. Raises NotEnough when the pieces run out first.
    `sink(split, piece, n)` is told of every piece taken, in order, as it is taken (the only reader of ids)."""
    dropped = {name: 0 for name in targets}
    spans: dict[str, tuple[int, int]] = {}
    stream = iter(pieces)
    pos = 0  # pieces read
    doc: int | None = None  # listing index of the document being read
    passing = False  # its pieces are passed over (a duplicate, or the rest of a document that filled a split)
    identity: tuple[int, int] | None = None  # (key, digest) of the last document begun; a copy follows it directly
    duplicates = 0
    last = None
    for name, target in targets.items():
        filled, first = 0, None
        while filled < target:
            piece = next(stream, None)
            if piece is None:
                raise NotEnough(name, filled, sum(dropped.values()))
            pos += 1
            if piece.doc != doc:
                doc, passing = piece.doc, False
                if (piece.key, piece.digest) == identity:
                    duplicates, passing = duplicates + 1, True
                identity = (piece.key, piece.digest)
            if passing:
                continue
            n = min(piece.tokens, target - filled)
            if sink is not None:
                sink(name, piece, n)
            filled += n
            last = piece.order
            if first is None:
                first = pos - 1
            if filled >= target:  # this document fills the split: its rest is in no split
                dropped[name] = piece.tokens - n + piece.rest
                passing = True
        spans[name] = (pos if first is None else first, pos)
    return Carved(dropped, duplicates, spans, last)


def at_or_after(rows: np.ndarray, bound: tuple[int, int, int]) -> np.ndarray:
    """Which rows (fields key, doc, index) come at or after `bound` in the corpus order (a boolean mask)."""
    key, doc, index = bound
    k, d = rows["key"], rows["doc"]
    return (k > np.uint64(key)) | ((k == np.uint64(key)) & ((d > doc) | ((d == doc) & (rows["index"] >= index))))


# --------------------------------------------------------------------------- sizes and errors


def split_targets(train_tokens: int, val_tokens: int, heldout_tokens: int, test_tokens: int = 0) -> dict[str, int]:
    """Tokens each split takes, in carving order (held-out is carved out of the train budget)."""
    return {"val": val_tokens, "test": test_tokens, "heldout": heldout_tokens, "train": train_tokens - heldout_tokens}


def check_sizes(train_tokens: int, val_tokens: int, heldout_tokens: int, max_doc_tokens: int | None, test_tokens: int = 0) -> None:
    sizes = (("train_tokens", train_tokens), ("val_tokens", val_tokens), ("heldout_tokens", heldout_tokens),
             ("test_tokens", test_tokens))
    for field, value in sizes:
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise DataError(f"must be a non-negative integer (got {value})", f"data.{field}")
    if heldout_tokens >= train_tokens:
        raise DataError(f"must be < train_tokens (got {heldout_tokens} >= {train_tokens})", "data.heldout_tokens")
    if max_doc_tokens is not None and (isinstance(max_doc_tokens, bool) or int(max_doc_tokens) != max_doc_tokens or max_doc_tokens < 2):
        raise DataError(f"must be an integer >= 2 or null (got {max_doc_tokens!r})", "data.max_doc_tokens")


def not_enough_error(source: PieceSource, e: NotEnough, targets: dict[str, int], carve_val: bool) -> DataError:
    """The located error of a source too small for its splits."""
    parts = [f"{name} {n:,}" for name, n in targets.items() if n and (name != "val" or carve_val)]
    have = "" if source.tokens is None else (
        f" has only {source.tokens:,} tokens (in {source.pieces_total:,} pieces of {source.documents:,} documents)")
    dup = (source.duplicates or {}).get("documents")
    dup_note = f", {dup:,} duplicate documents dropped" if dup else ""
    return DataError(
        f"the source{have or ' ran out'}; the splits need {sum(targets.values()):,} ({', '.join(parts)}; held-out is "
        f"part of train_tokens) plus the {e.dropped:,} dropped where documents were cut at split ends{dup_note}",
        "data.train_tokens",
    )
