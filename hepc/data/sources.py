"""Documents from a data source, in the corpus's shuffled order, read lazily.

Each document is UTF-8 bytes, except for the pre-tokenized `tokens` source, whose documents are
already token ids (see shards.py: its shards are read whole and split at end-of-text, and the
documents shuffled with `seed`). File sources (pystdlib, text) shuffle their sorted listing with
`np.random.default_rng(seed)` and read files one at a time, so a small corpus reads only the few
files it needs. The synthetic source is an endless seeded stream (see synthetic.py).

`iter_named_documents` is what the corpus builder reads file sources with: every file, in sorted
name order, as its name and a stream of UTF-8 chunks (of at most about `_CHUNK` bytes of the file
each), so that no file is ever held whole in memory (see corpus.py). A text source with a
`documents` rule (`{separator: LINE}` or `{regex: PATTERN}`) yields each non-empty document of each
file instead, named `<file name>#<j>` (j counting the file's non-empty documents from 0), split
streamed (`_split_documents`). Under `{jsonl: FIELD}` each line of a JSON Lines file is a record
whose string FIELD is a document, named `<file name>:line <n>` (n counting lines from 1); under
`{parquet: COLUMN}` each row of a Parquet file is one, named `<file name>:row <n>` (n counting rows
from 0), read a row group at a time in batches of `_BATCH_ROWS` rows (pyarrow is imported only then).
Blank JSONL lines and empty texts are skipped. In `iter_documents` such a source shuffles its files
and yields each file's documents in file order.

A text or JSON Lines file compressed with gzip, xz, bz2 or zstd (told by its magic bytes) is read
decompressed, streamed (hepc/data/compressed.py), and its documents are named after its name
without the compression suffix (`a.jsonl.zst` gives `a.jsonl:line 1`, as `a.jsonl` would); a
damaged archive is a located read error naming the compressed byte offset. A Parquet file compressed
whole is refused (Parquet compresses its own pages).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import regex

from hepc.data import shards, synthetic
from hepc.data.compressed import open_data
from hepc.data.identity import (
    DataError,
    DataFile,
    documents_rule,
    list_data_files,
    list_pystdlib,
    pystdlib_listing,
    read_error,
    stdlib_root,
)
from hepc.data.records import jsonl_records, parquet_rows

_CHUNK = 1 << 20  # bytes read (and decoded) at a time from a text file
_HOLD = 1 << 16  # characters held back at a chunk's end while searching for document separators
_CONTEXT = 256  # characters before the searched text kept in view (for ^, \\b and lookbehinds)
REGEX_TIMEOUT_S = 10.0  # the most one search of a chunk of text may take (a pattern that backtracks without end)


@dataclass(frozen=True)
class Prefix:
    """The first bytes of a UTF-8 document (all of it when it is short enough) and its full size in bytes."""

    data: bytes
    size: int


def iter_documents(
    source_cfg: dict, base_dir: Path, seed: int, field: str = "data.source", limit: int | None = None
) -> Iterator[bytes | Prefix | np.ndarray]:
    """The source's documents in corpus order (shuffled with `seed`): UTF-8 bytes, or ids for `tokens`.

    With a `limit` (in bytes), text documents come as `Prefix`es of at most `limit` bytes; the other
    sources ignore it.
    """
    kind = source_cfg.get("kind")
    if kind == "pystdlib":
        return _pystdlib(bool(source_cfg.get("include_tests", False)), seed)
    if kind == "text":
        return _text(source_cfg, base_dir, seed, field, limit)
    if kind == "tokens":
        return shards.iter_documents(source_cfg, base_dir, seed, field)
    if kind == "synthetic":
        return synthetic.iter_documents(source_cfg, seed, field)
    raise DataError(f"unknown source kind {kind!r} (expected pystdlib, text, tokens or synthetic)", f"{field}.kind")


def iter_named_documents(
    source_cfg: dict, base_dir: Path, field: str = "data.source"
) -> Iterator[tuple[str, Iterator[bytes]]]:
    """(name, UTF-8 chunks) of every document of a file source (pystdlib, text), in sorted name order.

    Names are those the source identity hashes (the standard-library path, or the text file's name,
    without its compression suffix when it is compressed;
    `name#j` for the j-th non-empty document of a text file under a separator or regex rule,
    `name:line n` and `name:row n` for JSON Lines records and Parquet rows).
    A document's chunks must be read to the end before the next document is asked for; a decoding
    or reading error is located as for `iter_documents`. The listing is made now, so that its errors
    surface before the first document is asked for.
    """
    return ((name, chunks) for _, name, chunks in iter_file_documents(source_cfg, base_dir, field))


def iter_file_documents(
    source_cfg: dict, base_dir: Path, field: str = "data.source"
) -> Iterator[tuple[int, str, Iterator[bytes]]]:
    """`iter_named_documents` with the index of the file each document comes from (in the listing's order:
    `list_data_files` for a text source, the identity's order of files)."""
    kind = source_cfg.get("kind")
    if kind == "pystdlib":
        root = stdlib_root()
        listing = pystdlib_listing(source_cfg, root)
        splitter = document_splitter(source_cfg, field)
        whole = ((i, rel, iter((_as_utf8((root / rel).read_bytes()),))) for i, (rel, _) in enumerate(listing))
        if splitter is None:
            return whole
        return ((i, f"{rel}#{j}", doc) for i, rel, chunks in whole for j, doc in enumerate(_split_documents(chunks, splitter)))
    if kind == "text":
        files = list_data_files(source_cfg, base_dir, field)
        encoding = _check_encoding(source_cfg, field)
        splitter = document_splitter(source_cfg, field)
        rule = documents_rule(source_cfg)
        if rule == "file":
            return ((i, file.document_name, _text_chunks(file, encoding, field)) for i, file in enumerate(files))
        return ((i, *named) for i, file in enumerate(files) for named in _file_documents(file, rule, splitter, encoding, field))
    raise DataError(f"source kind {kind!r} has no named files (expected pystdlib or text)", f"{field}.kind")


def _text_chunks(file: DataFile, encoding: str, field: str) -> Iterator[bytes]:
    try:
        with open_data(file.path) as f:
            yield from _utf8_chunks(f, encoding, file.name, field)
    except OSError as e:
        raise read_error(file, e) from None


def _file_documents(
    file: DataFile, rule: dict, splitter: regex.Pattern | None, encoding: str, field: str
) -> Iterator[tuple[str, Iterator[bytes]]]:
    """(name, UTF-8 chunks) of each non-empty document of one file under a rule other than `file`."""
    if splitter is not None:
        for j, doc in enumerate(_split_documents(_text_chunks(file, encoding, field), splitter)):
            yield f"{file.document_name}#{j}", doc
    elif "jsonl" in rule:
        for line, text in jsonl_records(file, rule["jsonl"], encoding, field):
            if text:
                yield f"{file.document_name}:line {line}", iter((text,))
    else:
        for row, text in parquet_rows(file, rule["parquet"]):
            if text:
                yield f"{file.name}:row {row}", iter((text,))


# --------------------------------------------------------------------------- document rules


def document_splitter(source_cfg: dict, field: str = "data.source") -> regex.Pattern | None:
    """The compiled separator of a text source's `documents` rule; None for `file` (one document per file),
    `jsonl` and `parquet` (documents are records or rows, not separated text).

    `{separator: LINE}`: a line equal to LINE (its `\\n` or `\\r\\n` aside) ends a document and belongs
    to none. `{regex: PATTERN}`: documents are separated by the matches of PATTERN (empty matches are
    ignored). A bad rule is a DataError at `documents`.
    """
    rule = documents_rule(source_cfg)
    where = f"{field}.documents"
    if rule == "file":
        return None
    for key in ("jsonl", "parquet"):
        if isinstance(rule, dict) and len(rule) == 1 and key in rule:
            if not isinstance(rule[key], str) or not rule[key]:
                raise DataError(f"must name a field (a non-empty string; got {rule[key]!r})", f"{where}.{key}")
            return None
    if isinstance(rule, dict) and len(rule) == 1 and isinstance(rule.get("separator"), str):
        line = rule["separator"]
        if not line or "\n" in line or "\r" in line:
            raise DataError("must be one non-empty line", f"{where}.separator")
        return regex.compile(r"(?m)^" + regex.escape(line) + r"(?:\r?\n|\Z)")
    if isinstance(rule, dict) and len(rule) == 1 and isinstance(rule.get("regex"), str):
        try:
            pattern = regex.compile(rule["regex"])  # the `regex` engine: it avoids most runaway backtracking
        except regex.error as e:
            raise DataError(f"not a valid regular expression: {e}", f"{where}.regex") from None
        if pattern.fullmatch("") is not None:
            raise DataError("must not match the empty string (it would separate nothing)", f"{where}.regex")
        return pattern
    raise DataError(
        f"must be 'file', {{separator: LINE}}, {{regex: PATTERN}}, {{jsonl: FIELD}} or {{parquet: COLUMN}} (got {rule!r})", where
    )


def _split_documents(chunks: Iterator[bytes], pattern: regex.Pattern) -> Iterator[Iterator[bytes]]:
    """The non-empty documents of one file's UTF-8 chunks, each as its own stream of UTF-8 chunks.

    The text is searched a chunk at a time, holding back the last `_HOLD` characters (and any match
    that reaches into them) until more text or the end of the file is in view, so that a separator
    split across chunks is found and a document spanning chunks comes out whole: the result is that
    of splitting the whole file at once for every separator shorter than `_HOLD` characters. Memory:
    one chunk and the held-back text. A document's chunks must be read before the next document.
    A search that takes longer than `REGEX_TIMEOUT_S` (a pattern that backtracks without end) is a
    DataError at the rule, so no command hangs on it and Ctrl-C is seen within that time.
    """

    def matches(text: str, pos: int):
        try:
            return list(pattern.finditer(text, pos, timeout=REGEX_TIMEOUT_S))
        except TimeoutError:
            raise DataError(
                f"the pattern took more than {REGEX_TIMEOUT_S:g} s to search {len(text) - pos:,} characters (it "
                "backtracks without end: nested repeats such as (a+)+); simplify it", "data.source.documents.regex"
            ) from None

    def stream() -> Iterator[tuple[str, object]]:
        """('text', str) and ('end', None) events, in file order."""
        carry, context = "", ""
        decoder = codecs.getincrementaldecoder("utf-8")()  # a chunk may end inside a character
        for utf8 in chunks:
            buffer = carry + decoder.decode(utf8)
            done = len(buffer) - _HOLD
            cut, last = done, 0
            for m in matches(context + buffer, len(context)):
                start, end = m.start() - len(context), m.end() - len(context)
                if end > done:
                    cut = min(cut, start)
                    break
                if end > start:
                    yield "text", buffer[last:start]
                    yield "end", None
                    last = end
            cut = max(cut, last)
            if cut > last:
                yield "text", buffer[last:cut]
            context = (context + buffer[:cut])[-_CONTEXT:]
            carry = buffer[cut:]
        carry += decoder.decode(b"", final=True)
        last = 0
        for m in matches(context + carry, len(context)):
            start, end = m.start() - len(context), m.end() - len(context)
            if end > start:
                yield "text", carry[last:start]
                yield "end", None
                last = end
        yield "text", carry[last:]
        yield "end", None

    events = stream()
    for kind, text in events:
        if kind == "end" or not text:
            continue  # an empty document ends, or nothing yet
        finished = [False]

        def document(first: str = text, flag: list[bool] = finished) -> Iterator[bytes]:
            yield first.encode("utf-8")
            for kind_, text_ in events:
                if kind_ == "end":
                    flag[0] = True
                    return
                if text_:
                    yield text_.encode("utf-8")

        yield document()
        if not finished[0]:
            raise RuntimeError("a document's chunks must be read to its end before the next document")


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


def _text(source_cfg: dict, base_dir: Path, seed: int, field: str, limit: int | None) -> Iterator[bytes | Prefix]:
    files = list_data_files(source_cfg, base_dir, field)  # resolved now: errors surface before any reading
    encoding, splitter = _check_encoding(source_cfg, field), document_splitter(source_cfg, field)
    rule = documents_rule(source_cfg)
    if rule == "file":
        return _read_text(files, encoding, seed, field, limit)
    return _read_split_text(files, rule, encoding, splitter, seed, field, limit)


def _read_split_text(
    files: list[DataFile], rule: dict, encoding: str, splitter: regex.Pattern | None, seed: int, field: str, limit: int | None
) -> Iterator[bytes | Prefix]:
    """The documents of each file in turn, the files in shuffled order, each file's documents in file order."""
    for i in np.random.default_rng(seed).permutation(len(files)):
        for _, chunks in _file_documents(files[i], rule, splitter, encoding, field):
            doc = _prefix_of(chunks, limit)
            yield doc if limit is not None else doc.data


def _check_encoding(source_cfg: dict, field: str) -> str:
    encoding = source_cfg.get("encoding", "utf-8")
    try:
        b"".decode(encoding)  # an unknown or non-text codec fails here, as decoding a whole file would
    except LookupError as e:
        raise DataError(f"cannot decode text as {encoding}: {e}", f"{field}.encoding") from None
    return encoding


def _read_text(
    files: list[DataFile], encoding: str, seed: int, field: str, limit: int | None
) -> Iterator[bytes | Prefix]:
    for i in np.random.default_rng(seed).permutation(len(files)):
        file = files[i]
        try:
            with open_data(file.path) as f:
                doc = _utf8_prefix(f, encoding, limit, file.name, field)
        except OSError as e:
            raise read_error(file, e) from None
        yield doc if limit is not None else doc.data


def _utf8_prefix(f: BinaryIO, encoding: str, limit: int | None, name: str, field: str) -> Prefix:
    """The first `limit` bytes (all without a limit) of `f` decoded from `encoding` and re-encoded as
    UTF-8, and the UTF-8 size of all of it; read in chunks, to the end, so that all of it is checked."""
    return _prefix_of(_utf8_chunks(f, encoding, name, field), limit)


def _prefix_of(chunks: Iterator[bytes], limit: int | None) -> Prefix:
    kept, size = bytearray(), 0
    for utf8 in chunks:
        room = len(utf8) if limit is None else max(limit - len(kept), 0)
        kept += utf8[:room]
        size += len(utf8)
    return Prefix(bytes(kept), size)


def _utf8_chunks(f: BinaryIO, encoding: str, name: str, field: str) -> Iterator[bytes]:
    """`f` decoded from `encoding` and re-encoded as UTF-8, a chunk of `_CHUNK` bytes of `f` at a time."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0  # bytes of `f` read before this chunk
    while True:
        chunk = f.read(_CHUNK)
        try:
            utf8 = decoder.decode(chunk, final=not chunk).encode("utf-8")
        except UnicodeError as e:
            what = f"{f.compression}-decompressed " if getattr(f, "compression", None) else ""
            message = f"cannot decode {what}'{name}' as {encoding}: {_at(e, decoder, offset)}"
            raise DataError(message, f"{field}.encoding") from None
        offset += len(chunk)
        if utf8:
            yield utf8
        if not chunk:
            return


def _at(e: UnicodeError, decoder: codecs.IncrementalDecoder, offset: int) -> str:
    """The decoding error, with its position counted from the start of the file when it can be."""
    if not isinstance(e, UnicodeDecodeError):
        return str(e)  # e.g. a decoded surrogate that UTF-8 cannot encode
    try:
        pending = decoder.getstate()[0]  # bytes held back from the previous chunk
    except (AttributeError, IndexError, TypeError, ValueError):  # a codec without the usual state
        return str(e)
    if not isinstance(pending, bytes):
        return str(e)
    return f"{e.reason} at byte {offset - len(pending) + e.start:,}"
