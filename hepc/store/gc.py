"""Garbage collection: remove what no recorded (or named) spec can reach, in two phases.

Reachable = every step key of the graphs recorded in `records/<spec>/<run>/` (the plan each run
recorded lists every key of its graph; a record without a readable plan is recompiled from its
resolved spec; a record that is neither readable nor recompilable keeps *everything*, said so),
plus the graphs of the specs named on the command line.

Phase 1 renames what is unreachable into `trash/<stamp>/` (a rename: instant, and a concurrent run
that finds an input missing recomputes it). Phase 2 reads the records again, puts back anything a
run started meanwhile has made reachable, and deletes the rest. Leased work is never touched:
folders are listed *before* the leases are read (a staging or work folder listed earlier than a
lease was taken belongs to that lease), a work folder is moved only while gc itself holds its
step's lease, and a lease is removed only through the race-free take-over of store_lease.

Safety: gc works only on a folder that carries the store marker (hepc.store.objects), never follows a
symbolic link (a store folder that is one is skipped, with a warning), and never moves or deletes a
path whose parent does not resolve inside the store root. What it reads from records is bounded
(a plan of more than PLAN_LIMIT bytes counts as unreadable).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from hepc.errors import StoreError, printable
from hepc.store.lease import LeaseBusy, acquire, describe, is_stale, is_suspect, pid_alive, read_lease, remove_if_stale
from hepc.store.objects import Store
from hepc.store.safe_io import os_error_message, read_json, read_small
from hepc.store.verify import iter_objects

LEFTOVER_AGE_S = 3600.0  # tombstones and private lease files older than this are leftovers
PLAN_LIMIT = 64 << 20  # a recorded plan.json larger than this is not read (paper scale: a few MB)
SPEC_LIMIT = 16 << 20


@dataclass
class Item:
    kind: str  # object | work | staging | quarantine | trash | lease | cache
    path: Path
    bytes: int
    why: str

    @property
    def label(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}" if self.kind == "object" else self.path.name


@dataclass
class Reachability:
    keys: set[str] = field(default_factory=set)
    keep_all: bool = False
    records: int = 0
    specs: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def holds(self, key12: str) -> bool:
        return self.keep_all or key12 in self._key12s

    def freeze(self) -> Reachability:
        self._key12s = {k[:12] for k in self.keys}
        return self


def tree_bytes(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        try:
            return path.lstat().st_size
        except OSError:
            return 0
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


# --------------------------------------------------------------------------- reachability


def _plan_keys(folder: Path) -> set[str] | None:
    try:
        plan = read_json(folder / "plan.json", PLAN_LIMIT)
        keys = {s["key"] for s in plan["steps"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return keys if all(isinstance(k, str) and len(k) >= 12 for k in keys) else None


def _recompiled_keys(folder: Path) -> set[str] | None:
    """Recompile a record's resolved spec (a JSON document is YAML). Data named by relative paths
    cannot be found from here: such a record stays unknown (and so keeps everything)."""
    from hepc.compile.compiler import compile_spec
    from hepc.errors import HepcError
    from hepc.spec.load import load_spec

    try:
        text = read_small(folder / "spec.json", SPEC_LIMIT).decode("utf-8")
    except (OSError, ValueError):
        return None
    with tempfile.TemporaryDirectory(prefix="hepc-gc-") as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(text)
        try:
            compiled = compile_spec(load_spec(path), strict_data=True)
        except (HepcError, Exception):
            return None
    return {s.key for s in compiled.graph}


def _subdirs(folder: Path) -> list[Path]:
    """Real sub-folders of `folder`, sorted (symbolic links and files are not followed)."""
    try:
        return sorted(Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def reachable(store: Store, named: list | None = None) -> Reachability:
    """Keys reachable from every run record in the store plus the compiled specs in `named`."""
    out = Reachability()
    records = store.root / "records"
    if records.is_dir() and not records.is_symlink():
        for spec_dir in _subdirs(records):
            for run in _subdirs(spec_dir):
                out.records += 1
                out.specs.add(printable(spec_dir.name))
                label = printable(f"{spec_dir.name}/{run.name}")
                keys = _plan_keys(run)
                if keys is None:
                    keys = _recompiled_keys(run)
                    if keys is not None:
                        out.notes.append(f"record {label}: no readable plan; recompiled its spec")
                if keys is None:
                    out.keep_all = True
                    out.notes.append(
                        f"record {label} is unreadable and its spec cannot be recompiled: "
                        "keeping every object (remove or repair that record to collect garbage)"
                    )
                    continue
                out.keys |= keys
    for compiled in named or []:
        out.keys |= {s.key for s in compiled.graph}
        out.specs.add(compiled.spec.name)
    return out.freeze()


# --------------------------------------------------------------------------- what would go


def _leases(store: Store) -> tuple[set[str], list[str]]:
    """(keys whose lease protects them, notes on suspect leases). Stale leases protect nothing; a
    suspect one (heartbeat far in the future) protects its step and is reported."""
    live, notes = set(), []
    folder = store.root / "leases"
    if folder.is_dir() and not folder.is_symlink():
        for p in sorted(folder.iterdir()):
            if p.name.startswith("."):
                continue
            info = read_lease(p)
            if info is None or is_stale(info):
                continue
            live.add(p.name)
            if is_suspect(info):
                notes.append(
                    f"lease {p.name[:12]} looks suspect ({describe(info)}); if no hepc process holds it, "
                    f"clear it with `hepc unlock {p.name[:12]} --store {store.root}`"
                )
    return live, notes


def _entries(store: Store, sub: str) -> list[Path]:
    folder = store.root / sub
    if not folder.is_dir() or folder.is_symlink():
        return []
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


def garbage(store: Store, reach: Reachability, notes: list[str] | None = None) -> list[Item]:
    """Everything gc would remove, each with its size and the reason. Folders are listed first and
    the leases read afterwards, so that anything a run creates meanwhile is either not listed or
    protected by its lease."""
    notes = notes if notes is not None else []
    skipped = store.layout_problems()
    for sub, problem in skipped.items():
        notes.append(f"{problem}: gc does not follow it and leaves it alone")
    objects = [] if "objects" in skipped else list(iter_objects(store.objects))
    listing = {sub: ([] if sub in skipped else _entries(store, sub))
               for sub in ("work", "tmp", "quarantine", "trash", "leases", "verified")}
    live, lease_notes = _leases(store)  # read after listing: see the docstring
    notes.extend(lease_notes)
    live12 = {k[:12] for k in live}
    items: list[Item] = []
    if not reach.keep_all:
        for obj in objects:
            key12 = obj.name[-12:]
            if not reach.holds(key12) and key12 not in live12:
                items.append(Item("object", obj, tree_bytes(obj), "not reachable from any recorded or named spec"))
    committed = {obj.name[-12:] for obj in objects}
    for w in listing["work"]:
        if w.name in live:
            continue
        if w.name[:12] in committed:
            items.append(Item("work", w, tree_bytes(w), "leftover of a step that is committed"))
        elif not reach.keep_all and not reach.holds(w.name[:12]):
            items.append(Item("work", w, tree_bytes(w), "resumable work of an unreachable step"))
    for t in listing["tmp"]:
        dirname = t.name.rsplit(".", 2)[0]
        if dirname[-12:] not in live12:
            items.append(Item("staging", t, tree_bytes(t), "staging of an attempt that did not commit"))
    for sub, kind, why in (("quarantine", "quarantine", "damaged object moved aside by `hepc run`"),
                           ("trash", "trash", "left by an interrupted `hepc gc`")):
        for q in listing[sub]:
            if kind == "trash" and _gc_alive(q.name):
                if notes is not None:
                    notes.append(f"{q} belongs to a gc still running (pid {q.name.split('~')[2]} on this host): "
                                 "left for it to finish")
                continue
            items.append(Item(kind, q, tree_bytes(q), why))
    now = time.time()
    for p in listing["leases"]:
        if not p.name.startswith(".") and p.name not in live:
            items.append(Item("lease", p, tree_bytes(p), "lease of a process that is gone"))
        elif p.name.startswith((".tomb-", ".new-", ".takeover-")):
            try:
                old = now - p.lstat().st_mtime > LEFTOVER_AGE_S
            except OSError:
                continue
            if old:
                items.append(Item("lease", p, tree_bytes(p), "leftover lease file"))
    if listing["verified"]:
        present = {f"{o.parent.name}-{o.name}" for o in objects}
        gone = {i.path.parent.name + "-" + i.path.name for i in items if i.kind == "object"}
        for v in listing["verified"]:
            if v.name not in present or v.name in gone:
                items.append(Item("cache", v, tree_bytes(v), "verification cache of a removed object"))
    return items


def _gc_alive(stamp: str) -> bool:
    """A trash folder named <time>-<host>-<pid>-<rand> belongs to a gc that is still running?"""
    parts = stamp.split("~")
    if len(parts) != 4:
        return False
    _, host, pid, _ = parts
    return host == socket.gethostname() and pid.isdigit() and pid_alive(int(pid))


# --------------------------------------------------------------------------- the two phases


@dataclass
class Collected:
    removed: list[Item]
    restored: list[str]


def inside_store(store: Store, path: Path) -> bool:
    """`path` (not followed itself) lies in a real folder inside the store root."""
    try:
        parent = os.path.realpath(path.parent)
        root = os.path.realpath(store.root)
    except (OSError, ValueError):
        return False
    return parent == root or parent.startswith(root.rstrip(os.sep) + os.sep)


def collect(store: Store, items: list[Item], named: list | None = None) -> Collected:
    """Phase 1: move `items` into trash/<stamp>/. Phase 2: re-read the records, put back what became
    reachable meanwhile, delete the rest (and older trash of dead gc runs)."""
    store.require_store()
    trash_root = store.root / "trash"
    if trash_root.is_symlink() or (trash_root.exists() and not trash_root.is_dir()):
        raise StoreError(f"{trash_root} is not a real folder inside the store; gc removes nothing until it is")
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}~{socket.gethostname()}~{os.getpid()}~{uuid.uuid4().hex[:6]}"
    trash = trash_root / stamp
    try:
        trash.mkdir(parents=True)
    except OSError as e:
        raise StoreError(f"gc removed nothing: {os_error_message(e, store.root)}") from None
    moved: list[tuple[Item, Path]] = []
    try:
        for item in items:
            if item.kind == "trash" or not inside_store(store, item.path):
                continue
            if item.kind == "lease":
                if item.path.name.startswith("."):
                    _move(item, trash, moved)
                elif remove_if_stale(item.path):  # race-free: never a lease taken meanwhile
                    moved.append((item, Path()))
                continue
            if item.kind == "work":
                if "leases" not in store.layout_problems():  # without a safe lease folder, no work moves
                    _move_work(store, item, trash, moved)
                continue
            _move(item, trash, moved)
    except OSError as e:
        raise StoreError(f"gc stopped: {os_error_message(e, store.root)} (what it moved is in {trash})") from None
    store.refresh()

    # Phase 2: a run that started after phase 1 looked may need some of it.
    reach = reachable(store, named)
    restored = []
    removed = []
    for item, dest in moved:
        if item.kind == "object" and reach.holds(item.path.name[-12:]):
            if not item.path.exists():
                try:
                    os.rename(dest, item.path)
                    restored.append(item.label)
                    continue
                except OSError:
                    pass
        removed.append(item)
    shutil.rmtree(trash, ignore_errors=True)
    for item in items:
        if item.kind == "trash" and item.path.is_symlink():  # a planted link: drop the link, never follow it
            item.path.unlink(missing_ok=True)
            removed.append(item)
        elif item.kind == "trash" and inside_store(store, item.path):
            # an interrupted gc's phase 1: put back what is reachable, drop the rest
            restored += _restore_from(store, item.path, reach)
            shutil.rmtree(item.path, ignore_errors=True)
            removed.append(item)
    store.refresh()
    _prune_index(store)
    return Collected(removed, restored)


def _prune_index(store: Store) -> None:
    """Drop the verification index's entries of objects that are no longer committed (removed here,
    quarantined, or gone by hand): the index never grows past the objects the store holds."""
    from hepc.store.layout import is_committed
    from hepc.store.verify import read_index, write_index

    stale = {label for label in read_index(store.root) if not is_committed(store.objects / label)}
    if stale:
        write_index(store.root, {}, stale)


MOVED_LOG = "moved.txt"  # in a trash folder: one line per entry gc moved there (relative path), appended as it moves


def _move(item: Item, trash: Path, moved: list) -> None:
    dest = trash / item.kind / (item.path.parent.name if item.kind == "object" else "") / item.path.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(item.path, dest)
    except FileNotFoundError:
        return  # gone meanwhile (committed work dir removed, staging renamed into objects/)
    moved.append((item, dest))
    with open(trash / MOVED_LOG, "a", encoding="utf-8") as log:  # what an interrupted gc may put back
        log.write(dest.relative_to(trash).as_posix() + "\n")


def _move_work(store: Store, item: Item, trash: Path, moved: list) -> None:
    """Move a work folder while holding its step's lease, so no run can start using it meanwhile."""
    try:
        lease = acquire(store.lease_path(item.path.name), "gc")
    except (LeaseBusy, StoreError):
        return  # a run holds it now: not garbage any more
    with lease:
        _move(item, trash, moved)


