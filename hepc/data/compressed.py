"""Compressed data files: gzip, xz and bz2 (standard library) and zstd (the `zstandard` package).

A text source's file is read compressed when its first bytes are one of these formats' magic numbers,
whatever its name (`sniff`); anything else is read as it is. Reading is streamed: the library's own
streaming reader (`gzip.GzipFile`, `lzma.LZMAFile`, `bz2.BZ2File`, `ZstdDecompressor().stream_reader`
across frames) is fed at most `READ_SIZE` compressed bytes at a time and asked for at most a buffer
of output at a time, so memory never holds the whole file, only what the reader above keeps (a
buffer, or one JSON Lines record). Concatenated gzip members, xz and bz2 streams, and zstd frames
(skippable ones too) are read one after another as one stream. `zstandard` is imported only when a
zstd file is opened.

A file that cannot be decompressed raises `ArchiveError` (an OSError, so every reader's located
"cannot read" path reports it as one line) naming the compressed byte offset: the end of the file
for one cut short, or, for corrupt data, the offset read up to when the decompressor found it (the
damage is at or before it: within `READ_SIZE` bytes when the data itself cannot be decoded, anywhere
in the member or frame when only its checksum, checked at its end, disagrees). zstd's reader stops
quietly where a cut file ends, so the frames' structure is followed as the bytes go by
(`_ZstdFrames`: headers and block sizes only) to tell a cut from an end.

Identity: a compressed file is its decompressed bytes. `content_digest` gives the xxh3_128 of those
bytes (of the file's own bytes when it is not compressed: the digest identity.py always took), so
`a.jsonl` and `a.jsonl.zst` holding the same bytes have the same digest, and `document_name` drops
the compression suffix from a compressed file's name (`a.jsonl.zst` is named `a.jsonl`). A
decompressed digest costs a full decompression, so it is cached by the file's stat signature
(size, mtime, ctime, inode, device), as the store caches its verified objects (hepc/store/verify.py), in
`$HEPC_CACHE_DIR/decompressed-digests.json` (default `$XDG_CACHE_HOME/hepc`, else `~/.cache/hepc`;
`HEPC_CACHE_DIR=` with nothing turns the cache off): a second `plan` stats the file instead of
decompressing it. Only a file whose last change is more than `SETTLE_NS` older than the read is
cached (a write in the same clock tick could keep every number of the signature). Any write,
truncation, replacement or `touch` changes the signature, and the file is decompressed again. A read
of the whole file (the corpus build) checks the bytes it decompressed against the cached digest: a
mismatch drops the entry and is an error, so a corpus is never recorded under a digest its bytes do
not have.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import io
import json
import os
import time
from pathlib import Path
from typing import BinaryIO

import xxhash

from hepc.store.safe_io import open_regular

GZIP, XZ, BZ2, ZSTD = "gzip", "xz", "bz2", "zstd"
FORMATS = (GZIP, XZ, BZ2, ZSTD)
SUFFIXES = (".gz", ".gzip", ".xz", ".bz2", ".zst", ".zstd")  # dropped from a compressed file's document name
MAGIC_BYTES = 10  # enough of a file's start to tell every format
READ_SIZE = 32 << 10  # compressed bytes fed to a decompressor at a time (how closely an offset locates damage)
BUFFER = 256 << 10  # decompressed bytes asked for at a time
SETTLE_NS = 1_000_000_000  # a file changed more recently than this before a read is not cached (see verify._settled)
CACHE_FILE = "decompressed-digests.json"
CACHE_FORMAT = 1
CACHE_ENTRIES = 100_000  # the oldest entries beyond this are dropped
_FLUSH_EVERY_S = 10.0


class ArchiveError(OSError):
    """A compressed file that cannot be decompressed (cut short, corrupt); the message names the offset."""

    def __init__(self, message: str):
        super().__init__(errno.EIO, message)


def sniff(head: bytes) -> str | None:
    """The compression format whose magic number `head` (a file's first bytes) starts with, else None."""
    if head[:3] == b"\x1f\x8b\x08":  # gzip, deflate
        return GZIP
    if head[:6] == b"\xfd7zXZ\x00":
        return XZ
    bz2_block = len(head) >= 10 and 0x31 <= head[3] <= 0x39 and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90")
    if head[:3] == b"BZh" and bz2_block:
        return BZ2  # a block's magic (pi) or, for an empty stream, the end-of-stream magic (sqrt pi)
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return ZSTD
    if len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50:
        return ZSTD  # a zstd skippable frame (0x184D2A5?)
    return None


def document_name(name: str, compression: str | None) -> str:
    """A file's name as its documents are named: a compressed file's without its compression suffix."""
    if compression is None:
        return name
    for suffix in SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix) and not name.endswith("/" + suffix):
            return name[: -len(suffix)]
    return name


