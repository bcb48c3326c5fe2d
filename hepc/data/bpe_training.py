"""A BPE tokenizer trained on the train split only, and the corpus pieces it tokenizes.

The split rule (hepc/data/carve.py) orders a source's documents and carves val, test, held-out and
train from that order by their sizes in tokens, so which documents train takes depends on the
tokenizer, and the tokenizer is to be trained on train alone. The pieces are therefore fixed before
any BPE exists: a document is cut every `max_doc_tokens - 1` *bytes* (each piece then has at most
`max_doc_tokens` BPE tokens, its end-of-text included), and the pieces are ordered exactly as for
the `bytes` tokenizer (same keys, same order). Then:

1. The bound: at `BYTES_PER_TOKEN_BOUND` bytes per token (more than any BPE of a natural text
   compresses), val, test and held-out would end at position `safe` of the order; everything past it
   is train or in no split, whatever the BPE.
2. The estimate: a sample BPE is trained on the first `SAMPLE_BYTES` of text past `safe` (train
   text); under its counts val, test and held-out end at `a_est`, and it compresses them at `ratio`
   bytes per token. The real BPE, trained on more text, compresses a little more, so val, test and
   held-out take a few more pieces: training starts at s = a_est + `MARGIN`·a_est (never past `safe`).
3. The BPE is trained once on the pieces [s, e), e being where train ends at (1 + `MARGIN`)·ratio + 1
   bytes per token (or the source's end): all of train but the few pieces before s, and perhaps some
   pieces past train's end (in no split). Under its counts val, test and held-out end at a (only they
   are encoded to find it). If a <= s it never saw them: done. Otherwise (the estimate fell short)
   s moves past a (by 1% of a, at least one piece) and it is trained again; none valid after
   MAX_ROUNDS rounds is an error. One round in practice: one small and one full training, where
   training in rounds until train's window stopped moving took four (bench/corpus_speed.py).
Documents are encoded `ENCODE_BATCH` pieces at a time (the library encodes a batch on all cores).

The corpus step tokenizes with the final BPE and carves the same order with the same counts, so it
gets the same a; it checks that every val, test and held-out piece comes before the first piece the
BPE was trained on and records in meta.json the check and how many train pieces the BPE did not see
(before its first piece or after its last). The BPE saw the pieces [s, e): never val, test or
held-out, all of train but a few pieces, perhaps some past train's end. Everything is
deterministic: the same source, split rule and config give the same tokenizer.json.

Memory: the pieces are collected as for the bytes tokenizer, with each split's size taken as
`BYTES_PER_TOKEN_BOUND` bytes per token; a split that needs more bytes per token than that is an
error that says so (no natural-language BPE comes near it). Their raw bytes lie in a scratch file
(hepc/data/spill.py; a synthetic source's are written there as they are first read) and are read
back a piece, or an `ENCODE_BATCH` of pieces, at a time, and so is their index (a batch of rows at a
time): the steps hold neither their text nor their index (the library's trainer holds its own counts
of the words it has seen).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hepc.data.carve import (
    DEFAULT_MAX_DOC_TOKENS,
    NotEnough,
    Piece,
    PieceSource,
    carve,
    check_sizes,
    not_enough_error,
    split_targets,
)
from hepc.data.identity import DataError
from hepc.data.pieces import file_source, synthetic_source
from hepc.data.spill import ROW, ScratchDir, Spilled
from hepc.data.tokenizers import BpeTokenizer, tokenizer_config, train_bpe, utf8_text

BYTES_PER_TOKEN_BOUND = 8
MAX_ROUNDS = 8
ENCODE_BATCH = 1024  # pieces encoded at once (a small read-ahead of the order; the ids are the same)
SAMPLE_BYTES = 4 << 20  # text of the sample BPE that estimates the compression (step 2 of the module docstring)
MARGIN = 0.2  # share added to the estimated end of val + test + held-out (and to the compression) for safety
TOKENIZER_META = "meta.json"


class _RawBytes:
    """Pieces as their UTF-8 bytes: ids = a placeholder for the end-of-text, then the bytes (uint8).
    Their sizes are those of the bytes tokenizer, so the pieces and their order are the same."""

    vocab_size, eot_id = 256, 0

    def encode(self, document: bytes) -> np.ndarray:
        out = np.empty(len(document) + 1, dtype=np.uint8)
        out[0] = 0
        out[1:] = np.frombuffer(document, dtype=np.uint8)
        return out


class _Replay:
    """The pieces of a source in corpus order, kept as they are read (their bytes on disk): every
    iteration starts from the first piece (the synthetic source is endless: read only as far as asked)."""

    def __init__(self, pieces, scratch: ScratchDir):
        if isinstance(pieces, Spilled):  # a file source's kept pieces: all of them there already
            self.seen, self._stream = pieces, iter(())
        else:
            self.seen, self._stream = Spilled(scratch.file("replay"), scratch.file("replay-rows", ROW)), iter(pieces)

    def __iter__(self) -> Iterator[Piece]:
        i = 0
        while True:
            if i < len(self.seen):
                end = len(self.seen)
                yield from self.seen.iter_from(i)
                i = end
                continue
            piece = next(self._stream, None)
            if piece is None:
                return
            self.seen.append(piece)
            yield piece
            i += 1

    def read_to(self, n: int) -> int:
        """Read until `n` pieces are held (or the stream ends); how many are held."""
        while len(self.seen) < n:
            piece = next(self._stream, None)
            if piece is None:
                break
            self.seen.append(piece)
        return len(self.seen)

    def raw(self, start: int, stop: int) -> list[bytes]:
        """The bytes of the pieces [start, stop) (their end-of-text placeholder left out)."""
        return [piece.ids[1:].tobytes() for piece in self.seen.iter_from(start, stop)]

    def bytes_of(self, start: int, stop: int) -> int:
        """Bytes of text of the pieces [start, stop), without reading them."""
        return self.seen.total("held", start, stop) - (stop - start)


def raw_source(source_cfg: dict, base_dir: Path, seed: int, cap: int | None, targets: dict,
               scratch: ScratchDir) -> PieceSource:
    """The source's pieces in corpus order as UTF-8 bytes, enough for splits of `targets` BPE tokens."""
    kind = source_cfg.get("kind")
    if kind == "tokens":
        raise DataError("must be 'none' for a pre-tokenized source (got a bpe tokenizer)", "data.tokenizer")
    if kind == "synthetic":
        return synthetic_source(source_cfg, _RawBytes(), seed)
    scaled = {name: n * BYTES_PER_TOKEN_BOUND for name, n in targets.items()}
    raw = file_source(source_cfg, _RawBytes(), base_dir, seed, cap, scaled, scratch)
    if cap:
        raw.rule = raw.rule.replace(
            f"pieces of at most {cap} tokens",
            f"pieces of at most {cap - 1} bytes after their end-of-text (at most {cap} BPE tokens)",
        )
    return raw


