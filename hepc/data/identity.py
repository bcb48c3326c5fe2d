"""What a data source *is*, cheaply: the identity that goes into the corpus step's content hash.

The compiler calls `source_identity` on every `hepc plan`, so this module imports no torch and no
numpy and never reads the standard library's files (only their names and sizes). Identities hold
no absolute paths: the same data on another machine, or moved elsewhere, hashes the same.

It also owns the two listings the corpus builder reads from (`list_pystdlib`,
`list_data_files` / `resolve_text_paths`, which also list the shards of a `tokens` source), so that
what is hashed and what is read can never disagree, and `open_regular`, through which data files are
opened: only regular files are data, and opening one never blocks (a FIFO would wait for a writer).
"""

from __future__ import annotations

import fnmatch
import glob
import os
import stat
import sys
import sysconfig
from pathlib import Path
from typing import NamedTuple

import xxhash

from hepc.data.compressed import content_digest, document_name, file_compression, flush_cache
from hepc.store.safe_io import file_kind, open_regular

# Bump when the synthetic generator's output for a given config changes (it is part of the identity).
SYNTHETIC_GENERATOR = "markov-v1"

# pystdlib filters. Always skipped: byte-code caches, installed third-party packages, the IDLE GUI,
# compiled extension modules and the build-configuration directory (config-3.11-<platform>), the
# lib2to3 test fixtures (deliberately broken / non-UTF-8 files), and `_sysconfigdata_*.py`
# (generated, machine-specific, full of absolute build paths). Unless include_tests: any directory
# named test / tests / idle_test and any file or directory whose name starts with `test_`.
_SKIP_DIRS = frozenset({"__pycache__", "site-packages", "dist-packages", "idlelib", "lib-dynload"})
_SKIP_RELDIRS = frozenset({"lib2to3/tests/data"})
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})


class DataError(Exception):
    """A problem with the data section of a spec; `field` is the dotted spec path it concerns."""

    def __init__(self, message: str, field: str = "data"):
        super().__init__(f"{field}: {message}")
        self.message = message
        self.field = field


def stdlib_root() -> Path:
    """The running interpreter's standard-library directory."""
    return Path(sysconfig.get_paths()["stdlib"])


def pystdlib_listing(source_cfg: dict, root: Path | None = None) -> list[tuple[str, int]]:
    """`list_pystdlib` with a pystdlib source's settings: its test suites or not, less its `exclude` patterns."""
    listing = list_pystdlib(bool(source_cfg.get("include_tests", False)), root)
    exclude = source_cfg.get("exclude") or []
    return [(rel, size) for rel, size in listing if not any(fnmatch.fnmatchcase(rel, pattern) for pattern in exclude)]


def list_pystdlib(include_tests: bool = False, root: Path | None = None) -> list[tuple[str, int]]:
    """(relative POSIX path, size in bytes) of every standard-library `.py` file kept by the filters, sorted."""
    root = stdlib_root() if root is None else root
    found: list[tuple[str, int]] = []

    def keep_dir(name: str, rel: str, top: bool) -> bool:
        if name in _SKIP_DIRS or rel in _SKIP_RELDIRS or (top and name.startswith("config-")):
            return False
        return include_tests or not (name in _TEST_DIRS or name.startswith("test_"))

    def walk(directory: str, prefix: str) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                rel = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    if keep_dir(entry.name, rel, top=not prefix):
                        walk(entry.path, rel + "/")
                elif (
                    entry.name.endswith(".py")
                    and not entry.name.startswith("_sysconfigdata_")
                    and (include_tests or not entry.name.startswith("test_"))
                    and entry.is_file()
                ):
                    found.append((rel, entry.stat().st_size))

    walk(str(root), "")
    found.sort()
    return found


class DataFile(NamedTuple):
    """One file of a file source: its name (as listed), where it is, and the `paths[i]` entry that reached it."""

    name: str
    path: Path  # the file itself, links resolved: what is read, and what makes two names one file
    where: str  # dotted spec path, e.g. data.source.paths[1]
    listed: str = ""  # the absolute path as listed, links not resolved: what `exclude` patterns match
    compression: str | None = None  # gzip, xz, bz2 or zstd by its magic bytes (text sources; hepc/data/compressed.py)

    @property
    def document_name(self) -> str:
        """The name its documents are named by, and hashed under: a compressed file's without its suffix."""
        return document_name(self.name, self.compression)