def file_compression(path: str | os.PathLike) -> str | None:
    """The compression format of a regular file (None: read as it is); OSError when it cannot be opened."""
    with open_regular(path) as f:
        return sniff_file(f)


def sniff_file(f: BinaryIO) -> str | None:
    """`sniff` of an open file's first bytes, read with pread: the file's buffer and position stay untouched
    (a plain file is then read exactly as before; filling its buffer early even changes how the allocator
    lays out a huge JSON Lines line, and so the peak memory of reading it)."""
    return sniff(os.pread(f.fileno(), MAGIC_BYTES, 0))


def open_data(path: str | os.PathLike) -> BinaryIO:
    """A data file opened for reading its (decompressed) bytes; `.compression` says which format it was in
    (None: the file itself, opened as `open_regular` opens it). Reading a damaged one raises ArchiveError."""
    f = open_regular(path)
    try:
        compression = sniff_file(f)
        if compression is None:
            f.compression = None
            return f
        st = os.fstat(f.fileno())
        raw = _Decompressed(compression, f, str(path), _signature(st), time.time_ns())
        stream = io.BufferedReader(raw, buffer_size=BUFFER)
        stream.compression = compression
        return stream
    except BaseException:
        f.close()
        raise


def content_digest(path: str | os.PathLike) -> tuple[str | None, str, int]:
    """(compression, xxh3_128 hex digest of the decompressed bytes, their size) of a data file; for a file
    that is not compressed, of its own bytes. A compressed file's digest is cached (module docstring)."""
    with open_regular(path) as f:
        compression = sniff_file(f)
        st = os.fstat(f.fileno())
        if compression is None:
            digest, size = xxhash.xxh3_128(), 0
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
            return None, digest.hexdigest(), size
        known = _CACHE.lookup(str(path), _signature(st))
        if known is not None and known[0] == compression:
            return compression, known[1], known[2]
    with open_data(path) as stream:
        while stream.read(1 << 20):
            pass
        raw = stream.raw
        return raw.compression, raw.digest, raw.pos


def decompressed_size(path: str | os.PathLike) -> int:
    """The size of a data file's decompressed bytes (its own size when it is not compressed)."""
    if file_compression(path) is None:
        return os.stat(path).st_size
    return content_digest(path)[2]


def flush_cache() -> None:
    """Write the digests computed since the last write to the cache file (an error there is ignored)."""
    _CACHE.flush()


# --------------------------------------------------------------------------- reading


class _Counted:
    """The compressed file as a decompressor reads it: at most READ_SIZE bytes a read, counted (and, for
    zstd, followed frame by frame). A failure of the file itself is marked, so it is not taken for damage."""

    def __init__(self, f: BinaryIO, frames: _ZstdFrames | None):
        self.f, self.frames, self.offset, self.failed = f, frames, 0, False

    def read(self, n: int = -1) -> bytes:
        n = READ_SIZE if n is None or n < 0 or n > READ_SIZE else n
        try:
            data = self.f.read(n)
        except OSError:
            self.failed = True
            raise
        if self.frames is not None:
            self.frames.feed(data)
        self.offset += len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.f.close()


