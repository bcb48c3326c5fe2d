"""Build a corpus: tokenize a source's shuffled documents and carve val, heldout and train.

Documents are taken in order and each split is filled in turn: val (val_tokens), then heldout
(heldout_tokens), then train (train_tokens - heldout_tokens: heldout is carved out of the train
budget and never trained on). The document that crosses a split's size is cut so the split is
exact, and the rest of it is dropped, so no document (or part of one) is in two splits. Because
val and heldout come first, a larger train_tokens keeps val and heldout and extends train.

A `tokens` source with `val_paths` brings its own val: the first val_tokens ids of its validation
shards, unshuffled; then nothing is carved for val and the documents fill heldout and train.

No split takes more of a document than its size, so with the bytes tokenizer only that many bytes
of each text document are kept (a `Prefix`), whatever the size of its file; the rest is counted
(tokens_dropped) but never held in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hepc.data import shards, synthetic
from hepc.data.identity import DataError, source_identity
from hepc.data.sources import Prefix, iter_documents
from hepc.data.tokenizers import BytesTokenizer, Tokenizer, make_tokenizer, token_dtype

SPLITS = ("val", "heldout", "train")


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
) -> dict:
    """Write train/heldout/val token arrays, train_docs offsets and meta.json to out_dir; return the meta."""
    _check_sizes(train_tokens, val_tokens, heldout_tokens)
    tokenizer = make_tokenizer(tokenizer_cfg, source_cfg)
    identity = source_identity(source_cfg, Path(base_dir))
    given_val = shards.read_val(source_cfg, Path(base_dir), val_tokens) if shards.has_val_paths(source_cfg) else None
    targets = {"val": val_tokens if given_val is None else 0, "heldout": heldout_tokens, "train": train_tokens - heldout_tokens}
    documents = _tokenized(source_cfg, tokenizer, Path(base_dir), seed, max(targets.values()))
    needed = (
        f"{val_tokens + train_tokens:,} (val {val_tokens:,} + train {train_tokens:,}, heldout included in train)"
        if given_val is None
        else f"{train_tokens:,} (train, heldout included; val comes from val_paths)"
    )

    pieces: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    seen_tokens = dropped = 0
    for name in SPLITS:
        filled = 0
        while filled < targets[name]:
            doc, doc_tokens = next(documents, (None, 0))
            if doc is None:
                raise DataError(
                    f"the source has only {seen_tokens:,} tokens; the splits need {needed} "
                    f"plus the {dropped:,} dropped where documents were cut at split ends",
                    "data.train_tokens",
                )
            seen_tokens += doc_tokens
            piece = doc[: targets[name] - filled]
            dropped += doc_tokens - len(piece)
            pieces[name].append(piece)
            filled += len(piece)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    arrays = {name: np.concatenate(pieces[name]).astype(dtype, copy=False) if pieces[name] else np.zeros(0, dtype) for name in SPLITS}
    n_docs = {name: len(pieces[name]) for name in SPLITS}
    if given_val is not None:
        arrays["val"] = given_val
        n_docs["val"] = int(shards.document_starts(given_val, tokenizer.eot_id).size)
    for name in SPLITS:
        np.save(out_dir / f"{name}.npy", arrays[name])
    lengths = np.array([len(p) for p in pieces["train"]], dtype=np.int64)
    np.save(out_dir / "train_docs.npy", np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else lengths)

    n_bytes, bytes_per_token = {}, {}
    for name in SPLITS:
        n_bytes[name], bytes_per_token[name] = tokenizer.byte_stats(arrays[name])
    meta = {
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": dtype.name,
        "tokenizer": tokenizer.config,
        "seed": seed,
        "tokens": {name: int(arrays[name].size) for name in SPLITS},
        "bytes": n_bytes,
        "bytes_per_token": bytes_per_token,
        "documents": n_docs,
        "tokens_dropped": dropped,
        "source": identity,
    }
    if source_cfg.get("kind") == "tokens":
        meta["bytes_note"] = "pre-tokenized: bytes = tokens x the configured bytes_per_token (null when not given)"
    if source_cfg.get("kind") == "synthetic":
        meta.update(synthetic.entropy_meta(source_cfg))
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _tokenized(
    source_cfg: dict, tokenizer: Tokenizer, base_dir: Path, seed: int, longest: int
) -> Iterator[tuple[np.ndarray, int]]:
    """(ids, the document's full length in tokens) of each document in corpus order.

    `longest` is the most tokens any split takes from one document. With the bytes tokenizer (one
    end-of-text token, then one token per byte) a document's first `longest - 1` bytes are all that
    can be used, so text sources read no more (a `Prefix`); the bytes left out count one token each.
    """
    limit = max(longest - 1, 0) if isinstance(tokenizer, BytesTokenizer) else None
    for doc in iter_documents(source_cfg, base_dir, seed, limit=limit):
        if isinstance(doc, Prefix):
            ids = tokenizer.encode(doc.data)
            yield ids, ids.size + doc.size - len(doc.data)
        else:
            ids = tokenizer.encode(doc)
            yield ids, ids.size


def _check_sizes(train_tokens: int, val_tokens: int, heldout_tokens: int) -> None:
    for field, value in (("train_tokens", train_tokens), ("val_tokens", val_tokens), ("heldout_tokens", heldout_tokens)):
        if int(value) != value or value < 0:
            raise DataError(f"must be a non-negative integer (got {value})", f"data.{field}")
    if heldout_tokens >= train_tokens:
        raise DataError(f"must be < train_tokens (got {heldout_tokens} >= {train_tokens})", "data.heldout_tokens")
