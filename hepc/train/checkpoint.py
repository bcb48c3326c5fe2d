"""Atomic writes and loads for snapshots (safetensors) and training state (torch.save, weights_only loads).

Every file is written to a temporary name in the same directory and renamed into place, so a crash
at any instant leaves either the old file or the new one, never a torn one; a write that fails (a
full disk) removes its temporary and raises the OSError itself (torch's writer reports only
"unexpected pos", safetensors an I/O string), so the caller can say "disk full at PATH".
"""

from __future__ import annotations

import errno
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import xxhash
from safetensors.torch import load_file, save_file

from hepc.store.safe_io import os_error_behind


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def _os_error(e: BaseException, path: Path) -> OSError | None:
    """The OSError behind a writer's failure: chained (torch via a file object) or in the text."""
    chained = os_error_behind(e)
    if chained is not None:
        return chained
    found = re.search(r"os error (\d+)", str(e))  # safetensors: "I/O error: No space left on device (os error 28)"
    if found:
        code = int(found.group(1))
        return OSError(code, os.strerror(code), str(path))
    if "No space left" in str(e):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


def _filesystem_error(path: Path, needed: int) -> OSError | None:
    """After a writer failed without saying why: a read-only or too full filesystem, if that is it."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return None
    if st.f_flag & getattr(os, "ST_RDONLY", 1):
        return OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    if st.f_bavail * st.f_frsize < max(needed, 1 << 16):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _write(path: Path, write, needed: int = 0) -> None:
    """Call `write(tmp)`, then commit; on any failure remove the temporary and raise the OSError
    (found in the error, or, for a writer that hides it, by asking the filesystem)."""
    tmp = _tmp_path(path)
    try:
        write(tmp)
        _commit(tmp, path)
    except BaseException as e:
        _discard(tmp)
        os_error = None
        if not isinstance(e, (OSError, KeyboardInterrupt)):
            os_error = _os_error(e, path) or _filesystem_error(path, needed)
        if os_error is not None:
            if os_error.filename is None:
                os_error.filename = str(path)
            raise os_error from e
        raise


def save_weights(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """Snapshot weights as contiguous float32 CPU tensors in safetensors."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    _write(path, lambda tmp: save_file(tensors, str(tmp)), _tensor_bytes(tensors))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def save_state(obj: Any, path: Path) -> None:
    """Training state (optimizer, RNG, counters); tensors are moved to CPU so any machine can load it."""
    path = Path(path)
    state = to_cpu(obj)
    # To a path, not a file object: torch's writer would call back into Python for every chunk, and
    # a Ctrl-C raised inside that callback aborts the process.
    _write(path, lambda tmp: torch.save(state, tmp), _tensor_bytes(state))


class _HashingFile:
    """A file that digests (xxh3_128, as hepc.store.ckpt_digest) what is written through it."""

    def __init__(self, f):
        self.f, self.hash, self.size = f, xxhash.xxh3_128(), 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def save_state_hashed(obj: Any, path: Path) -> tuple[int, str]:
    """save_state, digesting the bytes as they are written: returns (size, xxh3_128 hex) of the file, for its
    digest sidecar, without reading it back. Through a file object, so only for a background thread (a
    Ctrl-C in torch's per-chunk callback would abort the process; signals reach the main thread only)."""
    path = Path(path)
    state = to_cpu(obj)
    seen: list[tuple[int, str]] = []

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            out = _HashingFile(f)
            torch.save(state, out)
            seen.append((out.size, out.hash.hexdigest()))

    _write(path, write, _tensor_bytes(state))
    return seen[-1]


def snapshot(obj: Any, buffers: dict | None = None) -> Any:
    """A copy of `obj` whose tensors are on the host and no longer change when training goes on: each tensor
    copied into a host buffer (pinned for CUDA tensors, with one synchronisation at the end). `buffers`
    (index → tensor), when given, keeps the buffers from one snapshot to the next, so later snapshots are
    plain copies into memory already in place; the caller must not snapshot again while a write of the
    previous one is still reading them. What a background checkpoint writes."""
    counter = [0]
    cuda = [False]

    def copy(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            t = value.detach()
            cuda[0] = cuda[0] or t.is_cuda
            i = counter[0]
            counter[0] += 1
            buf = buffers.get(i) if buffers is not None else None
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
                if buffers is not None:
                    buffers[i] = buf
            buf.copy_(t, non_blocking=t.is_cuda)
            return buf
        if isinstance(value, dict):
            return {k: copy(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(copy(v) for v in value)
        return value

    out = copy(obj)
    if cuda[0]:
        torch.cuda.synchronize()
    return out


class BackgroundWriter:
    """At most one write at a time in a background thread (mid-cycle checkpoints: training goes on while
    they are written). `submit(fn)` first waits for the previous write; `wait()` joins it and raises its
    error (an OSError such as a full disk keeps its type, so the caller reports it as it would a write of
    its own)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def submit(self, fn: Callable[[], None]) -> None:
        self.wait()

        def run() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001  (raised in the training thread by wait())
                self._error = e

        self._thread = threading.Thread(target=run, name="hepc-checkpoint-writer", daemon=True)
        self._thread.start()


def load_state(path: Path) -> Any:
    # weights_only: a state file is data, never code to unpickle
    return torch.load(path, map_location="cpu", weights_only=True)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def write_text(path: Path, text: str) -> None:
    _write(Path(path), lambda tmp: tmp.write_text(text))


def to_cpu(obj: Any) -> Any:
    """Recursively copy tensors inside dicts / lists / tuples to CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
