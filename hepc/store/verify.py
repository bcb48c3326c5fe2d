"""Integrity of committed objects: every file's size and xxh3_128 digest are recorded in the manifest
(which carries a digest of itself); a damaged object is reported by name, never silently used.

Two uses, two rules:

- *Deciding what is cached* (a run's start-up pass, `plan`) may use the stat signature: after an
  object has been fully verified (or committed), the signature of each file (size, mtime, ctime,
  inode) is cached in `verified/` and `verified-index.json`; while it matches, the object counts as
  committed without hashing. Any write, truncation, replacement or even an mtime reset (ctime cannot
  be set back) forces a full re-hash. A bit flip below the filesystem keeps every number of the
  signature, so the signature never vouches for the bytes themselves.
- *Consuming bytes* never trusts a signature: a step's inputs are hashed in full right before its
  body reads them (the hash pass also pulls them into the page cache the body then reads), and the
  files shown to a user or loaded into a model (a prior, a curve, a snapshot) are read once into
  memory and their digest checked on those very bytes (`read_checked`). Damage found either way is
  named, and every signature that vouched for the object is dropped (`Store.distrust`), so the next
  `hepc run` re-hashes it, moves it to quarantine/ and recomputes it.

`hepc verify` re-hashes every object (`--scrub` also rebuilds the signature caches from what it
hashed and reports the rate; `--repair` moves what is damaged to quarantine/ at once).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import xxhash

from hepc.errors import StoreError
from hepc.store.safe_io import open_regular, read_json

MANIFEST = "manifest.json"
MANIFEST_LIMIT = 256 << 20
SELF_DIGEST = "manifest_xxh3_128"


def file_digest(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open_regular(path) as f:  # never blocks on a FIFO planted where a file was
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checked(obj: Path, rel: str) -> bytes:
    """The bytes of file `rel` of the committed object `obj`, read once (at most the size its manifest
    records, plus one byte) and checked against its recorded digest on those same bytes; the manifest's
    own digest is checked first. Raises `Damaged` naming the object; OSError if it cannot be read."""
    manifest, problems = read_manifest(obj)
    if manifest is None:
        raise Damaged(obj, tuple(problems))
    info = manifest["files"].get(rel)
    if not safe_relpath(rel) or not isinstance(info, dict) or type(info.get("size")) is not int:
        raise Damaged(obj, (f"{rel} is not listed in its manifest",))
    try:
        with open_regular(obj / rel) as f:
            size = os.fstat(f.fileno()).st_size  # before reading: a size the manifest claims is never allocated
            if size != info["size"]:
                raise Damaged(obj, (f"{rel} has {size} bytes, expected {info['size']} (truncated or altered)",))
            data = f.read(size + 1)
    except FileNotFoundError:
        raise Damaged(obj, (f"{rel} is missing",)) from None
    if len(data) != info["size"]:
        raise Damaged(obj, (f"{rel} has {len(data)} bytes, expected {info['size']} (truncated or altered)",))
    if xxhash.xxh3_128_hexdigest(data) != info.get("xxh3_128"):
        raise Damaged(obj, (f"{rel} does not match its recorded digest (altered)",))
    return data


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


class Damaged(StoreError):
    """Bytes about to be used do not match their object's manifest: the object is named, never used."""

    def __init__(self, path: Path, problems: tuple[str, ...]):
        self.damage = Damage(path, problems)
        super().__init__(
            f"damaged object {self.damage}; not used (`hepc run` moves it to quarantine/ and recomputes it; "
            "`hepc verify` lists every damaged object)"
        )


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
    return _check(obj, full, sig_file)[0]


def check_object_sigs(obj: Path, *, full: bool = True, sig_file: Path | None = None) -> tuple[list[str], dict | None]:
    """`check_object`, and when intact the object's entry for the signature index (`index_intact`):
    the stat signatures of its folders, taken before anything is listed or hashed, and of its files,
    taken before they are hashed. None when there is nothing safe to record (see `_settled`)."""
    before = time.time_ns()
    try:
        dirs = _dir_sigs(obj)
    except OSError:
        dirs = None
    problems, sigs = _check(obj, full, sig_file)
    if problems or dirs is None or sigs is None or MANIFEST not in sigs:
        return problems, None
    entry = {"dirs": dirs, "files": sigs}
    return problems, entry if _settled(entry, before) else None


def _check(obj: Path, full: bool, sig_file: Path | None) -> tuple[list[str], dict | None]:
    manifest, problems = read_manifest(obj)
    if manifest is None:
        return problems, None
    problems, sigs = _sizes_and_files(obj, manifest)
    if problems:
        return problems, None
    if not full and sig_file is not None and _read_sig(sig_file) == sigs:
        return [], sigs
    for rel, info in sorted(manifest["files"].items()):
        try:
            digest = file_digest(obj / rel)
        except OSError as e:
            problems.append(f"{rel} is unreadable ({e.strerror})")
            continue
        if digest != info.get("xxh3_128"):
            problems.append(f"{rel} does not match its recorded digest (altered)")
    if sig_file is not None:
        if problems:
            drop_sig(sig_file)  # it vouched for bytes that are damaged
        else:
            record_sig(obj, sig_file, sigs)
    return problems, (None if problems else sigs)


def drop_sig(sig_file: Path) -> None:
    try:
        sig_file.unlink(missing_ok=True)
    except OSError:
        pass


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