class _Decompressed(io.RawIOBase):
    """A compressed file's decompressed bytes, with their digest and size once read to the end."""

    def __init__(self, compression: str, f: BinaryIO, path: str, sig: list[int], started_ns: int):
        super().__init__()
        self.compression, self.path, self.sig, self.started_ns = compression, path, sig, started_ns
        self.file_size = sig[0]
        self.counted = _Counted(f, _ZstdFrames() if compression == ZSTD else None)
        self.reader = _reader(compression, self.counted)
        self.hash = xxhash.xxh3_128()
        self.pos = 0  # decompressed bytes read
        self.digest: str | None = None  # set at the end of the stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.digest is not None:
            return 0
        try:
            n = self.reader.readinto(buffer)
        except EOFError:
            raise self._cut() from None
        except ArchiveError:
            raise
        except _errors() as e:
            if self.counted.failed:
                raise
            raise ArchiveError(f"corrupt {self.compression} data at or before compressed byte {self.counted.offset:,} "
                               f"(after {self.pos:,} decompressed bytes): {_reason(e)}") from None
        if not n:
            frames = self.counted.frames
            if frames is not None and not frames.complete():
                raise self._cut()
            self.digest = self.hash.hexdigest()
            _CACHE.confirm(self.path, self.sig, self.compression, self.digest, self.pos, self.started_ns)
            return 0
        self.hash.update(memoryview(buffer)[:n])
        self.pos += n
        return n

    def _cut(self) -> ArchiveError:
        return ArchiveError(f"truncated {self.compression} file: it ends at compressed byte {self.counted.offset:,} "
                            f"inside compressed data (after {self.pos:,} decompressed bytes); "
                            "a download or copy cut short?")

    def close(self) -> None:
        if not self.closed:
            try:
                if getattr(self, "reader", None) is not None:
                    self.reader.close()
            finally:
                if getattr(self, "counted", None) is not None:
                    self.counted.close()
        super().close()


def _reader(compression: str, counted: _Counted):
    if compression == GZIP:
        import gzip

        return gzip.GzipFile(fileobj=counted, mode="rb")
    if compression == XZ:
        import lzma

        return lzma.LZMAFile(counted)
    if compression == BZ2:
        import bz2

        return bz2.BZ2File(counted)
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(
        counted, read_size=READ_SIZE, read_across_frames=True, closefd=False
    )


def _errors() -> tuple[type[BaseException], ...]:
    """What the decompressors raise on corrupt data (zstd's only once it is loaded)."""
    import lzma
    import sys
    import zlib

    found: tuple[type[BaseException], ...] = (OSError, zlib.error, lzma.LZMAError, ValueError)
    zstandard = sys.modules.get("zstandard")
    return found + ((zstandard.ZstdError,) if zstandard is not None else ())


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    reason = text[0] if text else type(e).__name__
    return reason.removeprefix("zstd decompress error: ")


