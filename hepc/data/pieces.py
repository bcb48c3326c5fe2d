"""The pieces of each source kind in corpus order (the split rule of hepc/data/carve.py).

- Files (pystdlib, text): every document is read once, as a stream of UTF-8 chunks: its digest is
  computed over all of it and only its first `room` bytes (what one split can take) are kept, cut into
  pieces, and offered to `Kept` (hepc/data/spill.py: their ids go to a scratch file) when its key is
  known. Never a whole file in memory beyond that.
- Token shards (`tokens`): read one shard at a time; every document's digest is computed over all of
  its ids (a document may span shards) and its first `room` ids are offered to `Kept`, as for files.
- Synthetic: independent draws in stream order, never cut, never duplicated.

Per source document, 32 bytes stay in memory (its digest and size in tokens for the duplicate count,
the end of its name in the names' scratch file); a kept piece's 72-byte index row lies in a scratch
file (hepc/data/spill.py: at most a fixed number of rows in memory).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xxhash

from hepc.data import shards
from hepc.data.carve import Piece, PieceSource, count_duplicates, doc_key, n_pieces
from hepc.data.identity import check_tokens_config, resolve_text_paths
from hepc.data.sources import iter_documents, iter_file_documents
from hepc.data.spill import Kept, Names, Rows, ScratchDir
from hepc.data.tokenizers import Tokenizer, token_dtype

_NO_CAP = 1 << 62  # a piece width that no document reaches
_LOW64 = (1 << 64) - 1
_HASH_IDS = 1 << 18  # ids converted to int64 at a time for a document's digest
_CHUNK = 1 << 14  # document bounds converted to Python ints this many at a time
_DOCS = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("tokens", "<i8")])  # a source document: digest, size in tokens
ORDER_RULE = "documents ordered by a seeded hash of their content"
CARVE_RULE = "val, test, held-out, train carved in that order, whole documents (the one that fills a split cut there)"


def _cap_rule(cap: int | None) -> str:
    return f"pieces of at most {cap} tokens" if cap else "documents uncut"


def read_document(chunks: Iterator[bytes], room: int) -> tuple[int, int, bytes]:
    """(xxh3_128 digest, size in bytes, first `room` bytes) of a document's stream of chunks."""
    h = xxhash.xxh3_128()
    head = bytearray()
    size = 0
    for chunk in chunks:
        if not chunk:
            continue
        h.update(chunk)
        size += len(chunk)
        if len(head) < room:
            head += chunk[: room - len(head)]
    return h.intdigest(), size, bytes(head)


def ids_digest(ids: np.ndarray) -> int:
    """A document of token ids as its content digest: xxh3_128 of the ids as little-endian int64, so the
    same document has the same digest whatever integer type its shard stores."""
    return xxhash.xxh3_128_intdigest(np.ascontiguousarray(ids, dtype="<i8").tobytes())