def with_compression(files: list[DataFile]) -> list[DataFile]:
    """The files of a text source with their compression sniffed from their first bytes (a file that cannot
    be opened is left as it is: reading it reports why), sorted by document name (a stable sort: the
    listing's order among equal names), so that `a.jsonl.zst` takes the place `a.jsonl` would."""
    out = []
    for f in files:
        try:
            out.append(f._replace(compression=file_compression(f.path)))
        except OSError:
            out.append(f)
    return sorted(out, key=lambda f: f.document_name)


def resolve_text_paths(
    source_cfg: dict, base_dir: Path, field: str = "data.source", key: str = "paths"
) -> list[tuple[str, Path]]:
    """(name, path) of every file a file source lists under `key`, sorted by name, each file once.

    `key` is `paths` (text files, token shards) or `val_paths` (validation shards of a `tokens` source).
    See `list_data_files`, which also tells which entry reached each file.
    """
    return [(f.name, f.path) for f in list_data_files(source_cfg, base_dir, field, key)]


def list_data_files(source_cfg: dict, base_dir: Path, field: str = "data.source", key: str = "paths") -> list[DataFile]:
    """Every file a file source lists under `key`, sorted by name, each file once.

    A relative pattern is resolved against `base_dir` (the spec's directory) and its files are named
    relative to it. An absolute pattern is named relative to its last directory before any wildcard
    (`/data/books/**/*.txt` names `a/b.txt`; `/data/x.txt` names `x.txt`), so that moving the data
    keeps its identity. Only regular files (or links to them) are data: a glob skips anything else
    (FIFOs, devices, sockets, directories) but must match at least one regular file, and a literal
    path to anything else is an error, as is a missing file.
    """
    patterns = source_cfg.get(key) or []
    if not patterns:
        raise DataError("must list at least one file or glob pattern", f"{field}.{key}")
    listed = []
    for i, pattern in enumerate(patterns):
        listed += list_pattern(pattern, source_cfg, base_dir, f"{field}.{key}[{i}]")
    excludes = (source_cfg.get("exclude") or []) if key == "paths" else []
    files, _ = choose_files(listed, excludes, base_dir)
    if not files:
        raise DataError(f"removes every file that `{key}` lists (nothing is left to read)", f"{field}.exclude")
    return with_compression(files) if source_cfg.get("kind") == "text" else files


def choose_files(listed: list[DataFile], excludes: list[str], base_dir: Path) -> tuple[list[DataFile], list[int]]:
    """(the files of a source, sorted by name; the indices of `exclude` entries that matched nothing).

    1. Each `exclude` entry removes the files whose path *as listed* it matches (a matched folder:
       everything listed under it). Links are not resolved for this: excluding `x.u8`, a link to
       `x`, removes the link and never `x`.
    2. A file reached under several names (a link and its target, two links, two patterns) is read
       once, under one name chosen by a rule that depends neither on the order a folder lists its
       entries nor on where the folder lives: a name that is not itself a symbolic link before one
       that is, then the first in sorted order. So `cp -a` of the data elsewhere, or another
       filesystem's listing order, keeps every name, and so the corpus key.
    """
    unmatched = []
    for j, pattern in enumerate(excludes):
        excluded = excluded_paths(pattern, base_dir)
        if not excluded:
            unmatched.append(j)
        listed = [f for f in listed if not is_excluded(f.listed or str(f.path), excluded)]
    groups: dict[str, list[DataFile]] = {}
    for f in listed:
        groups.setdefault(str(f.path), []).append(f)
    chosen = [min(group, key=lambda f: (bool(f.listed) and os.path.islink(f.listed), f.name, f.where))
              for group in groups.values()]
    return sorted(chosen, key=lambda f: (f.name, str(f.path))), unmatched