def bpe_pieces(raw: PieceSource, pieces, tokenizer: BpeTokenizer) -> PieceSource:
    """`pieces` (raw, in corpus order) encoded with `tokenizer`, a document at a time as they are read.

    A piece's `rest` counts the BPE tokens of its document's later pieces that were read (a document
    longer than any split is read only as far as a split can take). When the pieces run out the
    source's total in tokens is set (for the carve's message); when they run out before the source
    does (a split needing more than BYTES_PER_TOKEN_BOUND bytes per token), that is an error."""
    out = PieceSource(pieces=(), name=raw.name, rule=raw.rule, documents=raw.documents,
                      pieces_total=raw.pieces_total, duplicates=raw.duplicates, file_of=raw.file_of,
                      file_text_bytes=raw.file_text_bytes)

    def documents() -> Iterator[list[Piece]]:
        group: list[Piece] = []
        for p in pieces:
            if group and p.doc != group[-1].doc:
                yield group
                group = []
            group.append(p)
        if group:
            yield group

    def batches() -> Iterator[list[list[Piece]]]:
        """Whole documents, about ENCODE_BATCH pieces at a time (the library encodes a batch on all cores)."""
        batch: list[list[Piece]] = []
        held = 0
        for group in documents():
            batch.append(group)
            held += len(group)
            if held >= ENCODE_BATCH:
                yield batch
                batch, held = [], 0
        if batch:
            yield batch

    def encoded() -> Iterator[Piece]:
        count, total, n_bytes = 0, 0, 0
        for batch in batches():
            flat = tokenizer.encode_many([p.ids[1:].tobytes() for group in batch for p in group])
            at = 0
            for group in batch:
                ids, at = flat[at : at + len(group)], at + len(group)
                rest = sum(x.size for x in ids)
                for p, x in zip(group, ids):
                    rest -= x.size
                    count, total, n_bytes = count + 1, total + x.size, n_bytes + p.held - 1
                    yield Piece(p.key, p.doc, p.index, int(x.size), x, p.digest, rest)
        if raw.pieces_total is not None and count < raw.pieces_total:
            raise DataError(
                f"the splits need more than {BYTES_PER_TOKEN_BOUND} bytes per token under this tokenizer (the first "
                f"{count:,} pieces of the order, {n_bytes:,} bytes, make only {total:,} tokens): choose a smaller "
                "vocab_size or smaller splits",
                "data.tokenizer.vocab_size",
            )
        out.tokens = total

    out.pieces = encoded()
    return out


