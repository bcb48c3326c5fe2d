"""The pieces of each source kind in corpus order (the split rule of hepc/data/carve.py).

- Files (pystdlib, text): every document is read once, as a stream of UTF-8 chunks: its digest is
  computed over all of it and only its first `room` bytes (what one split can take) are kept, cut into
  pieces, and offered to `Kept` when its key is known. Never a whole file in memory beyond that.
- Token shards (`tokens`): the shards are in memory already; every document's digest and key at once,
  pieces made as carving asks for them.
- Synthetic: independent draws in stream order, never cut, never duplicated.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xxhash

from hepc.data import shards
from hepc.data.carve import Kept, Piece, PieceSource, count_duplicates, doc_keys
from hepc.data.identity import check_tokens_config, resolve_text_paths
from hepc.data.sources import iter_documents, iter_file_documents
from hepc.data.tokenizers import Tokenizer

_NO_CAP = 1 << 62  # a piece width that no document reaches
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
                targets: dict[str, int]) -> PieceSource:
    """pystdlib and text: every document read once; only the documents carving may use are kept.

    Piece k of a document holds its bytes [k·w, (k+1)·w) after an end-of-text, w = cap − 1 (the last
    ends with the document; an empty document is one piece, its end-of-text). Sizes are those of the
    bytes tokenizer (one token a byte); a BPE corpus cuts the same pieces and encodes them after."""
    width = _NO_CAP if cap is None else cap - 1
    room = max(max(targets.values()) - 1, 0)  # bytes of a document any one split can use
    kept = Kept(targets)
    names: list[str] = []
    digests: list[int] = []
    sizes: list[int] = []
    file_of = array("q")  # each document's file
    file_text_bytes: dict[int, int] = {}
    totals = {"pieces": 0, "tokens": 0}
    for doc, (file, name, chunks) in enumerate(iter_file_documents(source_cfg, base_dir)):
        names.append(name)
        digest, size, head = read_document(chunks, room)
        file_of.append(file)
        file_text_bytes[file] = file_text_bytes.get(file, 0) + size
        count = max(1, -(-size // width))
        digests.append(digest)
        sizes.append(size + count)
        totals["pieces"] += count
        totals["tokens"] += size + count
        key = int(doc_keys([digest], seed)[0])
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
        name=names.__getitem__,
        rule=f"{_cap_rule(cap)}; {ORDER_RULE} (xxh3_128 of its UTF-8 bytes); {CARVE_RULE}",
        documents=len(names),
        pieces_total=totals["pieces"],
        tokens=totals["tokens"],
        duplicates=count_duplicates(digests, sizes),
        file_of=file_of.__getitem__ if source_cfg.get("kind") == "text" else None,
        file_text_bytes=file_text_bytes if source_cfg.get("kind") == "text" else None,
    )


def tokens_source(source_cfg: dict, base_dir: Path, seed: int, cap: int | None, eot_id: int) -> PieceSource:
    """Token shards (in memory already): every document's key at once, sorted; pieces made as carving asks."""
    vocab_size, _ = check_tokens_config(source_cfg)
    stream = shards.read_stream(resolve_text_paths(source_cfg, base_dir, "data.source", "paths"), vocab_size, "data.source", "paths")
    starts = shards.document_starts(stream, eot_id)
    lengths = np.diff(np.append(starts, stream.size))
    digests = [ids_digest(stream[s : s + n]) for s, n in zip(starts.tolist(), lengths.tolist())]
    keys_of_doc = doc_keys(digests, seed) if digests else np.zeros(0, dtype=np.uint64)
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
    doc_tokens = lengths + counts - 1  # every piece after the first starts with an added end-of-text
    keys = keys_of_doc[doc]
    order = np.lexsort((index, doc, keys))
    eot = np.array([eot_id], dtype=stream.dtype)

    def pieces() -> Iterator[Piece]:
        for i in order.tolist():
            d, k, ids = int(doc[i]), int(index[i]), stream[begin[i] : end[i]]
            if k:
                ids = np.concatenate([eot, ids])
            before = k * cap if k else 0  # pieces 0..k-1 are full: cap tokens each
            rest = int(doc_tokens[d]) - before - int(ids.size)
            yield Piece(int(keys[i]), d, k, int(ids.size), ids, digests[d], rest)

    return PieceSource(
        pieces=pieces(),
        name=lambda d: f"document {d} of the train shards",
        rule=f"{_cap_rule(cap)}; {ORDER_RULE} (xxh3_128 of its token ids as int64); {CARVE_RULE}",
        documents=int(starts.size),
        pieces_total=int(doc.size),
        tokens=int(doc_tokens.sum()),
        duplicates=count_duplicates(digests, doc_tokens.tolist()),
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