class _ZstdFrames:
    """Where a zstd stream is in its frames, from the bytes as they go by: frame and block headers are read,
    block contents skipped. `complete()`: the bytes so far end exactly at a frame's end (or there are none)."""

    def __init__(self):
        self.state, self.need, self.pending = "magic", 4, bytearray()
        self.checksum = False
        self.lost = False  # bytes no zstd frame starts with: the decompressor reports them itself

    def complete(self) -> bool:
        return self.lost or (self.state == "magic" and not self.pending)

    def feed(self, data: bytes) -> None:
        view, i = memoryview(data), 0
        while i < len(view) and not self.lost:
            if self.state == "skip":  # contents: no need to look at them
                step = min(self.need, len(view) - i)
                self.need -= step
                i += step
                if not self.need:
                    self.state, self.need = self.after_skip, self.after_need
                continue
            take = min(self.need - len(self.pending), len(view) - i)
            self.pending += view[i : i + take]
            i += take
            if len(self.pending) == self.need:
                header, self.pending = bytes(self.pending), bytearray()
                self._header(header)

    def _skip(self, n: int, then: str, need: int) -> None:
        if n:
            self.state, self.need, self.after_skip, self.after_need = "skip", n, then, need
        else:
            self.state, self.need = then, need

    def _header(self, header: bytes) -> None:
        if self.state == "magic":
            magic = int.from_bytes(header, "little")
            if magic == 0xFD2FB528:
                self.state, self.need = "descriptor", 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self.state, self.need = "skippable", 4
            else:
                self.lost = True
        elif self.state == "skippable":
            self._skip(int.from_bytes(header, "little"), "magic", 4)
        elif self.state == "descriptor":
            fhd = header[0]
            single = (fhd >> 5) & 1
            self.checksum = bool((fhd >> 2) & 1)
            size = (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + ((1 if single else 0), 2, 4, 8)[fhd >> 6]
            self._skip(size, "block", 3)
        elif self.state == "block":
            value = int.from_bytes(header, "little")
            last, kind, size = value & 1, (value >> 1) & 3, value >> 3
            content = 1 if kind == 1 else size  # an RLE block holds one byte
            if last:
                self._skip(content + (4 if self.checksum else 0), "magic", 4)
            else:
                self._skip(content, "block", 3)


# --------------------------------------------------------------------------- the digest cache


def _signature(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def cache_path() -> Path | None:
    """Where decompressed digests are cached (None: nowhere, `HEPC_CACHE_DIR` set empty)."""
    folder = os.environ.get("HEPC_CACHE_DIR")
    if folder is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "hepc")
    return Path(folder) / CACHE_FILE if folder else None


class _DigestCache:
    """path -> [signature..., compression, digest, size], read from the cache file on first use and
    written back (merged with what another process wrote meanwhile) by `flush`. A cache: a missing,
    junk or unwritable file costs decompressing again, never a wrong digest for a changed file."""

    def __init__(self):
        self.entries: dict[str, list] | None = None
        self.loaded_from: Path | None = None
        self.new: dict[str, list | None] = {}  # computed (or dropped: None) since the last write
        self.last_flush = time.monotonic()
        self.registered = False

    def _load(self) -> dict[str, list]:
        path = cache_path()
        if self.entries is None or path != self.loaded_from:
            self.entries, self.loaded_from = _read_cache(path), path
        return self.entries

    def lookup(self, path: str, sig: list[int]) -> tuple[str, str, int] | None:
        entry = self._load().get(path)
        if entry is None or entry[:5] != sig:
            return None
        return entry[5], entry[6], entry[7]

    def confirm(self, path: str, sig: list[int], compression: str, digest: str, size: int, started_ns: int) -> None:
        """The decompressed digest of a whole read: checked against the cached one, remembered when settled."""
        known = self.lookup(path, sig)
        if known is not None and known[1:] != (digest, size):
            self._set(path, None)
            self.flush()
            raise ArchiveError(f"its decompressed bytes differ from the digest cached for it ({cache_path()}), though "
                               "its size and times are the same: the cached digest is dropped; run the command again")
        if known is None and sig[2] < started_ns - SETTLE_NS:
            self._set(path, [*sig, compression, digest, size])

    def _set(self, path: str, entry: list | None) -> None:
        entries = self._load()
        if entry is None:
            entries.pop(path, None)
        else:
            entries[path] = entry
        self.new[path] = entry
        if not self.registered:
            atexit.register(self.flush)
            self.registered = True
        if time.monotonic() - self.last_flush > _FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        path = cache_path()
        if not self.new or path is None:
            self.new.clear()
            return
        merged = _read_cache(path)
        for key, entry in self.new.items():
            merged.pop(key, None)
            if entry is not None:
                merged[key] = entry  # newest last
        self.new.clear()
        while len(merged) > CACHE_ENTRIES:
            del merged[next(iter(merged))]
        self.entries, self.loaded_from = merged, path
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:  # not write_json_atomic: that sorts keys, and the entries' order is their age (oldest dropped first)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"format": CACHE_FORMAT, "entries": merged}, separators=(",", ":")))
            os.replace(tmp, path)
        except OSError:  # a cache: without it the next command decompresses again
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temporary behind


def _valid_entry(entry) -> bool:
    return (isinstance(entry, list) and len(entry) == 8 and all(type(x) is int for x in entry[:5])
            and entry[5] in FORMATS and isinstance(entry[6], str) and type(entry[7]) is int)


def _read_cache(path: Path | None) -> dict[str, list]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(256 << 20))
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("format") == CACHE_FORMAT else None
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(k, str) and _valid_entry(v)}


_CACHE = _DigestCache()
