"""Documents from a data source, in the corpus's shuffled order, read lazily.

Each document is UTF-8 bytes, except for the pre-tokenized `tokens` source, whose documents are
already token ids (see shards.py: its shards are read whole and split at end-of-text, and the
documents shuffled with `seed`). File sources (pystdlib, text) shuffle their sorted listing with
`np.random.default_rng(seed)` and read files one at a time, so a small corpus reads only the few
files it needs. The synthetic source is an endless seeded stream (see synthetic.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from hepc.data import shards, synthetic
from hepc.data.identity import DataError, list_pystdlib, resolve_text_paths, stdlib_root


def iter_documents(source_cfg: dict, base_dir: Path, seed: int, field: str = "data.source") -> Iterator[bytes | np.ndarray]:
    """The source's documents in corpus order (shuffled with `seed`): UTF-8 bytes, or ids for `tokens`."""
    kind = source_cfg.get("kind")
    if kind == "pystdlib":
        return _pystdlib(bool(source_cfg.get("include_tests", False)), seed)
    if kind == "text":
        return _text(source_cfg, base_dir, seed, field)
    if kind == "tokens":
        return shards.iter_documents(source_cfg, base_dir, seed, field)
    if kind == "synthetic":
        return synthetic.iter_documents(source_cfg, seed, field)
    raise DataError(f"unknown source kind {kind!r} (expected pystdlib, text, tokens or synthetic)", f"{field}.kind")


def _pystdlib(include_tests: bool, seed: int) -> Iterator[bytes]:
    root = stdlib_root()
    listing = list_pystdlib(include_tests, root)
    for i in np.random.default_rng(seed).permutation(len(listing)):
        data = (root / listing[i][0]).read_bytes()
        yield _as_utf8(data)


def _as_utf8(data: bytes) -> bytes:
    """`data` itself when it is valid UTF-8 (nearly every stdlib file), else with U+FFFD for bad bytes."""
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace").encode("utf-8")


def _text(source_cfg: dict, base_dir: Path, seed: int, field: str) -> Iterator[bytes]:
    files = resolve_text_paths(source_cfg, base_dir, field)  # resolved now: errors surface before any reading
    encoding = source_cfg.get("encoding", "utf-8")
    return _read_text(files, encoding, seed, field)


def _read_text(files: list[tuple[str, Path]], encoding: str, seed: int, field: str) -> Iterator[bytes]:
    for i in np.random.default_rng(seed).permutation(len(files)):
        name, path = files[i]
        try:
            text = path.read_bytes().decode(encoding)
        except (UnicodeDecodeError, LookupError) as e:
            raise DataError(f"cannot decode '{name}' as {encoding}: {e}", f"{field}.encoding") from None
        yield text.encode("utf-8")