# ---------------------------------------------------------------------------- the signature index
#
# `verified-index.json` (at the store root) holds, for every object a run found intact, the stat signatures of its
# folders and files at that moment: {"format": 1, "objects": {"<kind>/<dir>": {"dirs": {".": sig,
# "sub": sig}, "files": {"manifest.json": sig, "<rel>": sig, ...}}}}. A run's integrity pass reads
# this one file and stats each object against it instead of reading every manifest and listing every
# folder. Every file the manifest names is in the entry (manifest.json too: an edited manifest changes
# its signature), and so is every folder, so a file added, removed or renamed inside the object
# changes a folder's mtime/ctime. An entry that does not match in every number sends the object to
# the full path (`check_object`: manifest, listing, sizes, hashing what changed). The index is a cache:
# a missing, junk or partly lost index costs re-checking, never a false "intact".

INDEX = "verified-index.json"  # at the store root: gc counts every entry of verified/ as one object's cache
INDEX_FORMAT = 1
INDEX_LIMIT = 256 << 20
SETTLE_NS = 1_000_000_000  # see _settled


def _lstat_sig(path: Path) -> list[int]:
    st = os.lstat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _dir_sigs(obj: Path) -> dict[str, list[int]]:
    """Stat signatures of `obj` and every folder inside it ('.' for `obj` itself)."""
    out: dict[str, list[int]] = {}
    stack = [(obj, ".")]
    while stack:
        folder, rel = stack.pop()
        out[rel] = _lstat_sig(folder)
        with os.scandir(folder) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    stack.append((Path(e.path), e.name if rel == "." else f"{rel}/{e.name}"))
    return out


def _settled(entry: dict, before_ns: int) -> bool:
    """Whether every signature was last changed well before the check began. File times come from a
    coarse clock (one tick is milliseconds): a write landing in the same tick as the last change
    before the check could leave every number equal. Once the last change is more than a second
    older than the check, any later write carries a newer ctime. Younger objects are not indexed
    (they are checked the full way until they settle)."""
    limit = before_ns - SETTLE_NS
    return all(sig[2] < limit for part in ("dirs", "files") for sig in entry[part].values())


def _valid_sig(sig) -> bool:
    return isinstance(sig, list) and len(sig) == 4 and all(type(x) is int for x in sig)


def _plain_relpath(rel) -> bool:
    """`safe_relpath` without building a path object (the index holds thousands of names)."""
    return (
        isinstance(rel, str)
        and bool(rel)
        and "\\" not in rel
        and "\x00" not in rel
        and not rel.startswith("/")
        and all(part not in ("", ".", "..") for part in rel.split("/"))
    )


def _valid_entry(entry) -> bool:
    if not isinstance(entry, dict):
        return False
    dirs, files = entry.get("dirs"), entry.get("files")
    if not isinstance(dirs, dict) or not isinstance(files, dict) or "." not in dirs or MANIFEST not in files:
        return False
    return all((rel == "." or _plain_relpath(rel)) and _valid_sig(sig) for rel, sig in dirs.items()) and all(
        _plain_relpath(rel) and _valid_sig(sig) for rel, sig in files.items()
    )


def index_label(obj: Path) -> str:
    return f"{obj.parent.name}/{obj.name}"


def read_index(root: Path) -> dict[str, dict]:
    """The entries of the index in the store folder `root`; {} if it is missing, unreadable or not an index.
    Entries that are not well formed are dropped (those objects are checked the full way)."""
    try:
        data = read_json(root / INDEX, INDEX_LIMIT)
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or not isinstance(data.get("objects"), dict):
        return {}
    return {label: entry for label, entry in data["objects"].items() if isinstance(label, str) and _valid_entry(entry)}


def index_intact(obj: Path, entry: dict | None) -> bool:
    """True only if every folder and file signature recorded for `obj` equals what is there now.
    `entry` comes from `read_index` (which drops malformed entries) or `check_object_sigs`."""
    if not isinstance(entry, dict):
        return False
    try:
        for rel, sig in entry["dirs"].items():
            if _lstat_sig(obj if rel == "." else obj / rel) != sig:
                return False
        for rel, sig in entry["files"].items():
            if _stat_sig(obj / rel) != sig:
                return False
    except OSError:
        return False
    return True


def write_index(root: Path, updates: dict[str, dict], drop: set[str] = frozenset()) -> bool:
    """Merge `updates` into the index in the store folder `root` (re-read just before, so that entries written by
    others meanwhile are kept) and write it whole by a rename. Two writers racing can still lose one
    another's new entries: those objects are checked the full way next time. Returns whether it wrote."""
    try:
        entries = read_index(root)
        for label in drop:
            entries.pop(label, None)
        entries.update(updates)
        tmp = root / f".{INDEX}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "x") as f:
                json.dump({"format": INDEX_FORMAT, "objects": entries}, f, separators=(",", ":"))
            os.replace(tmp, root / INDEX)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError:
        return False  # a cache: losing it costs one full pass
    return True


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


def verify_objects(store, objects: list[Path] | None = None, *, scrub: bool = False) -> tuple[list[Path], list[Damage]]:
    """Re-hash `objects` (default: every object in the store), whatever their signatures say. Returns
    (checked, damaged). Every signature that vouched for a damaged object is dropped (the next run
    re-hashes it and recomputes it); intact ones get fresh signatures. `scrub` over the whole store
    also drops index entries of objects that are no longer there (the index is rebuilt from this pass)."""
    whole = objects is None
    checked, damaged = [], []
    for obj in list(iter_objects(store.objects)) if whole else objects:
        checked.append(obj)
        problems = store.check(obj, full=True)
        if problems:
            damaged.append(Damage(obj, tuple(problems)))
            store.distrust(obj)
    if scrub and whole:
        store.forget_index_entries(set(read_index(store.root)) - {index_label(o) for o in checked})
    store.save_index()
    return checked, damaged


def check_checkpoints(store) -> list[tuple[Path, str]]:
    """(path, problem) of every mid-cycle checkpoint in work/ that does not match its digest."""
    from hepc.store.ckpt_digest import check_digest

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
