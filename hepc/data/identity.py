"""What a data source *is*, cheaply: the identity that goes into the corpus step's content hash.

The compiler calls `source_identity` on every `hepc plan`, so this module imports no torch and no
numpy and never reads the standard library's files (only their names and sizes). Identities hold
no absolute paths: the same data on another machine, or moved elsewhere, hashes the same.

It also owns the two listings the corpus builder reads from (`list_pystdlib`,
`resolve_text_paths`, which also lists the shards of a `tokens` source), so that what is hashed
and what is read can never disagree.
"""

from __future__ import annotations

import glob
import os
import sys
import sysconfig
from pathlib import Path

import xxhash

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


def resolve_text_paths(
    source_cfg: dict, base_dir: Path, field: str = "data.source", key: str = "paths"
) -> list[tuple[str, Path]]:
    """(name, path) of every file a file source lists under `key`, sorted by name, each file once.

    `key` is `paths` (text files, token shards) or `val_paths` (validation shards of a `tokens` source).

    A relative pattern is resolved against `base_dir` (the spec's directory) and its files are named
    relative to it. An absolute pattern is named relative to its last directory before any wildcard
    (`/data/books/**/*.txt` names `a/b.txt`; `/data/x.txt` names `x.txt`), so that moving the data
    keeps its identity. A missing file or a pattern matching nothing is an error.
    """
    patterns = source_cfg.get(key) or []
    if not patterns:
        raise DataError("must list at least one file or glob pattern", f"{field}.{key}")
    example = "*.bin" if source_cfg.get("kind") == "tokens" else "*.txt"
    by_path: dict[str, str] = {}  # real path -> name; the first pattern to reach a file names it
    for i, pattern in enumerate(patterns):
        where = f"{field}.{key}[{i}]"
        root, rest = _split_pattern(str(pattern), base_dir)
        if glob.has_magic(rest):
            names = [n for n in glob.glob(rest, root_dir=root, recursive=True) if os.path.isfile(os.path.join(root, n))]
            if not names:
                raise DataError(f"'{pattern}' matched no files (looked in {root})", where)
        else:
            if os.path.isdir(os.path.join(root, rest)):
                raise DataError(f"'{pattern}' is a directory; use a glob such as '{pattern}/{example}'", where)
            if not os.path.isfile(os.path.join(root, rest)):
                raise DataError(f"file not found: '{pattern}' (looked in {root})", where)
            names = [rest]
        for name in names:
            real = os.path.realpath(os.path.join(root, name))
            by_path.setdefault(real, Path(os.path.normpath(name)).as_posix())
    return sorted(((name, Path(real)) for real, name in by_path.items()), key=lambda item: (item[0], str(item[1])))


def _split_pattern(pattern: str, base_dir: Path) -> tuple[str, str]:
    """(directory to search in, pattern relative to it) for one entry of `paths`."""
    if not os.path.isabs(pattern):
        return str(base_dir), pattern
    parts = Path(pattern).parts
    literal = 0
    while literal < len(parts) - 1 and not glob.has_magic(parts[literal]):
        literal += 1
    return os.path.join(*parts[:literal]), os.path.join(*parts[literal:])


def file_digest(path: Path) -> str:
    """xxh3_128 of a file's bytes, read in 1 MiB chunks."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def source_identity(source_cfg: dict, base_dir: Path, field: str = "data.source") -> dict:
    """A JSON-serialisable description of the source's content, for content-hashed cache keys.

    pystdlib: the Python version and a digest of the sorted (path, size) listing (no file is read);
    text: each file's name and content digest, plus the encoding; tokens: the same for the train
    and validation shards, plus vocab_size and eot_id (bytes_per_token only labels bits per byte,
    so it is left out); synthetic: its own config.
    """
    kind = source_cfg.get("kind")
    if kind == "pystdlib":
        listing = list_pystdlib(bool(source_cfg.get("include_tests", False)))
        if not listing:
            raise DataError(f"no standard-library .py files found under {stdlib_root()}", f"{field}.kind")
        digest = xxhash.xxh3_128()
        for rel, size in listing:
            digest.update(f"{rel}\t{size}\n".encode())
        return {"kind": "pystdlib", "python": sys.version, "files": len(listing), "listing": digest.hexdigest()}
    if kind == "text":
        files = [{"name": name, "digest": file_digest(path)} for name, path in resolve_text_paths(source_cfg, base_dir, field)]
        return {"kind": "text", "encoding": source_cfg.get("encoding", "utf-8"), "files": files}
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


def _file_digests(source_cfg: dict, base_dir: Path, field: str, key: str) -> list[dict]:
    return [{"name": name, "digest": file_digest(path)} for name, path in resolve_text_paths(source_cfg, base_dir, field, key)]


def check_tokens_config(source_cfg: dict, field: str = "data.source") -> tuple[int, int]:
    """(vocab_size, eot_id) of a `tokens` source, or DataError naming the bad field."""
    vocab_size, eot_id = source_cfg.get("vocab_size"), source_cfg.get("eot_id")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or not 2 <= vocab_size <= 1 << 24:
        raise DataError(f"must be an integer between 2 and {1 << 24} (got {vocab_size!r})", f"{field}.vocab_size")
    if not isinstance(eot_id, int) or isinstance(eot_id, bool) or not 0 <= eot_id < vocab_size:
        raise DataError(f"must be an integer in [0, vocab_size = {vocab_size}) (got {eot_id!r})", f"{field}.eot_id")
    return vocab_size, eot_id