def corpus_source(
    source_cfg: dict, tokenizer: BpeTokenizer, base_dir: Path, seed: int, cap: int | None, targets: dict,
    scratch: ScratchDir,
) -> PieceSource:
    """The pieces a BPE corpus carves, in corpus order, encoded with its trained tokenizer."""
    raw = raw_source(source_cfg, base_dir, seed, cap, targets, scratch)
    return bpe_pieces(raw, raw.pieces, tokenizer)


def _window(source: PieceSource, targets: dict) -> tuple[int, int]:
    """(a, b): val, test and held-out come before position a of the order, train is the pieces [a, b)."""
    try:
        carved = carve(source.pieces, targets)
    except NotEnough as e:
        raise not_enough_error(source, e, targets, True) from None
    return carved.spans["train"]


def _eval_end(source: PieceSource, targets: dict) -> int:
    """a: where train begins under `source`'s counts (only val, test and held-out are read, and one piece)."""
    return _window(source, {**targets, "train": 1})[0]


def _at_rate(raw: PieceSource, order: _Replay, rate: float) -> PieceSource:
    """The raw pieces counted at `rate` bytes per token (end-of-text one token): the carve of a
    tokenizer that compresses exactly that much, without encoding anything."""

    def tokens(n_bytes: int) -> int:
        return -(-n_bytes // rate) if n_bytes else 0

    def scaled() -> Iterator[Piece]:
        for p in order:
            yield p.recount(1 + int(tokens(p.held - 1)), int(tokens(p.rest)))

    return PieceSource(scaled(), raw.name, raw.rule, raw.documents, raw.pieces_total, None, raw.duplicates,
                       raw.file_of, raw.file_text_bytes)


def _texts(order: _Replay, start: int, stop: int) -> Iterator[str]:
    """The text of the pieces [start, stop), one at a time (the trainer counts words as they come)."""
    return (utf8_text(piece.ids[1:].tobytes()) for piece in order.seen.iter_from(start, stop))


def train_on_train_split(
    source_cfg: dict,
    tokenizer_cfg,
    *,
    train_tokens: int,
    val_tokens: int,
    heldout_tokens: int,
    seed: int,
    base_dir: Path,
    max_doc_tokens: int | None = DEFAULT_MAX_DOC_TOKENS,
    test_tokens: int = 0,
    scratch_dir: Path | None = None,
) -> tuple[BpeTokenizer, dict]:
    """(the BPE trained on the train split only, a record of what it was trained on) — see the module docstring.

    `scratch_dir`: where the scratch files go (the step's work folder; the system's temporary folder
    when None), removed when this returns or raises."""
    check_sizes(train_tokens, val_tokens, heldout_tokens, max_doc_tokens, test_tokens)
    cfg = tokenizer_config(tokenizer_cfg)
    targets = split_targets(train_tokens, val_tokens, heldout_tokens, test_tokens)
    cap = None if source_cfg.get("kind") == "synthetic" else max_doc_tokens
    with ScratchDir(scratch_dir) as scratch:
        raw = raw_source(source_cfg, Path(base_dir), seed, cap, targets, scratch)
        return _train(raw, _Replay(raw.pieces, scratch), targets, cfg["vocab_size"], cfg.get("min_frequency", 2))


def _train(raw: PieceSource, order: _Replay, targets: dict, vocab: int, min_frequency: int) -> tuple[BpeTokenizer, dict]:
    # 1. Where val, test and held-out end at the bound (no BPE of this size compresses more): past that, train.
    safe = _eval_end(_at_rate(raw, order, BYTES_PER_TOKEN_BOUND), targets)
    # 2. A sample BPE, trained on the first pieces past that point, estimates the real compression.
    stop, held = safe, 0
    while held < SAMPLE_BYTES and stop < order.read_to(stop + 1):
        held += order.seen[stop].held - 1
        stop += 1
    if stop > safe:
        sample = train_bpe(_texts(order, safe, stop), vocab, min_frequency)
        a_est = _eval_end(bpe_pieces(raw, order, sample), targets)
        n_bytes = order.bytes_of(0, a_est)
        n_tokens = sum(x.size - 1 for at in range(0, a_est, ENCODE_BATCH)
                       for x in sample.encode_many(order.raw(at, min(a_est, at + ENCODE_BATCH))))
        ratio = n_bytes / max(1, n_tokens)
        s = max(0, min(safe, a_est + int(a_est * MARGIN)))
    else:  # nothing past the bound: the source ends first
        ratio, s = 1.0, 0
    # 3. The BPE: trained on the pieces from s to where train ends at a compression well past the estimate.
    try:
        _, e = carve(_at_rate(raw, order, ratio * (1 + MARGIN) + 1).pieces, targets).spans["train"]
    except NotEnough:  # train would end past the source's end at that rate: train on all that is left
        e = order.read_to(1 << 62)
    best, rounds = None, 0
    for rounds in range(1, MAX_ROUNDS + 1):
        e = max(min(e, order.read_to(e)), s + 1)
        if s >= len(order.seen):
            raise DataError(
                f"the source has no pieces left to train the tokenizer on after val and held-out ({len(order.seen):,} pieces)",
                "data.train_tokens",
            )
        tokenizer = train_bpe(_texts(order, s, e), vocab, min_frequency)
        a = _eval_end(bpe_pieces(raw, order, tokenizer), targets)
        if a <= s:  # it saw no val, test or held-out piece
            best = (tokenizer, s, e, a)
            break
        s = min(a + max(1, a // 100), safe) if a < safe else a + max(1, a // 100)  # start past them, again
    if best is None:
        raise DataError(
            f"the tokenizer could not be trained apart from val and held-out in {MAX_ROUNDS} rounds", "data.tokenizer"
        )
    tokenizer, s, e, a = best
    first, last = order.seen[s], order.seen[e - 1]
    unused = sum(1 for token in tokenizer.hf.get_vocab() if token.startswith("<|unused_"))
    record = {
        "learned_vocab": tokenizer.vocab_size - unused,
        "trained_pieces": e - s,
        "trained_bytes": order.bytes_of(s, e),
        "trained_source_documents": order.seen.documents(s, e),
        "first_trained_piece": {"key": first.key, "doc": first.doc, "index": first.index, "name": raw.name(first.doc)},
        "last_trained_piece": {"key": last.key, "doc": last.doc, "index": last.index, "name": raw.name(last.doc)},
        "eval_pieces": a,
        "train_pieces_before_trained": s - a,  # train pieces before the first one it saw (unseen)
        "rounds": rounds,
        "rule": f"trained on the pieces [{s}, {e}) of the corpus order; under it val, test and held-out are the first "
        f"{a} pieces (hepc/data/bpe_training.py)",
    }
    return tokenizer, record


class Unseen:
    """The corpus's check that no val, test or held-out piece is one the BPE was trained on: every one
    comes before the first trained piece in the corpus order. Fed each piece as carving takes it
    (`add`); `result()` raises if one did not, else returns what meta.json records."""

    def __init__(self, tokenizer_dir: Path):
        import json

        self.record = json.loads((Path(tokenizer_dir) / TOKENIZER_META).read_text())
        first, last = self.record["first_trained_piece"], self.record.get("last_trained_piece")
        self.first = (first["key"], first["doc"], first["index"])
        self.last = (last["key"], last["doc"], last["index"]) if last else None
        self.seen = self.train = self.unseen = 0

    def add(self, split: str, piece: Piece) -> None:
        order = piece.order
        if split != "train":
            self.seen += order >= self.first
            return
        self.train += 1  # unseen: before the first piece the BPE was trained on, or after its last
        self.unseen += order < self.first or (self.last is not None and order > self.last)

    def result(self) -> dict:
        if self.seen:  # the tokenizer step and this corpus carved differently: a bug, never a silent leak
            raise RuntimeError(f"{self.seen} val/test/held-out pieces are among those the tokenizer was trained on")
        return {
            "trained_pieces": self.record["trained_pieces"],
            "trained_bytes": self.record["trained_bytes"],
            "learned_vocab": self.record["learned_vocab"],
            "train_pieces": self.train,
            "train_pieces_unseen": self.unseen,
            "val_heldout_unseen": True,
        }
