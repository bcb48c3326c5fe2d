"""Build a corpus: cut a source's documents into pieces, order them, carve val, heldout and train.

The rule (docs/data-splits.md has it with measured figures):

1. Pieces. A document longer than `max_doc_tokens` tokens (its leading end-of-text included) is cut
   into pieces of at most that many tokens: piece 0 is its first `max_doc_tokens` tokens, and each
   later piece is an end-of-text followed by the next `max_doc_tokens - 1` tokens. Every piece thus
   starts at an end-of-text, as a document does, and is a document of its own for everything
   downstream (`*_docs.npy`, batching, scoring). `None` = no cap. Synthetic documents are never cut
   (they all have `doc_tokens` tokens and are independent draws, so none can dominate a split).
2. Order. Each piece gets a 64-bit key, a seeded hash of (its document's identity, its index in the
   document): u = key / 2^64 is a uniform draw in [0, 1), independent across pieces. Identity: the
   file's name for pystdlib and text (the name the source identity hashes), the document's index in
   the concatenated shards for `tokens`. Pieces are ordered by (key, document, index). The synthetic
   source's documents are already independent draws in an endless stream: their order is the stream.
3. Carve. val takes pieces in that order until it holds val_tokens, heldout the next ones until
   heldout_tokens, train the next ones until train_tokens - heldout_tokens (heldout is carved out of
   the train budget and never trained on). The last piece of each split is cut so that the split is
   exact and the rest of it is dropped: no piece is in two splits. The pieces of one long document
   are spread independently over the order, so they may land in different splits (meta.json counts
   them: `source_documents_in_other_splits`); with no cap, no document is in two splits.

Stability: every split is a contiguous window of one fixed order of pieces that depends only on the
source, `seed` and `max_doc_tokens`. So a larger train_tokens keeps val and heldout and extends
train. A larger heldout_tokens keeps val, extends heldout, and train loses the whole pieces at its
front that heldout now takes; the rest of train keeps its pieces in the same order, and its end
moves by less than one piece (the difference between what the old and new cuts at heldout's end
drop) to keep its size exact. A larger val_tokens moves heldout and train along the same order in
the same way. Train never reorders: the pieces two builds' train splits share come in one order.

A `tokens` source with `val_paths` brings its own val: the first val_tokens ids of its validation
shards, unshuffled; then nothing is carved for val and the pieces fill heldout and train.

Memory: a file source is read once, file by file and chunk by chunk (sources.iter_named_documents),
and every piece's key is computed, a chunk at a time. A piece is kept only while it is among the
smallest-key pieces needed to carve every split (a heap holding at most the corpus's tokens plus
three pieces), and only as many of its tokens as a split can take. So memory is bounded by the
corpus, never by the source: of a 1 GB file only the few pieces the splits take are ever held.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from hepc.data import shards, synthetic
from hepc.data.identity import DataError, check_tokens_config, resolve_text_paths, source_identity
from hepc.data.sources import iter_documents, iter_named_documents
from hepc.data.tokenizers import Tokenizer, make_tokenizer, token_dtype

SPLITS = ("val", "heldout", "train")
DEFAULT_MAX_DOC_TOKENS = 512  # keep in step with Data.max_doc_tokens in hepc/spec/models.py
LARGEST = 5  # source documents listed per split in meta.json
_NO_CAP = 1 << 62  # a piece width that no document reaches
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def build_corpus(
    source_cfg: dict,
    tokenizer_cfg: dict,
    *,
    train_tokens: int,
    val_tokens: int,
    heldout_tokens: int,
    seed: int,
    base_dir: Path,
    out_dir: Path,
    max_doc_tokens: int | None = DEFAULT_MAX_DOC_TOKENS,
    tokenizer_dir: Path | None = None,
) -> dict:
    """Write val/heldout/train token arrays, their `*_docs.npy` offsets and meta.json to out_dir; return the meta.

    `tokenizer_dir`: the committed `tokenizer` step of a `bpe` tokenizer (hepc/data/bpe_training.py)."""
    _check_sizes(train_tokens, val_tokens, heldout_tokens, max_doc_tokens)
    tokenizer = make_tokenizer(tokenizer_cfg, source_cfg, trained=tokenizer_dir)
    bpe = tokenizer.config.get("kind") == "bpe"
    identity = source_identity(source_cfg, Path(base_dir))
    given_val = shards.read_val(source_cfg, Path(base_dir), val_tokens) if shards.has_val_paths(source_cfg) else None
    targets = {"val": val_tokens if given_val is None else 0, "heldout": heldout_tokens, "train": train_tokens - heldout_tokens}
    kind = source_cfg.get("kind")
    cap = None if kind == "synthetic" else max_doc_tokens
    if bpe:  # pieces cut in bytes, ordered as for `bytes`, then encoded
        from hepc.data import bpe_training

        source = bpe_training.corpus_source(source_cfg, tokenizer, Path(base_dir), seed, cap, targets)
    elif kind == "synthetic":
        source = _synthetic_source(source_cfg, tokenizer, seed)
    elif kind == "tokens":
        source = _tokens_source(source_cfg, Path(base_dir), seed, cap, tokenizer.eot_id)
    else:
        source = _file_source(source_cfg, tokenizer, Path(base_dir), seed, cap, targets)

    taken, dropped = _carve(source.pieces, targets, source, given_val is None, train_tokens, val_tokens)
    trained_on = bpe_training.check_unseen(taken, tokenizer_dir) if bpe else None

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    arrays, starts, splits = {}, {}, {}
    for name in SPLITS:
        parts = [piece.ids[:n] for piece, n in taken[name]]
        arrays[name] = np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
        starts[name] = _offsets([n for _, n in taken[name]])
        splits[name] = _split_stats([(source.name(piece.doc), n) for piece, n in taken[name]])
        splits[name]["tokens_dropped"] = sum(piece.tokens - n for piece, n in taken[name])  # cut off its last piece
    if given_val is not None:
        arrays["val"] = given_val
        starts["val"] = shards.document_starts(given_val, tokenizer.eot_id)
        bounds = np.append(starts["val"], given_val.size)
        splits["val"] = _split_stats([(f"val_paths document {j}", int(n)) for j, n in enumerate(np.diff(bounds))])
    names = {name: splits[name].pop("names") for name in SPLITS}
    for name in SPLITS:
        others = set().union(*(names[other] for other in SPLITS if other != name))
        splits[name]["source_documents_in_other_splits"] = len(names[name] & others)
    for name in SPLITS:
        np.save(out_dir / f"{name}.npy", arrays[name])
        np.save(out_dir / f"{name}_docs.npy", starts[name])

    n_bytes, bytes_per_token = {}, {}
    for name in SPLITS:
        n_bytes[name], bytes_per_token[name] = tokenizer.byte_stats(arrays[name])
        splits[name]["bytes"] = n_bytes[name]
    meta = {
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": dtype.name,
        "tokenizer": tokenizer.config,
        "seed": seed,
        "tokens": {name: int(arrays[name].size) for name in SPLITS},
        "bytes": n_bytes,
        "bytes_per_token": bytes_per_token,
        "documents": {name: int(starts[name].size) for name in SPLITS},
        "tokens_dropped": dropped,
        "max_doc_tokens": cap,
        "split_rule": source.rule,
        "source_documents": source.documents,
        "source_pieces": source.pieces_total,
        "source_tokens": source.tokens,
        "splits": splits,
        "source": identity,
    }
    if given_val is not None:
        meta["val_note"] = "val is the first val_tokens ids of the val_paths shards, unshuffled, its documents as they come"
    if kind == "tokens":
        meta["bytes_note"] = "pre-tokenized: bytes = tokens x the configured bytes_per_token (null when not given)"
    if trained_on is not None:
        meta["tokenizer_training"] = trained_on
    if kind == "synthetic":
        meta.update(synthetic.entropy_meta(source_cfg))
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# --------------------------------------------------------------------------- pieces and their order


@dataclass(frozen=True)
class Piece:
    """A piece of a document: its place in the order, its full length and (up to what a split can take) its ids."""

    key: int  # seeded hash of (document identity, index); the stream index for synthetic documents
    doc: int  # the document's index in the source's listing (ties, names)
    index: int  # the piece's index in its document
    tokens: int  # full length in tokens, its end-of-text included
    ids: np.ndarray  # its first tokens: all of them, or at least as many as any split can take

    @property
    def order(self) -> tuple[int, int, int]:
        return self.key, self.doc, self.index


@dataclass
class _Source:
    """The pieces of a source in corpus order, and what is known about all of it (for meta and errors)."""

    pieces: Iterable[Piece]
    name: Callable[[int], str]  # a document's name, from its index
    rule: str
    documents: int | None = None  # None: not counted (an endless synthetic stream)
    pieces_total: int | None = None
    tokens: int | None = None


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer on a uint64 array (wraps modulo 2^64): a bijection that scatters bits."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def name_key(name: str) -> int:
    """A file document's identity as 64 bits: xxh3_64 of its name."""
    return xxhash.xxh3_64_intdigest(name.encode("utf-8", "surrogateescape"))