def _restore_from(store: Store, trash: Path, reach: Reachability) -> list[str]:
    """Put back, from an interrupted gc's trash folder, the objects it moved there that are reachable now.
    Only what that gc logged as moved (MOVED_LOG), each a real folder reached through real folders (no
    link at any depth): a planted link or entry never moves anything from elsewhere into the store."""
    restored = []
    try:
        log = read_small(trash / MOVED_LOG, 64 << 20).decode("utf-8", "replace").splitlines()
    except (OSError, ValueError):
        return restored  # not written by gc as it moved things: nothing of it is put back
    for rel in log:
        parts = rel.split("/")
        if len(parts) != 3 or parts[0] != "object" or any(p in ("", ".", "..") for p in parts):
            continue
        obj = trash.joinpath(*parts)
        if not _real_folders(trash, obj) or not reach.holds(obj.name[-12:]):
            continue
        dest = store.objects / parts[1] / parts[2]
        if os.path.lexists(dest) or not inside_store(store, dest):  # objects/<kind> must not lead outside
            continue
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(obj, dest)
            restored.append(f"{parts[1]}/{parts[2]}")
        except OSError:
            pass
    return restored


def _real_folders(top: Path, path: Path) -> bool:
    """`path` and every folder from `top` down to it are real folders (not links, not files)."""
    parts = path.relative_to(top).parts
    for depth in range(len(parts) + 1):
        try:
            if not stat.S_ISDIR(os.lstat(top.joinpath(*parts[:depth])).st_mode):
                return False
        except OSError:
            return False
    return True
