"""The store (`runs/` by default): immutable objects by key, resumable work dirs, leases, run records.

    objects/<kind>/<name>-<key12>/   committed, immutable; manifest.json written last, then renamed in
    work/<key>/                      resumable scratch of an in-flight step
    tmp/                             staging; commit = rename into objects/ (first writer wins)
    leases/<key>                     one lease per running step (pid, host, heartbeat: see store_lease.py)
    records/<spec-name>/<run-id>/    each run: resolved spec, plan, events.jsonl
    verified/<kind>-<dirname>        stat signatures of objects verified intact (a cache, see verify.py)
    verified-index.json              the same for every object a run found intact, in one file (see verify.py)
    quarantine/<stamp>/<kind>/<dir>  damaged objects moved aside by `hepc run` (kept for inspection)
    trash/<stamp>/                   phase 1 of `hepc gc --yes` (unreachable objects, deleted in phase 2)

    hepc-store.json                  the marker: format version, written when the store is created

Reading never creates anything: `hepc plan` on a missing store writes nothing. Writing or deleting
needs the marker: a command that writes into (or deletes from) a folder that exists, is not empty
and has no marker refuses it, so a mistyped `--store` can never empty an unrelated folder. The
store's own folders must be real folders: one that is a symbolic link is refused for writing (and
skipped by `hepc gc`), so nothing is ever written or deleted outside the store root.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

from hepc.compile.graph import StepSpec
from hepc.errors import StoreError
from hepc.store import lease as store_lease
from hepc.store.layout import FORMAT, MANIFEST, MARKER, SUBDIRS, is_committed, safe_component, write_json_atomic
from hepc.store.lease import Lease
from hepc.store.safe_io import os_error_message, read_json
from hepc.store.verify import (
    SELF_DIGEST,
    Damaged,
    check_object,
    check_object_sigs,
    file_digest,
    index_intact,
    index_label,
    manifest_digest,
    quarantine,
    read_checked,
    read_index,
    read_manifest,
    record_sig,
    write_index,
)


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._index: dict[str, dict[str, Path]] = {}
        # (kind, key12) whose manifest this process has seen since the last refresh of that kind: a
        # commit is never undone except by quarantine/gc, which refresh; so `find` stats it once
        self._manifest_seen: set[tuple[str, str]] = set()
        self._sigs: dict[str, dict] | None = None  # verified-index.json as read once (see verify.py)
        self._sig_updates: dict[str, dict] = {}  # entries to merge into it (save_index)
        self._sig_drops: set[str] = set()

    # ------------------------------------------------------------------ layout
    @property
    def objects(self) -> Path:
        return self.root / "objects"

    def work_dir(self, key: str) -> Path:
        return self.root / "work" / safe_component(key)

    def lease_path(self, key: str) -> Path:
        return self.root / "leases" / safe_component(key)

    def sig_path(self, obj: Path) -> Path:
        return self.root / "verified" / f"{obj.parent.name}-{obj.name}"

    # ------------------------------------------------------------------ marker and layout
    def marker_problem(self) -> str | None:
        """Why this folder may not be written as a store (None: it is an hepc store of a known format)."""
        root = self.root
        if not root.exists():
            return f"{root}: no store here"
        if not root.is_dir():
            return f"{root}: store path exists and is not a folder"
        try:
            marker = read_json(root / MARKER, 1 << 16)
        except FileNotFoundError:
            return (
                f"{root}: not an hepc store (no {MARKER}); refusing to write or delete anything here. "
                "Point --store (or $HEPC_STORE, runtime.store) at an hepc store or at a new folder; "
                f"a store written by an older hepc is adopted with `hepc verify --adopt --store {root}`"
            )
        except (OSError, ValueError) as e:
            return f"{root / MARKER}: unreadable store marker ({type(e).__name__}); refusing to use this store"
        fmt = marker.get("format") if isinstance(marker, dict) else None
        if not isinstance(fmt, int) or isinstance(fmt, bool):
            return f"{root / MARKER}: store marker without a format version; refusing to use this store"
        if fmt > FORMAT:
            return f"{root}: store format {fmt} was written by a newer hepc (this one reads format {FORMAT})"
        return None

    def layout_problems(self) -> dict[str, str]:
        """Store folders that are not real folders inside the store: {name: what is wrong}."""
        problems = {}
        for sub in SUBDIRS:
            p = self.root / sub
            if p.is_symlink():
                try:
                    target = os.readlink(p)
                except OSError:
                    target = "?"
                problems[sub] = f"{p} is a symbolic link (to {target}); a store's folders must be real folders"
            elif p.exists() and not p.is_dir():
                problems[sub] = f"{p} is not a folder"
        if "objects" not in problems and self.objects.is_dir():
            for entry in os.scandir(self.objects):  # objects/<kind>: a handful of entries
                if entry.is_symlink():
                    problems[f"objects/{entry.name}"] = (
                        f"{entry.path} is a symbolic link; a store's folders must be real folders"
                    )
        return problems

    def has_marker(self) -> bool:
        """Whether the folder carries the store marker (cached once true)."""
        if not getattr(self, "_marked", False):
            self._marked = (self.root / MARKER).is_file()
        return self._marked

    def require_store(self) -> None:
        """Raise StoreError unless this folder carries the marker of a store this hepc can write."""
        problem = self.marker_problem()
        if problem:
            raise StoreError(problem)

    def create_marker(self) -> None:
        write_json_atomic(self.root / MARKER, {"format": FORMAT, "created": time.time(), "tool": "hepc"})

    def open_for_writing(self) -> None:
        """Create the store (with its marker) if the folder is missing or empty, check it is a store
        and that its folders are real folders, create them. Every writer calls this first."""
        if getattr(self, "_writable", False):
            return
        root = self.root
        try:
            if root.exists() and not root.is_dir():
                raise StoreError(f"{root}: store path exists and is not a folder")
            if not (root / MARKER).exists():
                root.mkdir(parents=True, exist_ok=True)
                # Empty but for other processes' marker temp files: a new store (they write the same marker).
                if any(not e.name.startswith(f".{MARKER}.") for e in os.scandir(root)):
                    self.require_store()  # raises: a folder with content and no marker is not ours
                self.create_marker()
            self.require_store()
            self._set_aside_junk()
            problems = self.layout_problems()
            if problems:
                raise StoreError(next(iter(problems.values())) + "; refusing to write through it")
            for sub in ("objects", "work", "tmp", "leases", "records"):
                (root / sub).mkdir(exist_ok=True)
        except OSError as e:
            raise StoreError(os_error_message(e, root)) from None
        self._writable = True

    def _ensure(self) -> None:
        self.open_for_writing()

    # ------------------------------------------------------------------ lookup
    def _kind_index(self, kind: str) -> dict[str, Path]:
        if kind not in self._index:
            idx: dict[str, Path] = {}
            folder = self.objects / safe_component(kind)
            if folder.is_dir() and not folder.is_symlink():
                for entry in os.scandir(folder):
                    name = entry.name
                    if entry.is_dir(follow_symlinks=False) and len(name) > 13 and name[-13] == "-":
                        idx[name[-12:]] = Path(entry.path)
            self._index[kind] = idx
        return self._index[kind]

    def refresh(self, kind: str | None = None) -> None:
        """Forget what was seen of objects/ (other processes commit, gc and quarantine move things)."""
        if kind is None:
            self._index.clear()
            self._manifest_seen.clear()
        else:
            self._index.pop(kind, None)
            self._manifest_seen = {seen for seen in self._manifest_seen if seen[0] != kind}

    def find(self, step: StepSpec, *, fresh: bool = False) -> Path | None:
        """The committed object of `step`, or None. A folder is committed once its manifest exists.

        fresh=True looks at the disk again instead of trusting what this process saw before."""
        if fresh:
            direct = self.objects / step.kind / safe_component(step.dirname)
            if is_committed(direct):
                self._kind_index(step.kind)[step.key12] = direct
                return direct
            self.refresh(step.kind)
        path = self._kind_index(step.kind).get(step.key12)
        if path is None:
            return None
        seen = (step.kind, step.key12)
        if seen not in self._manifest_seen:
            if not is_committed(path):
                return None
            self._manifest_seen.add(seen)
        return path

    def manifest(self, path: Path) -> dict:
        """The manifest of a committed object, its own digest checked (damage raises StoreError naming it)."""
        manifest, problems = read_manifest(path)
        if manifest is None:
            self.distrust(path)
            raise Damaged(path, tuple(problems))
        return manifest

    def check(self, path: Path, *, full: bool = False) -> list[str]:
        """Problems of a committed object (see hepc.store.verify); full=False hashes only what changed.
        The verification caches are used (and written) only in a folder that carries the marker:
        full=False first compares the object with its entry in `verified-index.json`."""
        if not self.has_marker():
            return check_object(path, full=full)
        label = index_label(path)
        if not full and index_intact(path, self._sig_index().get(label)):
            return []
        problems, entry = check_object_sigs(path, full=full, sig_file=self.sig_path(path))
        if entry is not None:
            self._sig_updates[label] = entry
            self._sig_drops.discard(label)
        else:
            self._sig_updates.pop(label, None)
            self._sig_drops.add(label)
        if self._sigs is not None:
            self._sigs.pop(label, None)  # only the entry recorded now (in _sig_updates) may be trusted
        return problems

    def _sig_index(self) -> dict[str, dict]:
        if self._sigs is None:
            self._sigs = read_index(self.root)
        return self._sigs

    def save_index(self) -> None:
        """Merge what this process verified into `verified-index.json` (a writer, after a check pass)."""
        if not (self._sig_updates or self._sig_drops) or not self.has_marker():
            return
        if write_index(self.root, self._sig_updates, self._sig_drops):
            if self._sigs is not None:
                self._sigs.update(self._sig_updates)
            self._sig_updates, self._sig_drops = {}, set()

    def find_intact(self, step: StepSpec, *, full: bool = False) -> Path | None:
        """`find`, but a damaged object raises StoreError naming it (for anything read to be shown).
        full=True hashes every file (for objects whose bytes are then consumed whole)."""
        path = self.find(step)
        if path is None:
            return None
        problems = self.check(path, full=full)
        if problems:
            self.distrust(path)
            raise StoreError(
                f"damaged object {step.kind}/{path.name}: {'; '.join(problems)}; not used "
                "(`hepc run` moves it to quarantine/ and recomputes it; `hepc verify` lists every damaged object)"
            )
        return path

    def read_checked(self, path: Path, name: str) -> bytes:
        """File `name` of the committed object `path`, read once and checked against its recorded digest
        on the bytes read (never trusted through a stat signature). Damage raises StoreError naming the
        object, after dropping every signature that vouched for it (the next run re-hashes it)."""
        try:
            return read_checked(path, name)
        except Damaged:
            self.distrust(path)
            raise
        except OSError as e:
            raise StoreError(f"{path / name}: unreadable ({os_error_message(e, self.root)}); run `hepc verify`") from None

    def read_object_json(self, path: Path, name: str):
        """A JSON file of a committed object, its bytes checked against their digest as they are read."""
        data = self.read_checked(path, name)
        try:
            return json.loads(data)
        except ValueError as e:
            raise StoreError(f"{path / name}: unreadable ({type(e).__name__}); run `hepc verify`") from None

    def forget_index_entries(self, labels: set[str]) -> None:
        """Drop these entries from `verified-index.json` at the next `save_index`."""
        self._sig_drops |= labels

    def distrust(self, path: Path, *, now: bool = True) -> None:
        """Forget every signature that vouched for the object at `path` (its `verified/` file and its
        entry in `verified-index.json`): the next check of it hashes every byte, so damage found by a
        reader or by `hepc verify` is quarantined and recomputed by the next `hepc run`. now=False
        leaves the index entry's removal to the next `save_index`."""
        label = index_label(path)
        self._sig_updates.pop(label, None)
        if self._sigs is not None:
            self._sigs.pop(label, None)
        if not now:
            self._sig_drops.add(label)
        if not self.has_marker():
            return
        try:
            self.sig_path(path).unlink(missing_ok=True)
        except OSError:
            pass
        if now:
            write_index(self.root, {}, {label})

    def orphan(self, step: StepSpec) -> Path | None:
        """The object folder of `step` if it exists without a manifest (half-deleted, never a commit
        in flight: a commit renames a complete folder in)."""
        direct = self.objects / step.kind / safe_component(step.dirname)
        if direct.is_dir() and not direct.is_symlink() and not (direct / MANIFEST).exists():
            return direct
        return None

    def quarantine(self, path: Path, *, recheck: bool = True) -> Path | None:
        """Move a damaged object aside to quarantine/ so that it is recomputed; returns where it went."""
        self.open_for_writing()
        moved = quarantine(path, self.root / "quarantine", recheck=recheck)
        self.refresh(path.parent.name)
        self.distrust(path, now=False)  # a run saves its index once its check pass is done
        return moved

    def work_status(self, key: str) -> dict | None:
        """What a previous attempt left in work/<key>: {'state': 'resumable'|'failed', ...} or None."""
        work = self.work_dir(key)
        for name, state in (("failed.json", "failed"), ("progress.json", "resumable")):
            f = work / name
            if f.is_file():
                try:
                    info = read_json(f, 1 << 20)
                except (OSError, ValueError):
                    info = {}
                if not isinstance(info, dict):
                    info = {}
                return {"state": state, **info}
        return None

    # ------------------------------------------------------------------ writing
    def stage(self, step: StepSpec) -> Path:
        self._ensure()
        path = self.root / "tmp" / f"{safe_component(step.dirname)}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def prepare_work(self, step: StepSpec) -> Path:
        self._ensure()
        work = self.work_dir(step.key)
        if work.is_symlink() or (work.exists() and not work.is_dir()):
            self.set_aside(work)  # never write (or delete) through a link out of the store
        work.mkdir(parents=True, exist_ok=True)
        (work / "failed.json").unlink(missing_ok=True)
        for partial in work.glob(".*.tmp-*"):  # half-written checkpoints of killed attempts
            pid = partial.name.rsplit("-", 1)[-1]
            try:
                idle = time.time() - partial.stat().st_mtime > store_lease.lease_timeout_s()
            except OSError:
                continue
            if pid.isdigit() and not store_lease.pid_alive(int(pid)) and idle:
                partial.unlink(missing_ok=True)
        return work

    def _set_aside_junk(self) -> None:
        """A plain file where a store folder (or objects/<kind>) belongs is junk: set it aside into
        quarantine/ (and say so) so that a run can create the folder, instead of failing forever."""
        junk = [self.root / sub for sub in SUBDIRS if sub != "quarantine"]
        if self.objects.is_dir() and not self.objects.is_symlink():
            junk += [Path(e.path) for e in os.scandir(self.objects)]
        for path in junk:
            if path.is_file() and not path.is_symlink():
                moved = self.set_aside(path)
                print(f"warning: {path} is a file where a folder belongs; moved to {moved}", file=sys.stderr)

    def set_aside(self, path: Path) -> Path:
        """Move something that does not belong at `path` (a link, a file) into quarantine/."""
        dest = self.root / "quarantine" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        dest.mkdir(parents=True, exist_ok=True)
        os.rename(path, dest / path.name)
        return dest / path.name

    def commit(self, step: StepSpec, staged: Path, summary: dict, provenance: dict) -> Path:
        """Record file digests, write the manifest last, rename into objects/ (first writer wins)."""
        files = {}
        for f in sorted(staged.rglob("*")):
            if f.is_file():
                rel = f.relative_to(staged).as_posix()
                files[rel] = {"size": f.stat().st_size, "xxh3_128": file_digest(f)}
        manifest = {
            "key": step.key,
            "kind": step.kind,
            "name": step.name,
            "params": step.params,
            "inputs": step.inputs,
            "files": files,
            "summary": summary,
            "provenance": provenance,
        }
        manifest[SELF_DIGEST] = manifest_digest(json.loads(json.dumps(manifest)))
        write_json_atomic(staged / MANIFEST, manifest)
        dest_dir = self.objects / safe_component(step.kind)
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / safe_component(step.dirname)
        for attempt in range(3):
            try:
                os.rename(staged, dest)
            except OSError:
                if is_committed(dest):  # another process committed the same step first
                    shutil.rmtree(staged, ignore_errors=True)
                    break
                if attempt < 2 and os.path.lexists(dest):
                    # in the way: a folder without a manifest, a manifest that is a folder, a FIFO or a link,
                    # a plain file or a link where the object's folder belongs: set aside, then commit
                    self.quarantine(dest, recheck=False)
                    continue
                raise
            record_sig(dest, self.sig_path(dest))  # just hashed: trusted until a file changes
            break
        self._kind_index(step.kind)[step.key12] = dest
        return dest

    def mark_failed(self, step: StepSpec, error: str) -> None:
        work = self.work_dir(step.key)
        work.mkdir(parents=True, exist_ok=True)
        write_json_atomic(work / "failed.json", {"error": error, "time": time.time()})

    def finish_work(self, step: StepSpec) -> None:
        shutil.rmtree(self.work_dir(step.key), ignore_errors=True)

    # ------------------------------------------------------------------ leases
    def lease(self, step: StepSpec) -> Lease:
        """Take `leases/<key>` for `step` (raises LeaseBusy while a live process holds it).

        Use as a context manager; the lease heartbeats in the background until released."""
        self._ensure()
        return store_lease.acquire(self.lease_path(step.key), f"{step.kind} {step.dirname}")

    def clear_stale_leases(self, keys: set[str]) -> None:
        """Remove leases of `keys` whose holders are gone (a process killed after committing)."""
        folder = self.root / "leases"
        if not folder.is_dir():
            return
        for entry in os.scandir(folder):
            if entry.name in keys:
                store_lease.remove_if_stale(Path(entry.path))

    # ------------------------------------------------------------------ run records
    def open_record(self, spec_name: str, resolved: dict, plan: dict) -> RunRecord:
        self._ensure()
        run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        parent = self.root / "records" / safe_component(spec_name)
        if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
            raise StoreError(f"{parent} is not a folder of run records (it should be a folder); move it away")
        folder = parent / run_id
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / "spec.json", resolved)
            write_json_atomic(folder / "plan.json", plan, compact=True)
        except OSError as e:
            shutil.rmtree(folder, ignore_errors=True)  # nothing half-written: a record has both files or none
            raise StoreError(f"cannot write the run record: {os_error_message(e, self.root)}") from None
        return RunRecord(folder)


class RunRecord:
    """Append-only events of one `hepc run` invocation (one line per event, written with O_APPEND)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def event(self, event: str, **fields) -> None:
        """Append one event; a full or read-only disk is a StoreError naming the record."""
        line = json.dumps({"t": round(time.time(), 3), "event": event, **fields}, sort_keys=True)
        try:
            with open(self.folder / "events.jsonl", "a") as f:
                f.write(line + "\n")
        except OSError as e:
            raise StoreError(f"cannot write the run record: {os_error_message(e, self.folder.parents[2])}") from None

    def try_event(self, event: str, **fields) -> None:
        """`event` on a path that is already failing: never masks the error being reported."""
        try:
            self.event(event, **fields)
        except StoreError:
            pass
