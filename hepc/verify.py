"""Integrity of committed objects: every file's size and xxh3_128 digest are recorded in the manifest
(which carries a digest of itself); a damaged object is reported by name, never silently used.

Full checks hash every file (`hepc verify`). Runs use a cheaper check that is just as strict for
any change made through the filesystem: after an object has been fully verified (or committed), the
stat signature of each file (size, mtime, ctime, inode) is cached in `verified/`; while it still
matches, the object is trusted without hashing, and any write, truncation, replacement or even an
mtime reset (ctime cannot be set back) forces a full re-hash. Silent media corruption is what
`hepc verify` is for.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import xxhash

from hepc.safe_io import open_regular, read_json

MANIFEST = "manifest.json"
MANIFEST_LIMIT = 256 << 20
SELF_DIGEST = "manifest_xxh3_128"


def file_digest(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open_regular(path) as f:  # never blocks on a FIFO planted where a file was
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_digest(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != SELF_DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return xxhash.xxh3_128_hexdigest(text.encode())


def safe_relpath(rel: str) -> bool:
    """A file name recorded in a manifest: relative, inside the object, no '..'."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        return False
    p = PurePosixPath(rel)
    return not p.is_absolute() and all(part not in ("", ".", "..") for part in p.parts)


@dataclass(frozen=True)
class Damage:
    path: Path  # the object folder
    problems: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"

    def __str__(self) -> str:
        return f"{self.label}: {'; '.join(self.problems)}"


def read_manifest(obj: Path) -> tuple[dict | None, list[str]]:
    try:
        manifest = read_json(obj / MANIFEST, MANIFEST_LIMIT)
    except FileNotFoundError:
        return None, ["manifest.json is missing"]
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return None, [f"manifest.json is unreadable ({type(e).__name__})"]
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None, ["manifest.json has no file list"]
    if SELF_DIGEST in manifest and manifest[SELF_DIGEST] != manifest_digest(manifest):
        return None, ["manifest.json was altered (its own digest does not match)"]
    key = manifest.get("key")
    if not isinstance(key, str) or not obj.name.endswith(key[:12]):
        return None, ["manifest.json belongs to another object"]
    return manifest, []


def _stat_sig(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _sizes_and_files(obj: Path, manifest: dict) -> tuple[list[str], dict[str, list[int]]]:
    problems: list[str] = []
    sigs: dict[str, list[int]] = {}
    files = manifest["files"]
    for rel, info in sorted(files.items()):
        if not safe_relpath(rel) or not isinstance(info, dict):
            problems.append(f"manifest names an invalid file {rel!r}")
            continue
        try:
            sig = _stat_sig(obj / rel)
        except FileNotFoundError:
            problems.append(f"{rel} is missing")
            continue
        except OSError as e:
            problems.append(f"{rel} is unreadable ({e.strerror})")
            continue
        if sig[0] != info.get("size"):
            problems.append(f"{rel} has {sig[0]} bytes, expected {info.get('size')} (truncated or altered)")
            continue
        sigs[rel] = sig
    try:
        present = {p.relative_to(obj).as_posix() for p in obj.rglob("*") if p.is_file() or p.is_symlink()}
    except OSError:
        present = set()
    extra = sorted(present - set(files) - {MANIFEST})
    if extra:
        problems.append(f"unexpected file(s) {', '.join(extra[:3])}")
    try:
        sigs[MANIFEST] = _stat_sig(obj / MANIFEST)
    except OSError:
        pass
    return problems, sigs


def check_object(obj: Path, *, full: bool = True, sig_file: Path | None = None) -> list[str]:
    """Problems of the committed object `obj` (empty: intact).

    full=False trusts files whose stat signature equals the one cached in `sig_file` after the last
    full check; anything else is hashed. A successful hash refreshes `sig_file`.
    """
    manifest, problems = read_manifest(obj)
    if manifest is None:
        return problems
    problems, sigs = _sizes_and_files(obj, manifest)
    if problems:
        return problems
    if not full and sig_file is not None and _read_sig(sig_file) == sigs:
        return []
    for rel, info in sorted(manifest["files"].items()):
        try:
            digest = file_digest(obj / rel)
        except OSError as e:
            problems.append(f"{rel} is unreadable ({e.strerror})")
            continue
        if digest != info.get("xxh3_128"):
            problems.append(f"{rel} does not match its recorded digest (altered)")
    if not problems and sig_file is not None:
        record_sig(obj, sig_file, sigs)
    return problems


def record_sig(obj: Path, sig_file: Path, sigs: dict | None = None) -> None:
    """Remember that `obj` was verified as it is now (called after a commit or a full check)."""
    try:
        if sigs is None:
            manifest, problems = read_manifest(obj)
            if manifest is None:
                return
            problems, sigs = _sizes_and_files(obj, manifest)
            if problems:
                return
        sig_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = sig_file.with_name(f".{sig_file.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(sigs, sort_keys=True))
        os.replace(tmp, sig_file)
    except OSError:
        pass  # a cache: losing it costs one re-hash


def _read_sig(sig_file: Path) -> dict | None:
    try:
        return read_json(sig_file, MANIFEST_LIMIT)
    except (OSError, ValueError):
        return None


def quarantine(obj: Path, quarantine_root: Path, *, recheck: bool = True) -> Path | None:
    """Move a damaged object out of objects/ (kept for inspection); None if it was gone already.

    If the object at that path turns out intact after the move (another process quarantined the
    damaged one and committed a fresh copy in between), it is put back.
    """
    dest = quarantine_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    dest = dest / obj.parent.name / obj.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(obj, dest)
    except FileNotFoundError:
        return None
    if recheck and not check_object(dest, full=True):
        try:
            os.rename(dest, obj)
        except OSError:
            pass
        return None
    return dest


def iter_objects(objects_root: Path):
    """Every committed-looking folder objects/<kind>/<name>-<key12>."""
    if not objects_root.is_dir():
        return
    for kind in sorted(os.scandir(objects_root), key=lambda e: e.name):
        if not kind.is_dir(follow_symlinks=False):
            continue
        for entry in sorted(os.scandir(kind.path), key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                yield Path(entry.path)


def verify_objects(store, objects: list[Path] | None = None) -> tuple[list[Path], list[Damage]]:
    """Fully check `objects` (default: every object in the store). Returns (checked, damaged)."""
    checked, damaged = [], []
    for obj in objects if objects is not None else list(iter_objects(store.objects)):
        checked.append(obj)
        problems = check_object(obj, full=True, sig_file=store.sig_path(obj))
        if problems:
            damaged.append(Damage(obj, tuple(problems)))
    return checked, damaged


def check_checkpoints(store) -> list[tuple[Path, str]]:
    """(path, problem) of every mid-cycle checkpoint in work/ that does not match its digest."""
    from hepc.ckpt_digest import check_digest

    work = store.root / "work"
    if not work.is_dir() or work.is_symlink():
        return []
    damaged = []
    for folder in sorted(work.iterdir()):
        ckpt = folder / "ckpt.pt"
        if folder.is_dir() and not folder.is_symlink() and ckpt.exists():
            problem = check_digest(ckpt)
            if problem:
                damaged.append((ckpt, problem))
    return damaged
