"""Text in and out of an ensemble: the corpus's tokenizer and its document rule (torch-free).

A document is UTF-8 bytes; the tokenizer puts end-of-text before it (as the corpus did), and a
document longer than the corpus's `max_doc_tokens` is cut into pieces exactly as the corpus cut it
(hepc.data.corpus, rule 1; ``hepc.data.tokenizers.cut_document``): for bytes, piece 0 is its first
`max_doc_tokens` tokens and each later piece an end-of-text followed by the next `max_doc_tokens - 1`. A text file is one document, or, for a
population trained on a `text` source with a `documents` rule, that rule's documents.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hepc.errors import HepcError
from hepc.store.safe_io import not_a_file

BYTES_TOKENIZER_FILE = {"kind": "bytes", "vocab_size": 257, "eot_id": 256}


class NoTextTokenizer:
    """A population trained on pre-tokenized shards: token ids in, no text."""

    def __init__(self, vocab_size: int, eot_id: int | None):
        self.vocab_size, self.eot_id = vocab_size, eot_id

    def encode(self, document):
        raise HepcError("this population was trained on pre-tokenized shards (tokenizer 'none'): it has no text "
                        "tokenizer; pass token ids (Ensemble.score / next_token_probs)")

    decode = encode


def ensemble_tokenizer(config: dict, vocab_size: int, eot_id: int | None, built=None):
    """The tokenizer of a resolved ensemble: one built from the store, else from its config."""
    if built is not None:
        return built
    kind = config.get("kind")
    if kind == "bytes":
        from hepc.data.tokenizers import BytesTokenizer

        return BytesTokenizer()
    if kind == "none":
        return NoTextTokenizer(vocab_size, eot_id)
    if config.get("file"):  # an exported trained tokenizer (its tokenizer.json)
        from hepc.data.identity import DataError
        from hepc.data.tokenizers import tokenizer_from_file

        try:
            return tokenizer_from_file(Path(config["file"]), {k: v for k, v in config.items() if k != "file"})
        except DataError as e:
            raise HepcError(str(e)) from None
    raise HepcError(f"tokenizer kind {kind!r} cannot be loaded by this hepc")


def encode_document(tokenizer, document: bytes | str) -> np.ndarray:
    """End-of-text, then the document's ids (int64)."""
    data = document.encode("utf-8") if isinstance(document, str) else bytes(document)
    return np.asarray(tokenizer.encode(data), dtype=np.int64)


def document_tokens(tokenizer, document: bytes | str, max_doc_tokens: int | None) -> np.ndarray:
    """A document's token stream under the corpus rule: its pieces, one after the other
    (``hepc.data.tokenizers.cut_document``, which also covers a BPE corpus's byte cut)."""
    from hepc.data.tokenizers import cut_document

    pieces = cut_document(tokenizer, document, max_doc_tokens)
    return np.concatenate([np.asarray(p, dtype=np.int64) for p in pieces])


def file_documents(path: Path, source: dict | None) -> list[bytes]:
    """The documents of a text file, as UTF-8 bytes, read as the corpus reads its files: a population
    trained on a `text` source uses that source's reader (its `documents` rule, JSON Lines field or
    Parquet column, and `encoding`); any other is one UTF-8 document per file."""
    import glob

    from hepc.data.identity import DataError
    from hepc.data.sources import iter_named_documents

    path = Path(path)
    source = source or {}
    if source.get("kind") != "text":
        try:
            raw = path.read_bytes()
            raw.decode("utf-8")
            return [raw]
        except OSError as e:
            raise HepcError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
        except UnicodeDecodeError as e:
            raise HepcError(f"{path}: cannot decode as utf-8 ({e})") from None
    if not path.is_file():
        raise HepcError(f"{path}: {not_a_file(path)}")
    one_file = {**source, "paths": [glob.escape(str(path.resolve()))], "exclude": []}
    try:
        return [b"".join(chunks) for _, chunks in iter_named_documents(one_file, Path.cwd())]
    except DataError as e:
        raise HepcError(f"{path}: {e.message}") from None


def file_tokens(tokenizer, path: Path, source: dict | None, max_doc_tokens: int | None) -> tuple[np.ndarray, int]:
    """(token stream of a text file's documents under the corpus rule, its UTF-8 bytes)."""
    docs = file_documents(path, source)
    if not docs or not any(docs):
        raise HepcError(f"{path}: no text to score (empty file)")
    stream = np.concatenate([document_tokens(tokenizer, d, max_doc_tokens) for d in docs])
    return stream, sum(len(d) for d in docs)
