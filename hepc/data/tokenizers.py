"""Tokenizers: a document (UTF-8 bytes) in, token ids out, end-of-text first.

`bytes`: ids 0..255 are the bytes themselves and 256 is end-of-text, prefixed to every document as
GPT-2 does with `<|endoftext|>`, so the model always sees a boundary before a document starts.
`none`: the source (`kind: tokens`) is already tokenized; its documents are ids and pass through,
and the vocabulary and end-of-text id are the source's own. Each goes only with its sources.
`bpe`: a byte-level BPE of the `tokenizers` library (GPT-2 pre-tokenization), trained on the train
split by the `tokenizer` step (hepc/data/bpe_training.py) and stored as its `tokenizer.json`:
end-of-text is id 0, the 256 bytes are ids 1..256, merges follow; the id space is padded to the
configured vocab_size with never-produced `<|unused_i|>` ids when the train text offers fewer merges.

Every tokenizer has `vocab_size`, `eot_id`, `encode(document) -> np.ndarray` (end-of-text first;
`document` is bytes or, for the text tokenizers, str), `decode(ids) -> str` and `byte_stats`.
`load_tokenizer(compiled, store)` gives the tokenizer a compiled spec's corpus was built with.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from hepc.data.identity import DataError, check_tokens_config

EOT_TEXT = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"  # a trained tokenizer's file in its store object (the library's own format)


def token_dtype(vocab_size: int) -> np.dtype:
    """Storage dtype for token arrays: uint16 while the vocabulary fits, int32 beyond."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.int32)


class _TextTokens:
    """What the text tokenizers share: byte counts of ids (via `token_bytes`) and end-of-text first."""

    def byte_stats(self, ids: np.ndarray) -> tuple[int, float | None]:
        """(UTF-8 bytes `ids` stand for, bytes per token; None when there are no ids): exact per split."""
        n_bytes = int(self.token_bytes[ids].sum())
        return n_bytes, (n_bytes / ids.size if ids.size else None)

    def _eot_first(self, ids) -> np.ndarray:
        out = np.empty(len(ids) + 1, dtype=token_dtype(self.vocab_size))
        out[0] = self.eot_id
        out[1:] = ids
        return out


@dataclass(frozen=True)
class BytesTokenizer(_TextTokens):
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

    def encode(self, document: bytes | str) -> np.ndarray:
        """End-of-text, then the document's UTF-8 bytes (a str is encoded as UTF-8)."""
        if isinstance(document, str):
            document = document.encode("utf-8")
        return self._eot_first(np.frombuffer(document, dtype=np.uint8))

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


def utf8_text(data: bytes) -> str:
    """`data` as text: whole UTF-8 characters only. The bytes of a character cut at either end (a
    corpus piece starts or ends at a fixed byte offset, which may fall inside a character) are left
    out; anything else that is not UTF-8 becomes U+FFFD (sources yield valid UTF-8, so it does not occur)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    start = 0
    while start < min(len(data), 3) and 0x80 <= data[start] < 0xC0:  # continuation bytes of a cut character
        start += 1
    end = len(data)
    for back in range(1, min(4, end - start) + 1):  # a lead byte whose character the end cut off
        b = data[end - back]
        if b >= 0xC0:
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            if need > back:
                end -= back
            break
        if b < 0x80:
            break
    return data[start:end].decode("utf-8", "replace")


@dataclass(frozen=True, eq=False)
class BpeTokenizer(_TextTokens):
    """Tokenizer `bpe`: a trained byte-level BPE (`tokenizers.Tokenizer`); end-of-text first in every document.

    Text that happens to contain `<|endoftext|>` is encoded as ordinary text, never as end-of-text."""

    hf: Any  # tokenizers.Tokenizer, with encode_special_tokens set
    vocab_size: int
    eot_id: int
    config: dict = field(default_factory=dict)  # {"kind": "bpe", "vocab_size": N[, "min_frequency": m]}

    @classmethod
    def from_hf(cls, hf, config: dict | None = None) -> BpeTokenizer:
        hf.encode_special_tokens = True  # not stored in tokenizer.json
        eot_id = hf.token_to_id(EOT_TEXT)
        if eot_id is None:
            raise DataError(f"the tokenizer has no {EOT_TEXT} token", "data.tokenizer")
        vocab_size = hf.get_vocab_size()
        return cls(hf, vocab_size, eot_id, config or {"kind": "bpe", "vocab_size": vocab_size})

    @cached_property
    def token_bytes(self) -> np.ndarray:
        """Bytes of text each id stands for, indexed by id (end-of-text and unused ids count 0).

        A byte-level token's string has one character per byte, so its length is its byte count."""
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for token, i in self.hf.get_vocab(with_added_tokens=False).items():
            lengths[i] = len(token)
        lengths[self.eot_id] = 0
        return lengths

    def encode(self, document: bytes | str) -> np.ndarray:
        """End-of-text, then the ids of the document's text (bytes: see `utf8_text`)."""
        text = utf8_text(document) if isinstance(document, (bytes, bytearray, memoryview)) else document
        return self._eot_first(self.hf.encode(text).ids)

    def encode_many(self, documents: list[bytes]) -> list[np.ndarray]:
        """`encode` of each document, the library encoding them on all cores at once (same ids)."""
        texts = [utf8_text(d) if isinstance(d, (bytes, bytearray, memoryview)) else d for d in documents]
        return [self._eot_first(e.ids) for e in self.hf.encode_batch(texts)]

    def decode(self, ids) -> str:
        """Text of `ids` with end-of-text written as `<|endoftext|>` (bytes that are no whole UTF-8
        character become U+FFFD)."""
        return self.hf.decode([int(i) for i in np.asarray(ids).ravel()], skip_special_tokens=False)

    def to_json(self) -> str:
        """The library's own tokenizer.json text."""
        return self.hf.to_str(pretty=True)


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> BpeTokenizer:
    """A byte-level BPE trained on `texts`: end-of-text id 0, bytes 1..256, then merges, padded to `vocab_size`."""
    from tokenizers import Tokenizer as HfTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HfTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOT_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    hf.train_from_iterator(texts, trainer)
    learned = hf.get_vocab_size()
    if learned < vocab_size:
        hf.add_special_tokens([f"<|unused_{i}|>" for i in range(vocab_size - learned)])
    return BpeTokenizer.from_hf(hf, {"kind": "bpe", "vocab_size": vocab_size, "min_frequency": min_frequency})


