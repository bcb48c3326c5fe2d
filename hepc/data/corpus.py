"""Build a corpus: read a source's documents, cut them into pieces, carve val, test, held-out and train.

The split rule is hepc/data/carve.py (whole documents ordered by a seeded hash of their content,
duplicates dropped, carved in that order); the pieces of each source kind come from
hepc/data/pieces.py, and a BPE corpus's from hepc/data/bpe_training.py. docs/data-splits.md has the
rule with measured figures.

A `tokens` source with `val_paths` brings its own val: the first val_tokens ids of its validation
shards, unshuffled; then nothing is carved for val and the documents fill test, held-out and train.

Outputs: `<split>.npy` (token ids) and `<split>_docs.npy` (start offsets of its pieces) for every
split (test empty when test_tokens is 0), and meta.json: sizes, bytes per token, per-split documents
and their largest documents with the largest one's share, duplicates dropped, tokens dropped where
documents were cut; for a text source, the tokens each split takes from each file (`tokens_by_file`,
by the file's index in `source.files`) and the UTF-8 bytes of each file's documents
(`file_text_bytes`), from which `hepc data` gives each split's share of the files' compressed and
decompressed bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hepc.data import shards, synthetic
from hepc.data.carve import (
    DEFAULT_MAX_DOC_TOKENS,
    SPLITS,
    NotEnough,
    carve,
    check_sizes,
    not_enough_error,
    split_stats,
    split_targets,
)
from hepc.data.identity import source_identity
from hepc.data.pieces import file_source, synthetic_source, tokens_source
from hepc.data.tokenizers import make_tokenizer, token_dtype

__all__ = ["DEFAULT_MAX_DOC_TOKENS", "SPLITS", "build_corpus"]


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
    test_tokens: int = 0,
    tokenizer_dir: Path | None = None,
) -> dict:
    """Write every split's token arrays, their `*_docs.npy` offsets and meta.json to out_dir; return the meta.

    `tokenizer_dir`: the committed `tokenizer` step of a `bpe` tokenizer (hepc/data/bpe_training.py)."""
    check_sizes(train_tokens, val_tokens, heldout_tokens, max_doc_tokens, test_tokens)
    tokenizer = make_tokenizer(tokenizer_cfg, source_cfg, trained=tokenizer_dir)
    bpe = tokenizer.config.get("kind") == "bpe"
    identity = source_identity(source_cfg, Path(base_dir))
    given_val = shards.read_val(source_cfg, Path(base_dir), val_tokens) if shards.has_val_paths(source_cfg) else None
    targets = split_targets(train_tokens, 0 if given_val is not None else val_tokens, heldout_tokens, test_tokens)
    kind = source_cfg.get("kind")
    cap = None if kind == "synthetic" else max_doc_tokens
    if bpe:  # pieces cut in bytes, ordered as for `bytes`, then encoded
        from hepc.data import bpe_training

        source = bpe_training.corpus_source(source_cfg, tokenizer, Path(base_dir), seed, cap, targets)
    elif kind == "synthetic":
        source = synthetic_source(source_cfg, tokenizer, seed)
    elif kind == "tokens":
        source = tokens_source(source_cfg, Path(base_dir), seed, cap, tokenizer.eot_id)
    else:
        source = file_source(source_cfg, tokenizer, Path(base_dir), seed, cap, targets)

    try:
        carved = carve(source.pieces, targets)
    except NotEnough as e:
        raise not_enough_error(source, e, targets, given_val is None) from None
    taken = carved.taken
    trained_on = bpe_training.check_unseen(taken, tokenizer_dir) if bpe else None

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    arrays, starts, splits = {}, {}, {}
    for name in SPLITS:
        parts = [piece.ids[:n] for piece, n in taken[name]]
        arrays[name] = np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
        starts[name] = _offsets([n for _, n in taken[name]])
        splits[name] = split_stats([(source.name(piece.doc), n) for piece, n in taken[name]])
        splits[name]["tokens_dropped"] = carved.dropped[name]  # the rest of the document that filled it
        if source.file_of is not None:
            splits[name]["tokens_by_file"] = _tokens_by_file(taken[name], source.file_of)
    if given_val is not None:
        arrays["val"] = given_val
        starts["val"] = shards.document_starts(given_val, tokenizer.eot_id)
        bounds = np.append(starts["val"], given_val.size)
        splits["val"] = split_stats([(f"val_paths document {j}", int(n)) for j, n in enumerate(np.diff(bounds))])
        splits["val"]["tokens_dropped"] = 0
    names = {name: splits[name].pop("names") for name in SPLITS}
    for name in SPLITS:
        others = set().union(*(names[other] for other in SPLITS if other != name))
        splits[name]["source_documents_in_other_splits"] = len(names[name] & others)  # 0: the rule's check
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
        "tokens_dropped": sum(carved.dropped.values()),
        "max_doc_tokens": cap,
        "split_rule": source.rule,
        "source_documents": source.documents,
        "source_pieces": source.pieces_total,
        "source_tokens": source.tokens,
        "duplicates": source.duplicates,
        "splits": splits,
        "digests": {name: _array_digest(arrays[name]) for name in SPLITS if arrays[name].size},  # what compare guards
        "source": identity,
    }
    if source.file_text_bytes is not None:  # what `hepc data` weighs each file's compressed and decompressed bytes by
        meta["file_text_bytes"] = [source.file_text_bytes.get(i, 0) for i in range(len(identity.get("files") or []))]
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


def _tokens_by_file(taken, file_of) -> list[list[int]]:
    """[[file index, tokens the split takes from its documents], ...] of the files a split draws on, by index."""
    tokens: dict[int, int] = {}
    for piece, n in taken:
        file = file_of(piece.doc)
        tokens[file] = tokens.get(file, 0) + n
    return [[file, n] for file, n in sorted(tokens.items())]


def _array_digest(array: np.ndarray) -> str:
    """xxh3_128 of a split's token ids (their values, whatever the dtype): equal digests = the same split."""
    import xxhash

    return xxhash.xxh3_128_hexdigest(np.ascontiguousarray(array, dtype=np.int64).tobytes())


def _offsets(lengths: list[int]) -> np.ndarray:
    """Start offsets (int64) of consecutive pieces of these lengths."""
    if not lengths:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64)]).astype(np.int64)