def list_pattern(pattern: str, source_cfg: dict, base_dir: Path, where: str) -> list[DataFile]:
    """The regular files one entry of `paths` reaches (see `list_data_files`), `where` being that entry."""
    root, rest = _split_pattern(str(pattern), base_dir)
    if glob.has_magic(rest):
        names = _glob(str(pattern), root, rest, where)
    else:
        names = [_literal(str(pattern), source_cfg, root, rest, where)]
    files = []
    for name in sorted(names):  # never the order the folder happens to list its entries in
        joined = os.path.abspath(os.path.join(root, name))
        files.append(DataFile(Path(os.path.normpath(name)).as_posix(), Path(os.path.realpath(joined)), where, joined))
    return files


def excluded_paths(pattern: str, base_dir: Path) -> list[str]:
    """Absolute paths an `exclude` entry matches, links not resolved (a glob, relative to `base_dir`
    unless absolute, whatever `paths` are); may be none. A matched directory excludes everything under it."""
    root, rest = _split_pattern(str(pattern), base_dir)
    try:
        names = glob.glob(rest, root_dir=root, recursive=True) if glob.has_magic(rest) else [rest]
    except (OSError, ValueError):
        return []
    return [os.path.abspath(os.path.join(root, n)) for n in names if os.path.lexists(os.path.join(root, n))]


def is_excluded(listed: str, excluded: list[str]) -> bool:
    return any(listed == e or listed.startswith(e.rstrip(os.sep) + os.sep) for e in excluded)


def _glob(pattern: str, root: str, rest: str, where: str) -> list[str]:
    """The regular files a glob matches (anything else it matches is skipped); at least one."""
    try:
        matched = glob.glob(rest, root_dir=root, recursive=True)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the pattern
        raise DataError(f"cannot list '{pattern}': {e}", where) from None
    names = [n for n in matched if os.path.isfile(os.path.join(root, n))]
    if not names:
        if matched:
            skipped = f"{len(matched):,} other entr{'y' if len(matched) == 1 else 'ies'} skipped"
            skipped += ": only regular files are data"
            raise DataError(f"'{pattern}' matched no regular files in {root} ({skipped})", where)
        raise DataError(f"'{pattern}' matched no files (looked in {root})", where)
    return names


def _literal(pattern: str, source_cfg: dict, root: str, rest: str, where: str) -> str:
    """`rest` itself when it is a regular file (or a link to one), else a DataError saying what it is."""
    try:
        mode = os.stat(os.path.join(root, rest)).st_mode
    except (FileNotFoundError, NotADirectoryError, ValueError):
        raise DataError(f"file not found: '{pattern}' (looked in {root})", where) from None
    except OSError as e:
        raise DataError(f"cannot read '{pattern}': {e.strerror or e}", where) from None
    if stat.S_ISDIR(mode):
        example = "*.bin" if source_cfg.get("kind") == "tokens" else "*.txt"
        raise DataError(f"'{pattern}' is a directory; use a glob such as '{pattern}/{example}'", where)
    if not stat.S_ISREG(mode):
        raise DataError(f"'{pattern}' is {file_kind(mode)}, not a regular file", where)
    return rest


def _split_pattern(pattern: str, base_dir: Path) -> tuple[str, str]:
    """(directory to search in, pattern relative to it) for one entry of `paths`."""
    if not os.path.isabs(pattern):
        return str(base_dir), pattern
    parts = Path(pattern).parts
    literal = 0
    while literal < len(parts) - 1 and not glob.has_magic(parts[literal]):
        literal += 1
    return os.path.join(*parts[:literal]), os.path.join(*parts[literal:])


# What a path is when it is not a regular file, for messages ("is a FIFO, not a regular file").
def read_error(file: DataFile, e: OSError) -> DataError:
    """The located error for a data file that cannot be opened or read (vanished, unreadable, not regular)."""
    reason = e.strerror or str(e)
    return DataError(f"cannot read '{file.name}' ({file.path}): {reason}", file.where)