def file_source(source_cfg: dict, tokenizer: Tokenizer, base_dir: Path, seed: int, cap: int | None,
                targets: dict[str, int], scratch: ScratchDir) -> PieceSource:
    """pystdlib and text: every document read once; only the documents carving may use are kept.

    Piece k of a document holds its bytes [k·w, (k+1)·w) after an end-of-text, w = cap − 1 (the last
    ends with the document; an empty document is one piece, its end-of-text). Sizes are those of the
    bytes tokenizer (one token a byte); a BPE corpus cuts the same pieces and encodes them after."""
    width = _NO_CAP if cap is None else cap - 1
    room = max(max(targets.values()) - 1, 0)  # bytes of a document any one split can use
    kept = Kept(targets, scratch)
    names = Names(scratch.file("names"))
    docs = Rows(_DOCS)
    file_of = array("q")  # each document's file (8 bytes a document, beside the index)
    file_text_bytes: dict[int, int] = {}
    totals = {"pieces": 0, "tokens": 0}
    for doc, (file, name, chunks) in enumerate(iter_file_documents(source_cfg, base_dir)):
        names.append(name)
        digest, size, head = read_document(chunks, room)
        file_of.append(file)
        file_text_bytes[file] = file_text_bytes.get(file, 0) + size
        count = max(1, -(-size // width))
        docs.append((digest >> 64, digest & _LOW64, size + count))
        totals["pieces"] += count
        totals["tokens"] += size + count
        key = doc_key(digest, seed)
        if not kept.wants(key, doc):
            continue
        held = max(1, -(-len(head) // width))  # pieces that hold some of the head (an empty document: one)
        pieces = []
        for k in range(held):
            body = head[k * width : (k + 1) * width]
            tokens = min(width, size - k * width) + 1
            rest = (size + count) - (k * (width + 1) + tokens)  # tokens of the document after this piece
            pieces.append(Piece(key, doc, k, tokens, tokenizer.encode(body), digest, rest))
        kept.add(pieces)
    return PieceSource(
        pieces=kept.pieces(),
        name=names,
        rule=f"{_cap_rule(cap)}; {ORDER_RULE} (xxh3_128 of its UTF-8 bytes); {CARVE_RULE}",
        documents=len(names),
        pieces_total=totals["pieces"],
        tokens=totals["tokens"],
        duplicates=count_duplicates(docs.array, docs.array["tokens"]),
        file_of=np.frombuffer(file_of, dtype=np.int64) if source_cfg.get("kind") == "text" else None,
        file_text_bytes=file_text_bytes if source_cfg.get("kind") == "text" else None,
    )


class _TokenDocument:
    """A document of a token source being read (it may span shards): its digest so far, its first
    `room` ids, its length."""

    def __init__(self, doc: int, room: int):
        self.doc, self.room = doc, room
        self.hash = xxhash.xxh3_128()
        self.head: list[np.ndarray] = []
        self.held = self.length = 0

    def feed(self, ids: np.ndarray) -> None:
        for at in range(0, ids.size, _HASH_IDS):
            self.hash.update(np.ascontiguousarray(ids[at : at + _HASH_IDS], dtype="<i8"))
        if self.held < self.room:
            part = np.array(ids[: self.room - self.held])
            self.head.append(part)
            self.held += part.size
        self.length += ids.size


def tokens_source(source_cfg: dict, base_dir: Path, seed: int, cap: int | None, eot_id: int, targets: dict[str, int],
                  scratch: ScratchDir) -> PieceSource:
    """Token shards, read one at a time: each document's digest over all its ids, its first `room` ids
    (what one split can take) cut into pieces and offered to `Kept` when its key is known."""
    vocab_size, _ = check_tokens_config(source_cfg)
    files = resolve_text_paths(source_cfg, base_dir, "data.source", "paths")
    dtype = token_dtype(vocab_size)
    room = max(targets.values())  # ids of a document any one split can use (its end-of-text is its first)
    eot = np.array([eot_id], dtype=dtype)
    kept = Kept(targets, scratch)
    docs = Rows(_DOCS)
    totals = {"pieces": 0}

    def finish(document: _TokenDocument) -> None:
        digest, length, d = document.hash.intdigest(), document.length, document.doc
        count = n_pieces(length, cap)
        doc_tokens = length + count - 1  # every piece after the first starts with an added end-of-text
        docs.append((digest >> 64, digest & _LOW64, doc_tokens))
        totals["pieces"] += count
        key = doc_key(digest, seed)
        if not kept.wants(key, d):
            return
        head = np.concatenate(document.head).astype(dtype, copy=False)
        if cap is None:
            kept.add([Piece(key, d, 0, length, head, digest, 0)])
            return
        pieces = [Piece(key, d, 0, min(length, cap), head[:cap], digest, doc_tokens - min(length, cap))]
        for k in range(1, count):
            begin = cap + (k - 1) * (cap - 1)  # piece k: an end-of-text, then ids [begin, begin + cap - 1)
            if begin >= head.size:
                break
            tokens = 1 + min(cap - 1, length - begin)
            ids = np.concatenate([eot, head[begin : begin + cap - 1]])
            pieces.append(Piece(key, d, k, tokens, ids, digest, doc_tokens - k * cap - tokens))
        kept.add(pieces)

    current: _TokenDocument | None = None
    for shard in shards.iter_shards(files, vocab_size, "data.source", "paths"):
        shard = np.asarray(shard)  # a plain view of a memory-mapped shard: slicing a memmap costs more
        cuts = np.flatnonzero(shard == eot_id)  # every end-of-text starts a document
        first = int(cuts[0]) if cuts.size else shard.size
        if first:  # ids before the shard's first end-of-text: the open document's, or (the stream's start) a document
            if current is None:
                current = _TokenDocument(0, room)
            current.feed(shard[:first])
        for at in range(0, cuts.size, _CHUNK):
            chunk = cuts[at : at + _CHUNK + 1].tolist()
            ends = chunk[1:] if len(chunk) > _CHUNK else chunk[1:] + [shard.size]
            for begin, end in zip(chunk, ends):
                if current is not None:
                    finish(current)
                current = _TokenDocument(len(docs), room)
                current.feed(shard[begin:end])
        del shard, cuts
    if current is not None:
        finish(current)
    return PieceSource(
        pieces=kept.pieces(),
        name=lambda d: f"document {d} of the train shards",
        rule=f"{_cap_rule(cap)}; {ORDER_RULE} (xxh3_128 of its token ids as int64); {CARVE_RULE}",
        documents=len(docs),
        pieces_total=totals["pieces"],
        tokens=int(docs.array["tokens"].sum()),
        duplicates=count_duplicates(docs.array, docs.array["tokens"]),
    )


def synthetic_source(source_cfg: dict, tokenizer: Tokenizer, seed: int) -> PieceSource:
    """Endless independent documents: the stream order is the corpus order; never cut."""
    docs = iter_documents(source_cfg, Path("."), seed)

    def pieces() -> Iterator[Piece]:
        for i, document in enumerate(docs):
            ids = tokenizer.encode(document)
            yield Piece(i, i, 0, ids.size, ids, i)

    return PieceSource(
        pieces=pieces(),
        name=lambda d: f"document {d}",
        rule=f"whole documents in stream order (independent draws); {CARVE_RULE}",
        duplicates={"documents": 0, "tokens": 0},
    )

