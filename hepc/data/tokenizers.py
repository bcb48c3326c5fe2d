"""Tokenizers: a document (UTF-8 bytes) in, token ids out, end-of-text first.

Only `bytes` exists for now: ids 0..255 are the bytes themselves and 256 is end-of-text, prefixed
to every document as GPT-2 does with `<|endoftext|>`, so the model always sees a boundary before a
document starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hepc.data.identity import DataError


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

def make_tokenizer(tokenizer_cfg: dict, field: str = "data.tokenizer") -> BytesTokenizer:
    kind = tokenizer_cfg.get("kind")
    if kind == "bytes":
        return BytesTokenizer()
    raise DataError(f"tokenizer kind {kind!r} is not available (only 'bytes' for now)", f"{field}.kind")
