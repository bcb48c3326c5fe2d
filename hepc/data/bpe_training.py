"""A BPE tokenizer trained on the train split only, and the corpus pieces it tokenizes.

The split rule (hepc/data/carve.py) orders a source's documents and carves val, test, held-out and
train from that order by their sizes in tokens, so which documents train takes depends on the
tokenizer, and the tokenizer is to be trained on train alone. The pieces are therefore fixed before
any BPE exists: a document is cut every `max_doc_tokens - 1` *bytes* (each piece then has at most
`max_doc_tokens` BPE tokens, its end-of-text included), and the pieces are ordered exactly as for
the `bytes` tokenizer (same keys, same order). Then, in rounds:

1. Round 0 carves the order with byte counts (the bytes tokenizer's carve): train is a window
   [s, e) of the order.
2. A BPE is trained on the text of the pieces [s, e); the order is carved again with its token
   counts, giving val + test + held-out = the pieces before a, train = [a, b).
3. If a > s, the BPE saw val, test or held-out pieces: s moves past a (by 1% of a, at least one piece,
   so that a retrained BPE that compresses val a little worse still fits), e to b, and again
   from step 2. Otherwise it is valid, and the closer [s, e) is to its own train split [a, b)
   the better: done when they differ by at most 2% of train's pieces (at least one) or [a, b)
   was tried already; else [s, e) = [a, b) (b moved on by its last growth: a BPE that sees more
   of train compresses it more, so train takes more pieces) and again from step 2.
The best valid BPE is kept; none after MAX_ROUNDS rounds is an error. A few rounds in practice.

The corpus step tokenizes with the final BPE and carves the same order with the same counts, so it
gets the same a; it checks that every val, test and held-out piece comes before the first piece the
BPE was trained on and records the check in meta.json. The BPE saw the pieces [s, e): never val, test
or held-out, usually all of train but a few pieces, perhaps a few past train's end (the record says
how many of each). Everything is deterministic: the same source, split rule and config give the
same tokenizer.json.

Memory: the pieces are collected as for the bytes tokenizer, with each split's size taken as
`BYTES_PER_TOKEN_BOUND` bytes per token; a split that needs more bytes per token than that is an
error that says so (no natural-language BPE comes near it).
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
from hepc.data.tokenizers import BpeTokenizer, tokenizer_config, train_bpe, utf8_text

BYTES_PER_TOKEN_BOUND = 8
MAX_ROUNDS = 8
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
    """An iterable over a one-shot stream of pieces that keeps what it has read: every iteration
    starts from the first piece (the synthetic source is endless: read only as far as asked)."""

    def __init__(self, pieces):
        self._stream, self.seen = iter(pieces), []

    def __iter__(self) -> Iterator[Piece]:
        i = 0
        while True:
            if i == len(self.seen):
                piece = next(self._stream, None)
                if piece is None:
                    return
                self.seen.append(piece)
            yield self.seen[i]
            i += 1

    def read_to(self, n: int) -> int:
        """Read until `n` pieces are held (or the stream ends); how many are held."""
        for _ in zip(range(n), self):
            pass
        return len(self.seen)


def raw_source(source_cfg: dict, base_dir: Path, seed: int, cap: int | None, targets: dict) -> PieceSource:
    """The source's pieces in corpus order as UTF-8 bytes, enough for splits of `targets` BPE tokens."""
    kind = source_cfg.get("kind")
    if kind == "tokens":
        raise DataError("must be 'none' for a pre-tokenized source (got a bpe tokenizer)", "data.tokenizer")
    if kind == "synthetic":
        return synthetic_source(source_cfg, _RawBytes(), seed)
    scaled = {name: n * BYTES_PER_TOKEN_BOUND for name, n in targets.items()}
    raw = file_source(source_cfg, _RawBytes(), base_dir, seed, cap, scaled)
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
                      pieces_total=raw.pieces_total, duplicates=raw.duplicates)

    def documents() -> Iterator[list[Piece]]:
        group: list[Piece] = []
        for p in pieces:
            if group and p.doc != group[-1].doc:
                yield group
                group = []
            group.append(p)
        if group:
            yield group

    def encoded() -> Iterator[Piece]:
        count, total, n_bytes = 0, 0, 0
        for group in documents():
            ids = [tokenizer.encode(p.ids[1:].tobytes()) for p in group]
            rest = sum(x.size for x in ids)
            for p, x in zip(group, ids):
                rest -= x.size
                count, total, n_bytes = count + 1, total + x.size, n_bytes + p.ids.size - 1
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
    source_cfg: dict, tokenizer: BpeTokenizer, base_dir: Path, seed: int, cap: int | None, targets: dict
) -> PieceSource:
    """The pieces a BPE corpus carves, in corpus order, encoded with its trained tokenizer."""
    raw = raw_source(source_cfg, base_dir, seed, cap, targets)
    return bpe_pieces(raw, raw.pieces, tokenizer)