def piece_keys(doc_keys, indices, seed: int) -> np.ndarray:
    """Keys (uint64) of pieces: a seeded hash of their document's 64-bit identity and their index.

    key / 2^64 is the piece's uniform draw u; pieces are ordered by it. `doc_keys` and `indices`
    broadcast (one document and many indices, or one index per document).
    """
    doc_keys = np.atleast_1d(np.asarray(doc_keys, dtype=np.uint64))  # arrays wrap silently; numpy scalars warn
    indices = np.atleast_1d(np.asarray(indices, dtype=np.uint64))
    salt = _mix(np.asarray([seed], dtype=np.uint64) + _GOLDEN)
    return _mix(_mix(doc_keys ^ salt) + (indices + np.uint64(1)) * _GOLDEN)


def n_pieces(tokens: int, cap: int | None) -> int:
    """How many pieces a document of `tokens` tokens (end-of-text included) is cut into."""
    if cap is None or tokens <= cap:
        return 1
    return 1 + -(-(tokens - cap) // (cap - 1))


def _file_source(source_cfg: dict, tokenizer: Tokenizer, base_dir: Path, seed: int, cap: int | None, targets: dict) -> _Source:
    """pystdlib and text: every file read once; only the smallest-key pieces that the splits may use are kept."""
    width = _NO_CAP if cap is None else cap - 1  # bytes after each piece's end-of-text
    room = max(max(targets.values()) - 1, 0)  # bytes of a piece that any split can use
    biggest = min(cap or _NO_CAP, room + 1)
    # Carving wastes less than one piece at val's end and one at heldout's end: keeping this many
    # tokens (counted up to what a split can take from each piece) is always enough.
    kept = _Smallest(sum(targets.values()) + 2 * max(biggest - 1, 0))
    names: list[str] = []
    totals = {"pieces": 0, "tokens": 0}
    for doc, (name, chunks) in enumerate(iter_named_documents(source_cfg, base_dir)):
        names.append(name)
        size = _cut_file(doc, name_key(name), chunks, seed, width, room, kept, tokenizer)
        count = max(1, -(-size // width))
        totals["pieces"] += count
        totals["tokens"] += size + count
    rule = f"pieces of at most {cap} tokens" if cap else "whole documents"
    return _Source(
        pieces=sorted(kept.pieces(), key=lambda p: p.order),
        name=names.__getitem__,
        rule=f"{rule}, ordered by xxh3_64(file name) and piece index hashed with the seed; val, heldout, train carved in that order",
        documents=len(names),
        pieces_total=totals["pieces"],
        tokens=totals["tokens"],
    )


def _cut_file(
    doc: int, doc_key: int, chunks: Iterator[bytes], seed: int, width: int, room: int, kept: _Smallest, tokenizer: Tokenizer
) -> int:
    """Stream one file's UTF-8 chunks, offering the pieces `kept` wants to it; return the file's UTF-8 size.

    Piece k holds bytes [k * width, (k + 1) * width) of the file after its end-of-text; the last one
    ends with the file (an empty file is one piece: its end-of-text). A piece is collected (its first
    `room` bytes) only when `kept` wants it as it starts; keys are computed a chunk at a time.
    """
    pos = 0  # bytes of the file before the current chunk
    active: tuple[int, bytearray] | None = None  # the piece being collected: (index, its first bytes)
    for chunk in chunks:
        if not chunk:
            continue
        end = pos + len(chunk)
        first, last = pos // width, (end - 1) // width
        keys = piece_keys(doc_key, np.arange(first, last + 1), seed)
        bound = kept.bound()  # only decreases: pieces above it now are never wanted in this chunk
        wanted = range(first, last + 1) if bound is None else (first + np.flatnonzero(keys <= np.uint64(bound[0]))).tolist()
        if active is not None and (not wanted or wanted[0] != active[0]):
            wanted = [active[0], *wanted]  # the piece being collected goes on, whatever the bound now
        for k in wanted:
            key, start = int(keys[k - first]), k * width
            if active is None or active[0] != k:
                if start < pos or not kept.wants((key, doc, k)):
                    continue  # began in an earlier chunk without being wanted, or is not wanted
                active = (k, bytearray())
            buf = active[1]
            lo, hi = max(start - pos, 0), min(start + width, end) - pos  # the piece's bytes in this chunk
            buf += chunk[lo : lo + max(min(hi - lo, room - len(buf)), 0)]
            if start + width <= end:  # complete within this chunk
                kept.add(Piece(key, doc, k, width + 1, tokenizer.encode(bytes(buf))))
                active = None
        pos = end
    if pos == 0 or pos % width:  # a last piece shorter than width
        k = pos // width
        key = int(piece_keys(doc_key, k, seed)[0])
        if active is not None:
            kept.add(Piece(key, doc, k, pos - k * width + 1, tokenizer.encode(bytes(active[1]))))
        elif pos == 0 and kept.wants((key, doc, 0)):
            kept.add(Piece(key, doc, 0, 1, tokenizer.encode(b"")))
    return pos


class _Smallest:
    """The pieces with the smallest order seen so far, as few as still hold `need` tokens (each counted
    up to `need`): a prefix, in corpus order, of all the pieces seen, enough to carve every split."""

    def __init__(self, need: int):
        self.need = need
        self._heap: list[tuple[tuple[int, int, int], int, Piece]] = []  # (negated order, tokens counted, piece)
        self._total = 0

    def bound(self) -> tuple[int, int, int] | None:
        """The largest order kept once the kept pieces are enough (then only smaller ones are wanted), else None."""
        if self._total < self.need or not self._heap:
            return None
        key, doc, index = self._heap[0][0]
        return -key, -doc, -index

    def wants(self, order: tuple[int, int, int]) -> bool:
        bound = self.bound()
        return bound is None or order < bound

    def add(self, piece: Piece) -> None:
        counted = min(piece.tokens, len(piece.ids))
        heapq.heappush(self._heap, ((-piece.key, -piece.doc, -piece.index), counted, piece))
        self._total += counted
        while len(self._heap) > 1 and self._total - self._heap[0][1] >= self.need:
            self._total -= heapq.heappop(self._heap)[1]

    def pieces(self) -> list[Piece]:
        return [piece for _, _, piece in self._heap]


def _tokens_source(source_cfg: dict, base_dir: Path, seed: int, cap: int | None, eot_id: int) -> _Source:
    """Token shards (in memory already): every piece's key at once, sorted; pieces made as carving asks for them."""
    vocab_size, _ = check_tokens_config(source_cfg)
    stream = shards.read_stream(resolve_text_paths(source_cfg, base_dir, "data.source", "paths"), vocab_size, "data.source", "paths")
    starts = shards.document_starts(stream, eot_id)
    lengths = np.diff(np.append(starts, stream.size))
    if cap is None:
        counts = np.ones(starts.size, dtype=np.int64)
    else:
        counts = 1 + -(-np.maximum(lengths - cap, 0) // (cap - 1))
    doc = np.repeat(np.arange(starts.size, dtype=np.int64), counts)
    index = np.arange(doc.size, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    if cap is None:
        begin, end = starts[doc], starts[doc] + lengths[doc]
    else:
        begin = starts[doc] + np.where(index == 0, 0, cap + (index - 1) * (cap - 1))
        end = np.minimum(starts[doc] + cap + index * (cap - 1), starts[doc] + lengths[doc])
    keys = piece_keys(doc, index, seed)
    order = np.lexsort((index, doc, keys))
    eot = np.array([eot_id], dtype=stream.dtype)

    def pieces() -> Iterator[Piece]:
        for i in order.tolist():
            k, ids = int(index[i]), stream[begin[i] : end[i]]
            if k:
                ids = np.concatenate([eot, ids])
            yield Piece(int(keys[i]), int(doc[i]), k, ids.size, ids)

    return _Source(
        pieces=pieces(),
        name=lambda d: f"document {d} of the train shards",
        rule=(f"pieces of at most {cap} tokens" if cap else "whole documents")
        + ", ordered by their document's index in the shards and piece index hashed with the seed;"
        + " val, heldout, train carved in that order",
        documents=int(starts.size),
        pieces_total=int(doc.size),
        tokens=int(stream.size + np.count_nonzero(index)),
    )


def _synthetic_source(source_cfg: dict, tokenizer: Tokenizer, seed: int) -> _Source:
    """Endless independent documents: the stream order is the corpus order; never cut."""
    docs = iter_documents(source_cfg, Path("."), seed)

    def pieces() -> Iterator[Piece]:
        for i, document in enumerate(docs):
            ids = tokenizer.encode(document)
            yield Piece(i, i, 0, ids.size, ids)

    return _Source(
        pieces=pieces(),
        name=lambda d: f"document {d}",
        rule="whole documents in stream order (independent draws); val, heldout, train carved in that order",
    )


# --------------------------------------------------------------------------- carving and statistics


def _carve(
    pieces: Iterable[Piece], targets: dict, source: _Source, carve_val: bool, train_tokens: int, val_tokens: int
) -> tuple[dict[str, list[tuple[Piece, int]]], int]:
    """Each split's (piece, tokens taken from its start), in corpus order, and the tokens dropped at cuts."""
    taken: dict[str, list[tuple[Piece, int]]] = {name: [] for name in SPLITS}
    dropped = 0
    stream = iter(pieces)
    for name in SPLITS:
        filled = 0
        while filled < targets[name]:
            piece = next(stream, None)
            if piece is None:
                needed = (
                    f"{val_tokens + train_tokens:,} (val {val_tokens:,} + train {train_tokens:,}, heldout included in train)"
                    if carve_val
                    else f"{train_tokens:,} (train, heldout included; val comes from val_paths)"
                )
                raise DataError(
                    f"the source has only {source.tokens:,} tokens (in {source.pieces_total:,} pieces of "
                    f"{source.documents:,} documents); the splits need {needed} plus the {dropped:,} "
                    "dropped where pieces were cut at split ends",
                    "data.train_tokens",
                )
            n = min(piece.tokens, targets[name] - filled)
            dropped += piece.tokens - n
            taken[name].append((piece, n))
            filled += n
    return taken, dropped


def _offsets(lengths: list[int]) -> np.ndarray:
    """Start offsets (int64) of consecutive pieces of these lengths."""
    if not lengths:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64)]).astype(np.int64)


def _split_stats(parts: list[tuple[str, int]]) -> dict:
    """documents (pieces), source documents, tokens, and the LARGEST source documents by tokens in the split.

    (A source document's pieces may be in several splits: `source_documents_in_other_splits`, added
    by the caller, counts the source documents of this split that also have pieces in another.)"""
    by_doc: dict[str, list[int]] = {}
    for name, n in parts:
        entry = by_doc.setdefault(name, [0, 0])
        entry[0] += n
        entry[1] += 1
    top = sorted(by_doc.items(), key=lambda item: (-item[1][0], item[0]))[:LARGEST]
    return {
        "documents": len(parts),
        "source_documents": len(by_doc),
        "tokens": sum(n for _, n in parts),
        "largest": [{"name": name, "tokens": tokens, "pieces": count} for name, (tokens, count) in top],
        "names": set(by_doc),  # popped before meta.json is written
    }


def _check_sizes(train_tokens: int, val_tokens: int, heldout_tokens: int, max_doc_tokens: int | None) -> None:
    for field, value in (("train_tokens", train_tokens), ("val_tokens", val_tokens), ("heldout_tokens", heldout_tokens)):
        if int(value) != value or value < 0:
            raise DataError(f"must be a non-negative integer (got {value})", f"data.{field}")
    if heldout_tokens >= train_tokens:
        raise DataError(f"must be < train_tokens (got {heldout_tokens} >= {train_tokens})", "data.heldout_tokens")
    if max_doc_tokens is not None and (isinstance(max_doc_tokens, bool) or int(max_doc_tokens) != max_doc_tokens or max_doc_tokens < 2):
        raise DataError(f"must be an integer >= 2 or null (got {max_doc_tokens!r})", "data.max_doc_tokens")