def file_digest(path: Path) -> str:
    """xxh3_128 of a regular file's bytes, read in 1 MiB chunks (OSError when it cannot be read)."""
    digest = xxhash.xxh3_128()
    with open_regular(path) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def source_identity(source_cfg: dict, base_dir: Path, field: str = "data.source") -> dict:
    """A JSON-serialisable description of the source's content, for content-hashed cache keys.

    pystdlib: the Python version and a digest of the sorted (path, size) listing after `exclude` (no file
    is read), plus
    the `documents` rule when it is not the default `file`;
    text: each file's name and content digest (after `exclude`; a compressed file's name without its
    compression suffix and the digest of its decompressed bytes, cached by its stat signature: see
    hepc/data/compressed.py), plus the encoding and the `documents`
    rule when it is not the default `file`; tokens: the same for the train
    and validation shards, plus vocab_size and eot_id (bytes_per_token only labels bits per byte,
    so it is left out); synthetic: its own config.
    """
    kind = source_cfg.get("kind")
    if kind == "pystdlib":
        listing = pystdlib_listing(source_cfg)
        if not listing:
            raise DataError(f"no standard-library .py files found under {stdlib_root()}", f"{field}.kind")
        digest = xxhash.xxh3_128()
        for rel, size in listing:
            digest.update(f"{rel}\t{size}\n".encode())
        identity = {"kind": "pystdlib", "python": sys.version, "files": len(listing), "listing": digest.hexdigest()}
        documents = documents_rule(source_cfg)
        if documents != "file":  # the default rule is left out: existing keys stay as they were
            identity["documents"] = documents
        return identity
    if kind == "text":
        files = _file_digests(source_cfg, base_dir, field, "paths")
        identity = {"kind": "text", "encoding": source_cfg.get("encoding", "utf-8"), "files": files}
        documents = documents_rule(source_cfg)
        if documents != "file":  # the default rule is left out: existing keys stay as they were
            identity["documents"] = documents
        return identity
    if kind == "tokens":
        vocab_size, eot_id = check_tokens_config(source_cfg, field)
        has_val = source_cfg.get("val_paths") is not None
        return {
            "kind": "tokens",
            "vocab_size": vocab_size,
            "eot_id": eot_id,
            "files": _file_digests(source_cfg, base_dir, field, "paths"),
            "val_files": _file_digests(source_cfg, base_dir, field, "val_paths") if has_val else None,
        }
    if kind == "synthetic":
        return {**source_cfg, "generator": SYNTHETIC_GENERATOR}
    raise DataError(f"unknown source kind {kind!r} (expected pystdlib, text, tokens or synthetic)", f"{field}.kind")


def documents_rule(source_cfg: dict):
    """A text source's `documents` rule in one form: 'file', or a one-key dict (`jsonl` and `parquet`
    alone stand for `{jsonl: text}` and `{parquet: text}`, so that both spellings hash the same)."""
    rule = source_cfg.get("documents", "file")
    if rule in ("jsonl", "parquet"):
        return {rule: "text"}
    return "file" if rule is None else rule


def _file_digests(source_cfg: dict, base_dir: Path, field: str, key: str) -> list[dict]:
    """Name and content digest of each file listed under `key`; a file that cannot be read is a located error.

    A text source's compressed file is its decompressed bytes under its document name (hepc/data/compressed.py:
    the same entry as the decompressed file's; the digest cached by the file's stat signature)."""
    digests = []
    text = source_cfg.get("kind") == "text"
    try:
        for file in list_data_files(source_cfg, base_dir, field, key):
            try:
                digest = content_digest(file.path)[1] if text else file_digest(file.path)
            except OSError as e:
                raise read_error(file, e) from None
            digests.append({"name": file.document_name, "digest": digest})
    finally:
        if text:
            flush_cache()
    return digests


def check_tokens_config(source_cfg: dict, field: str = "data.source") -> tuple[int, int]:
    """(vocab_size, eot_id) of a `tokens` source, or DataError naming the bad field."""
    vocab_size, eot_id = source_cfg.get("vocab_size"), source_cfg.get("eot_id")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or not 2 <= vocab_size <= 1 << 24:
        raise DataError(f"must be an integer between 2 and {1 << 24} (got {vocab_size!r})", f"{field}.vocab_size")
    if not isinstance(eot_id, int) or isinstance(eot_id, bool) or not 0 <= eot_id < vocab_size:
        raise DataError(f"must be an integer in [0, vocab_size = {vocab_size}) (got {eot_id!r})", f"{field}.eot_id")
    return vocab_size, eot_id