def _window(source: PieceSource, targets: dict) -> tuple[int, int]:
    """(a, b): val, test and held-out come before position a of the order, train is the pieces [a, b)."""
    try:
        carved = carve(source.pieces, targets)
    except NotEnough as e:
        raise not_enough_error(source, e, targets, True) from None
    return carved.spans["train"]


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
) -> tuple[BpeTokenizer, dict]:
    """(the BPE trained on the train split only, a record of what it was trained on) — see the module docstring."""
    check_sizes(train_tokens, val_tokens, heldout_tokens, max_doc_tokens, test_tokens)
    cfg = tokenizer_config(tokenizer_cfg)
    targets = split_targets(train_tokens, val_tokens, heldout_tokens, test_tokens)
    cap = None if source_cfg.get("kind") == "synthetic" else max_doc_tokens
    raw = raw_source(source_cfg, Path(base_dir), seed, cap, targets)
    order = _Replay(raw.pieces)
    byte_counts = PieceSource(order, raw.name, raw.rule, raw.documents, raw.pieces_total, raw.tokens, raw.duplicates)
    s, e = _window(byte_counts, targets)
    best, tried = None, set()
    for rounds in range(1, MAX_ROUNDS + 1):
        e = min(e, order.read_to(e))
        if s >= e:
            raise DataError(
                f"the source has no pieces left to train the tokenizer on after val and held-out ({len(order.seen):,} pieces)",
                "data.train_tokens",
            )
        tried.add((s, e))
        texts = [utf8_text(order.seen[i].ids[1:].tobytes()) for i in range(s, e)]
        tokenizer = train_bpe(texts, cfg["vocab_size"], cfg.get("min_frequency", 2))
        a, b = _window(bpe_pieces(raw, order, tokenizer), targets)
        if a > s:  # it saw val, test or held-out pieces: start past them
            s = a + max(1, a // 100)
            e = max(b, s + 1)
            continue
        mismatch = (s - a) + abs(e - b)  # train pieces it did not see + pieces past train's end it saw
        if best is None or mismatch <= best[0]:
            best = (mismatch, tokenizer, s, e, a, b, rounds)
        if (a, b) in tried or mismatch <= max(1, (b - a) // 50):
            break
        s, e = a, b + max(b - e, 0)  # train grows as the BPE sees more of it: look ahead by the last growth
    if best is None:
        raise DataError(
            f"the tokenizer could not be trained apart from val and held-out in {MAX_ROUNDS} rounds", "data.tokenizer"
        )
    _, tokenizer, s, e, a, b, rounds = best
    first = order.seen[s]
    unused = sum(1 for token in tokenizer.hf.get_vocab() if token.startswith("<|unused_"))
    record = {
        "learned_vocab": tokenizer.vocab_size - unused,
        "trained_pieces": e - s,
        "trained_bytes": int(sum(order.seen[i].ids.size - 1 for i in range(s, e))),
        "trained_source_documents": len({order.seen[i].doc for i in range(s, e)}),
        "first_trained_piece": {"key": first.key, "doc": first.doc, "index": first.index, "name": raw.name(first.doc)},
        "eval_pieces": a,
        "train_pieces": b - a,
        "train_pieces_unseen": (s - a) + max(0, b - e),  # train pieces the BPE did not see
        "pieces_past_train_seen": max(0, e - b),  # pieces after train's end (in no split) it saw
        "rounds": rounds,
        "rule": f"trained on the pieces [{s}, {e}) of the corpus order; under it val and held-out are the first {a} "
        f"pieces and train the pieces [{a}, {b}) (hepc/data/bpe_training.py)",
    }
    return tokenizer, record


def check_unseen(taken: dict, tokenizer_dir: Path) -> dict:
    """The corpus's check that no val, test or held-out piece is one the BPE was trained on: every
    one comes before the first trained piece in the corpus order. Returns what meta.json records."""
    import json

    record = json.loads((Path(tokenizer_dir) / TOKENIZER_META).read_text())
    first = record["first_trained_piece"]
    bound = (first["key"], first["doc"], first["index"])
    seen = [piece.order for name in ("val", "test", "heldout") for piece, _ in taken[name] if piece.order >= bound]
    if seen:  # the tokenizer step and this corpus carved differently: a bug, never a silent leak
        raise RuntimeError(f"{len(seen)} val/test/held-out pieces are among those the tokenizer was trained on")
    return {
        "trained_pieces": record["trained_pieces"],
        "trained_bytes": record["trained_bytes"],
        "learned_vocab": record["learned_vocab"],
        "train_pieces_unseen": record["train_pieces_unseen"],
        "val_heldout_unseen": True,
    }
