"""Pre-tokenized shards (source `tokens`, tokenizer `none`): read, check, split into documents.

Formats, by suffix:
- `.npy`: a 1-D integer array (memory-mapped, pickles refused).
- `.bin`: nanoGPT's raw little-endian uint16 ids with no header; or, when the first int32 is
  20240520, the llm.c / modded-nanogpt / Slowrun layout: a header of 256 int32 (magic, version 1,
  number of tokens) and then that many uint16 ids. A raw file is read as headered only if it
  starts with the ids 54856, 308, which cannot happen below vocab 54857 (GPT-2: 50257).
- `.pt`: a tensor saved with torch.save (or a dict holding exactly one tensor), any shape,
  flattened in C order; torch is imported only when such a file is read.

The train shards, in sorted name order, form one stream split at every end-of-text: each document
starts with its EOT, and tokens before the first EOT form a document of their own. The corpus step
reads them one shard at a time (`iter_shards`; hepc/data/pieces.py follows documents across shard
ends), so its memory is one shard; `iter_documents` concatenates them into one array of the corpus
dtype and yields its documents in shuffled order as views of that array. Ids outside [0,
vocab_size) are an error, found with a vectorised min / max per shard.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hepc.data.identity import DataError, check_tokens_config, resolve_text_paths
from hepc.data.tokenizers import token_dtype

HEADER_MAGIC = 20240520
HEADER_VERSION = 1
HEADER_INTS = 256
_CHUNK_DOCS = 1 << 14  # document bounds converted to Python ints this many at a time


def has_val_paths(source_cfg: dict) -> bool:
    """Whether val comes from the source's own validation shards instead of being carved."""
    return source_cfg.get("kind") == "tokens" and source_cfg.get("val_paths") is not None


def iter_documents(source_cfg: dict, base_dir: Path, seed: int, field: str = "data.source") -> Iterator[np.ndarray]:
    """The train shards' documents in corpus order (shuffled with `seed`), as views of one id array.

    The shards are read now, so that their errors surface before the first document is asked for.
    """
    vocab_size, eot_id = check_tokens_config(source_cfg, field)
    files = resolve_text_paths(source_cfg, base_dir, field, "paths")
    stream = read_stream(files, vocab_size, field, "paths")
    starts = document_starts(stream, eot_id)
    ends = np.append(starts[1:], stream.size)
    order = np.random.default_rng(seed).permutation(starts.size)
    return _views(stream, starts, ends, order)


def _views(stream: np.ndarray, starts: np.ndarray, ends: np.ndarray, order: np.ndarray) -> Iterator[np.ndarray]:
    for at in range(0, order.size, _CHUNK_DOCS):
        chunk = order[at : at + _CHUNK_DOCS]
        for start, end in zip(starts[chunk].tolist(), ends[chunk].tolist()):
            yield stream[start:end]


def read_val(source_cfg: dict, base_dir: Path, val_tokens: int, field: str = "data.source") -> np.ndarray:
    """The first `val_tokens` ids of the concatenated validation shards (not shuffled; later shards unread)."""
    vocab_size, _ = check_tokens_config(source_cfg, field)
    files = resolve_text_paths(source_cfg, base_dir, field, "val_paths")
    train = {path for _, path in resolve_text_paths(source_cfg, base_dir, field, "paths")}
    shared = [name for name, path in files if path in train]
    if shared:
        raise DataError(f"'{shared[0]}' is also a training shard (listed by paths); val would be trained on", f"{field}.val_paths")
    val = read_stream(files, vocab_size, field, "val_paths", limit=val_tokens)
    if val.size < val_tokens:
        raise DataError(f"the val_paths shards hold only {val.size:,} tokens; val_tokens asks for {val_tokens:,}", "data.val_tokens")
    return val


def document_starts(ids: np.ndarray, eot_id: int) -> np.ndarray:
    """Offsets (int64) where documents start: every EOT, and 0 when the ids do not begin with one."""
    starts = np.flatnonzero(ids == eot_id)
    if ids.size and (starts.size == 0 or starts[0] != 0):
        starts = np.concatenate([np.zeros(1, starts.dtype), starts])
    return starts.astype(np.int64, copy=False)


def read_stream(
    files: list[tuple[str, Path]], vocab_size: int, field: str, key: str, limit: int | None = None
) -> np.ndarray:
    """The shards' ids concatenated in order, as one array of the corpus dtype (at most `limit` ids)."""
    shards: list[tuple[str, np.ndarray]] = []
    total = 0
    for name, path in files:
        if limit is not None and total >= limit:
            break
        ids = open_shard(path, name, f"{field}.{key}")
        if limit is not None:
            ids = ids[: limit - total]
        shards.append((name, ids))
        total += ids.size
    out = np.empty(total, dtype=token_dtype(vocab_size))
    at = 0
    while shards:
        name, ids = shards.pop(0)  # dropped once copied: a loaded .pt tensor is freed early
        _check_range(ids, name, vocab_size, field)
        out[at : at + ids.size] = ids
        at += ids.size
    return out


