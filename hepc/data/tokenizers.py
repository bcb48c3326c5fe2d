"""Tokenizers: a document (UTF-8 bytes) in, token ids out, end-of-text first.

`bytes`: ids 0..255 are the bytes themselves and 256 is end-of-text, prefixed to every document as
GPT-2 does with `<|endoftext|>`, so the model always sees a boundary before a document starts.
`none`: the source (`kind: tokens`) is already tokenized; its documents are ids and pass through,
and the vocabulary and end-of-text id are the source's own. Each goes only with its sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from hepc.data.identity import DataError, check_tokens_config


def token_dtype(vocab_size: int) -> np.dtype:
    """Storage dtype for token arrays: uint16 while the vocabulary fits, int32 beyond."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.int32)


@dataclass(frozen=True)
class BytesTokenizer:
    """UTF-8 bytes -> ids 0..255, plus end-of-text (id 256, zero bytes) before each document."""

    vocab_size: int = 257
    eot_id: int = 256

    @property
    def config(self) -> dict:
        return {"kind": "bytes"}

    @property
    def token_bytes(self) -> np.ndarray:
        """Bytes of text each id stands for, indexed by id (end-of-text counts 0)."""
        lengths = np.ones(self.vocab_size, dtype=np.int64)
        lengths[self.eot_id] = 0
        return lengths

    def byte_stats(self, ids: np.ndarray) -> tuple[int, float | None]:
        """(UTF-8 bytes `ids` stand for, bytes per token; None when there are no ids)."""
        n_bytes = int(self.token_bytes[ids].sum())
        return n_bytes, (n_bytes / ids.size if ids.size else None)

    def encode(self, document: bytes) -> np.ndarray:
        ids = np.empty(len(document) + 1, dtype=token_dtype(self.vocab_size))
        ids[0] = self.eot_id
        ids[1:] = np.frombuffer(document, dtype=np.uint8)
        return ids

    def decode(self, ids) -> str:
        """Text of `ids` with end-of-text written as `<|endoftext|>` (for samples and debugging)."""
        ids = np.asarray(ids)
        pieces = np.split(ids, np.flatnonzero(ids == self.eot_id))  # every piece but the first starts at an EOT
        return "".join(
            ("<|endoftext|>" if len(piece) and piece[0] == self.eot_id else "")
            + bytes(piece[piece != self.eot_id].astype(np.uint8)).decode("utf-8", "replace")
            for piece in pieces
        )


@dataclass(frozen=True)
class PretokenizedTokenizer:
    """Tokenizer `none`: documents are already ids of the source's vocabulary and pass through."""

    vocab_size: int
    eot_id: int
    bytes_per_token: float | None = None  # as configured: only labels bits per byte

    @property
    def config(self) -> dict:
        return {"kind": "none"}

    def byte_stats(self, ids: np.ndarray) -> tuple[int | None, float | None]:
        """(estimated bytes: tokens x the configured bytes_per_token, that value); (None, None) when not configured."""
        if self.bytes_per_token is None:
            return None, None
        return round(ids.size * self.bytes_per_token), self.bytes_per_token

    def encode(self, document: np.ndarray) -> np.ndarray:
        return document


Tokenizer = Union[BytesTokenizer, PretokenizedTokenizer]


def make_tokenizer(tokenizer_cfg: dict, source_cfg: dict | None = None, field: str = "data.tokenizer") -> Tokenizer:
    """The tokenizer `tokenizer_cfg` names, checked against the source it is to read (when given).

    `none` needs a `tokens` source (whose vocab_size and eot_id it takes) and a `tokens` source needs `none`.
    """
    kind = tokenizer_cfg.get("kind")
    pretokenized = source_cfg is not None and source_cfg.get("kind") == "tokens"
    if kind == "none":
        if not pretokenized:
            raise DataError("'none' needs a pre-tokenized source (kind: tokens)", field)
        vocab_size, eot_id = check_tokens_config(source_cfg)
        bpt = source_cfg.get("bytes_per_token")
        if bpt is not None and (isinstance(bpt, bool) or not isinstance(bpt, (int, float)) or not bpt > 0):
            raise DataError(f"must be a number > 0 or absent (got {bpt!r})", "data.source.bytes_per_token")
        return PretokenizedTokenizer(vocab_size, eot_id, None if bpt is None else float(bpt))
    if kind == "bytes":
        if pretokenized:
            raise DataError("must be 'none' for a pre-tokenized source (got 'bytes')", field)
        return BytesTokenizer()
    raise DataError(f"tokenizer kind {kind!r} is not available (expected 'bytes' or 'none')", f"{field}.kind")
