"""The store's folder names, its marker and format, and the small rules every writer follows: one
safe path component, JSON written whole or not at all, what counts as a committed object."""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path

from hepc.errors import StoreError

MANIFEST = "manifest.json"
DEFAULT_STORE = "runs"
MANIFEST_LIMIT = 256 << 20  # a manifest or result JSON larger than this is not one hepc wrote
MARKER = "hepc-store.json"
FORMAT = 1  # the store layout this hepc writes; a store with a larger format is refused
SUBDIRS = ("objects", "work", "tmp", "leases", "records", "verified", "quarantine", "trash")


def resolve_store_path(cli_value: str | None, spec_value: str | None = None) -> Path:
    """--store beats $HEPC_STORE beats the spec's runtime.store beats ./runs."""
    return Path(cli_value or os.environ.get("HEPC_STORE") or spec_value or DEFAULT_STORE)


def write_json_atomic(path: Path, value, *, compact: bool = False) -> None:
    """Write `path` whole or not at all (a temporary name, then a rename; the temporary is removed on error).
    compact=True: one line (the C encoder; for big machine-read files such as a run's plan.json)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    text = json.dumps(value, separators=(",", ":"), sort_keys=True) if compact else json.dumps(value, indent=1, sort_keys=True)
    try:
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def safe_component(name: str) -> str:
    """A single path component under the store (step folder, spec name): never '..' or a separator."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or name.startswith(".")
    ):
        raise StoreError(f"refusing unsafe name {name!r} inside the store")
    return name


def is_committed(path: Path) -> bool:
    """`path` is a committed object: a real folder (not a link) whose manifest is a regular file (not a
    link, folder, FIFO or device). Anything else at an object's path is in the way of its commit."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode) and stat.S_ISREG(os.lstat(path / MANIFEST).st_mode)
    except OSError:
        return False