def iter_shards(files: list[tuple[str, Path]], vocab_size: int, field: str, key: str) -> Iterator[np.ndarray]:
    """The shards' ids one shard at a time (memory: one shard), each checked as `read_stream` checks it
    and with its errors in the same order: every shard is opened first (a `.pt` shard is loaded then,
    dropped, and loaded again when its turn comes), then each is range-checked as it is yielded."""
    where = f"{field}.{key}"
    for name, path in files:
        open_shard(path, name, where)
    for name, path in files:
        ids = open_shard(path, name, where)
        _check_range(ids, name, vocab_size, field)
        yield ids
        del ids


def _check_range(ids: np.ndarray, name: str, vocab_size: int, field: str) -> None:
    if not ids.size:
        return
    if (ids.dtype.kind == "i" and ids.min() < 0) or ids.max() >= vocab_size:
        at = int(np.flatnonzero((ids < 0) | (ids >= vocab_size))[0])
        raise DataError(
            f"'{name}' holds id {int(ids[at])} at token {at:,}; ids must be in [0, vocab_size = {vocab_size})",
            f"{field}.vocab_size",
        )


def open_shard(path: Path, name: str, where: str) -> np.ndarray:
    """A shard's ids as a 1-D integer array (memory-mapped for .npy and .bin); `where` is the field for errors."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        ids = _open_npy(path, name, where)
    elif suffix == ".bin":
        ids = _open_bin(path, name, where)
    elif suffix == ".pt":
        ids = _open_pt(path, name, where)
    else:
        raise DataError(f"'{name}': unknown shard format {suffix or '(no suffix)'!r} (expected .npy, .bin or .pt)", where)
    if ids.dtype.kind not in "iu":
        raise DataError(f"'{name}' holds {ids.dtype} values; token ids must be integers", where)
    return ids


def _open_npy(path: Path, name: str, where: str) -> np.ndarray:
    try:
        ids = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read '{name}' as a .npy array: {e}", where) from None
    if not isinstance(ids, np.ndarray) or ids.ndim != 1:
        shape = getattr(ids, "shape", type(ids).__name__)
        raise DataError(f"'{name}' must hold a 1-D array of token ids (got shape {shape})", where)
    return ids


def _open_bin(path: Path, name: str, where: str) -> np.ndarray:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER_INTS * 4)
    offset = 0
    if len(head) >= 4 and int.from_bytes(head[:4], "little", signed=True) == HEADER_MAGIC:
        if len(head) < HEADER_INTS * 4:
            raise DataError(f"'{name}' starts with the shard magic {HEADER_MAGIC} but its 1024-byte header is cut short", where)
        header = np.frombuffer(head, dtype="<i4")
        version, n = int(header[1]), int(header[2])
        if version != HEADER_VERSION:
            raise DataError(f"'{name}': header version {version} is not supported (only {HEADER_VERSION}: uint16 ids)", where)
        offset = HEADER_INTS * 4
        if n < 0 or size != offset + 2 * n:
            raise DataError(f"'{name}': the header says {n:,} tokens but the file holds {(size - offset) / 2:,} after it", where)
    elif size % 2:
        raise DataError(f"'{name}' has an odd size ({size:,} bytes); a raw .bin shard is uint16 ids", where)
    n = (size - offset) // 2
    if n == 0:
        return np.zeros(0, dtype="<u2")
    return np.memmap(path, dtype="<u2", mode="r", offset=offset, shape=(n,))


def _open_pt(path: Path, name: str, where: str) -> np.ndarray:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises a variety of errors on bad or unsafe files
        raise DataError(f"cannot load '{name}' with torch.load(weights_only=True): {e}", where) from None
    if isinstance(obj, dict):
        tensors = [value for value in obj.values() if isinstance(value, torch.Tensor)]
        if len(tensors) != 1:
            raise DataError(f"'{name}' holds a dict with {len(tensors)} tensors; a .pt shard needs exactly one", where)
        obj = tensors[0]
    if not isinstance(obj, torch.Tensor):
        raise DataError(f"'{name}' holds a {type(obj).__name__}, not a tensor of token ids", where)
    if obj.dtype == torch.bool or obj.is_floating_point() or obj.is_complex():
        raise DataError(f"'{name}' holds {obj.dtype} values; token ids must be integers", where)
    try:
        return obj.detach().contiguous().reshape(-1).numpy()
    except (TypeError, RuntimeError) as e:
        raise DataError(f"'{name}': cannot convert its {obj.dtype} tensor to numpy: {e}", where) from None
