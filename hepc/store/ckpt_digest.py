"""A digest sidecar for a mid-cycle checkpoint (work/<key>/ckpt.pt), so a resume never trusts a
checkpoint that was truncated, overwritten or altered since it was written.

    work/<key>/ckpt.pt            torch.save of model / optimizer / RNG / step (hepc.train.loop)
    work/<key>/ckpt.digest.json   {"file": "ckpt.pt", "size": N, "xxh3_128": hex}, written after it

The sidecar is written atomically once the checkpoint is in place; a crash between the two leaves a
checkpoint whose digest does not match, which the resume discards (it restarts the cycle from its
start: slower, never wrong). Stdlib, xxhash and hepc.store.safe_io only: `hepc plan` and friends may import it without
torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import BinaryIO

import xxhash

from hepc.store.safe_io import NotRegularFile, TooLarge, open_regular, read_small

SIDECAR = "ckpt.digest.json"
SIDECAR_LIMIT = 64 << 10  # a sidecar is ~100 bytes; anything larger is not one
_CHUNK = 1 << 20


def _digest(f: BinaryIO) -> tuple[int, str]:
    """(bytes read, xxh3_128 hex) of what the open file `f` holds, in 1 MiB chunks."""
    h = xxhash.xxh3_128()
    size = 0
    while chunk := f.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
    return size, h.hexdigest()


def file_digest(path: Path) -> tuple[int, str]:
    """(size, xxh3_128 hex) of the regular file `path` (OSError for anything else)."""
    with open_regular(path) as f:
        return _digest(f)


def _reason(e: OSError) -> str:
    return "not a regular file" if isinstance(e, NotRegularFile) else (e.strerror or type(e).__name__)


def write_digest(ckpt: Path, known: tuple[int, str] | None = None) -> None:
    """Record the size and digest of `ckpt` (already in place) in `ckpt.parent / SIDECAR`, atomically.
    `known`: (size, xxh3_128 hex) computed while the file was written, so it is not read back."""
    ckpt = Path(ckpt)
    size, digest = known if known is not None else file_digest(ckpt)
    text = json.dumps({"file": ckpt.name, "size": size, "xxh3_128": digest}, sort_keys=True) + "\n"
    dest = ckpt.parent / SIDECAR
    # Same naming as hepc.train.checkpoint's temporaries: `Store.prepare_work` sweeps those left by dead pids.
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            view = memoryview(text.encode())
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable; best effort (not every file system allows it)
        dir_fd = os.open(dest.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _read_sidecar(path: Path) -> dict:
    """The sidecar's record; OSError / ValueError with a short reason when it is not a valid one."""
    try:
        data = read_small(path, SIDECAR_LIMIT)
    except TooLarge:
        raise ValueError(f"digest record is larger than {SIDECAR_LIMIT} bytes") from None
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("digest record is not valid JSON") from None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("file"), str)
        or type(record.get("size")) is not int
        or record["size"] < 0
        or not isinstance(record.get("xxh3_128"), str)
    ):
        raise ValueError("digest record is malformed")
    return record


def check_digest(ckpt: Path) -> str | None:
    """None when `ckpt` matches the digest recorded next to it; else a short reason for the user."""
    ckpt = Path(ckpt)
    try:
        record = _read_sidecar(ckpt.parent / SIDECAR)
    except FileNotFoundError:
        return "no digest recorded"
    except NotRegularFile:
        return f"no digest recorded ({SIDECAR} is not a regular file)"
    except OSError as e:
        return f"digest record unreadable ({_reason(e)})"
    except ValueError as e:
        return str(e)
    if record["file"] != ckpt.name:
        return f"digest record is for {record['file']!r}, not {ckpt.name!r}"
    try:
        with open_regular(ckpt) as f:
            current = os.fstat(f.fileno()).st_size
            expected = record["size"]
            if current != expected:
                kind = "truncated" if current < expected else "altered"
                return f"size {current}, expected {expected} ({kind})"
            size, digest = _digest(f)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({_reason(e)})"
    if size != expected:  # changed while being read
        kind = "truncated" if size < expected else "altered"
        return f"size {size}, expected {expected} ({kind})"
    if digest != record["xxh3_128"].lower():
        return "does not match its recorded digest (altered)"
    return None