def tokenizer_from_file(path: Path, config: dict | None = None) -> BpeTokenizer:
    """A trained tokenizer from its tokenizer.json (a store object's, or an exported copy)."""
    from tokenizers import Tokenizer as HfTokenizer

    try:
        hf = HfTokenizer.from_str(Path(path).read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001  (OSError, or the library's plain Exception for a malformed file)
        raise DataError(f"{path}: not a readable tokenizer ({type(e).__name__}: {e})", "data.tokenizer") from None
    return BpeTokenizer.from_hf(hf, config)


Tokenizer = BytesTokenizer | PretokenizedTokenizer | BpeTokenizer


def tokenizer_config(value) -> dict:
    """`data.tokenizer` (a name, a BpeTokenizer spec model or a dict) as a plain config dict with `kind`."""
    if isinstance(value, str):
        return {"kind": value}
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return dict(value)


def make_tokenizer(
    tokenizer_cfg: dict, source_cfg: dict | None = None, field: str = "data.tokenizer", trained: Path | None = None
) -> Tokenizer:
    """The tokenizer `tokenizer_cfg` names, checked against the source it is to read (when given).

    `none` needs a `tokens` source (whose vocab_size and eot_id it takes) and a `tokens` source needs `none`.
    `bpe` needs `trained`: the committed folder of its `tokenizer` step (holding tokenizer.json).
    """
    kind = tokenizer_cfg.get("kind")
    pretokenized = source_cfg is not None and source_cfg.get("kind") == "tokens"
    if kind == "bpe":
        if pretokenized:
            raise DataError("must be 'none' for a pre-tokenized source (got a bpe tokenizer)", field)
        if trained is None:
            raise DataError("a bpe tokenizer is trained by the `tokenizer` step: its folder is needed", field)
        tok = tokenizer_from_file(Path(trained) / TOKENIZER_FILE, dict(tokenizer_cfg))
        if tokenizer_cfg.get("vocab_size") not in (None, tok.vocab_size):
            raise DataError(f"the trained tokenizer has {tok.vocab_size} ids, not {tokenizer_cfg['vocab_size']}", field)
        return tok
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
    raise DataError(f"tokenizer kind {kind!r} is not available (expected 'bytes', 'none' or 'bpe')", f"{field}.kind")


def cut_document(tokenizer: Tokenizer, document: bytes | str, max_doc_tokens: int | None) -> list[np.ndarray]:
    """A text document's pieces exactly as the corpus cuts them (hepc/data/corpus.py, rule 1), each
    end-of-text first: its UTF-8 bytes are cut every max_doc_tokens - 1 bytes and each piece encoded
    on its own. For `bytes` this is the token rule (piece 0 = its first max_doc_tokens tokens, then an
    end-of-text and the next max_doc_tokens - 1); for `bpe` the cut is in bytes (the pieces, and so the
    splits, are decided before the BPE is trained), so a piece has at most max_doc_tokens tokens and a
    character cut in two belongs to neither piece. None = no cap: one piece."""
    data = document.encode("utf-8") if isinstance(document, str) else bytes(document)
    if max_doc_tokens is None or len(data) + 1 <= max_doc_tokens:
        return [tokenizer.encode(data)]
    width = max_doc_tokens - 1
    return [tokenizer.encode(data[start : start + width]) for start in range(0, len(data), width)]
