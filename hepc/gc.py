"""Garbage collection: remove what no recorded (or named) spec can reach, in two phases.

Reachable = every step key of the graphs recorded in `records/<spec>/<run>/` (the plan each run
recorded lists every key of its graph; a record without a readable plan is recompiled from its
resolved spec; a record that is neither readable nor recompilable keeps *everything*, said so),
plus the graphs of the specs named on the command line.

Phase 1 renames what is unreachable into `trash/<stamp>/` (a rename: instant, and a concurrent run
that finds an input missing recomputes it). Phase 2 reads the records again, puts back anything a
run started meanwhile has made reachable, and deletes the rest. Leased work is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from hepc.store import Store
from hepc.store_lease import is_stale, pid_alive, read_lease
from hepc.verify import iter_objects

LEFTOVER_AGE_S = 3600.0  # tombstones and private lease files older than this are leftovers


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

    def freeze(self) -> "Reachability":
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
        plan = json.loads((folder / "plan.json").read_text())
        keys = {s["key"] for s in plan["steps"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return keys if all(isinstance(k, str) and len(k) >= 12 for k in keys) else None


def _recompiled_keys(folder: Path) -> set[str] | None:
    """Recompile a record's resolved spec (a JSON document is YAML). Data named by relative paths
    cannot be found from here: such a record stays unknown (and so keeps everything)."""
    from hepc.compile import compile_spec
    from hepc.errors import HepcError
    from hepc.spec.load import load_spec

    try:
        text = (folder / "spec.json").read_text()
    except OSError:
        return None
    with tempfile.TemporaryDirectory(prefix="hepc-gc-") as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(text)
        try:
            compiled = compile_spec(load_spec(path), strict_data=True)
        except (HepcError, Exception):  # noqa: BLE001  (a record we cannot read must not crash gc)
            return None
    return {s.key for s in compiled.graph}


def reachable(store: Store, named: list | None = None) -> Reachability:
    """Keys reachable from every run record in the store plus the compiled specs in `named`."""
    out = Reachability()
    records = store.root / "records"
    if records.is_dir():
        for spec_dir in sorted(records.iterdir()):
            if not spec_dir.is_dir():
                continue
            for run in sorted(spec_dir.iterdir()):
                if not run.is_dir():
                    continue
                out.records += 1
                out.specs.add(spec_dir.name)
                keys = _plan_keys(run)
                if keys is None:
                    keys = _recompiled_keys(run)
                    if keys is not None:
                        out.notes.append(f"record {spec_dir.name}/{run.name}: no readable plan; recompiled its spec")
                if keys is None:
                    out.keep_all = True
                    out.notes.append(
                        f"record {spec_dir.name}/{run.name} is unreadable and its spec cannot be recompiled: "
                        "keeping every object (remove or repair that record to collect garbage)"
                    )
                    continue
                out.keys |= keys
    for compiled in named or []:
        out.keys |= {s.key for s in compiled.graph}
        out.specs.add(compiled.spec.name)
    return out.freeze()


# --------------------------------------------------------------------------- what would go


def _live_leases(store: Store) -> set[str]:
    """Keys whose lease is held by a live process (stale leases do not protect anything)."""
    live = set()
    folder = store.root / "leases"
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith("."):
                continue
            info = read_lease(p)
            if info is not None and not is_stale(info):
                live.add(p.name)
    return live


def garbage(store: Store, reach: Reachability) -> list[Item]:
    """Everything gc would remove, each with its size and the reason."""
    items: list[Item] = []
    live = _live_leases(store)
    live12 = {k[:12] for k in live}
    if not reach.keep_all:
        for obj in iter_objects(store.objects):
            key12 = obj.name[-12:]
            if not reach.holds(key12) and key12 not in live12:
                items.append(Item("object", obj, tree_bytes(obj), "not reachable from any recorded or named spec"))
    committed = {obj.name[-12:] for obj in iter_objects(store.objects)}
    work = store.root / "work"
    if work.is_dir():
        for w in sorted(work.iterdir()):
            if w.name in live:
                continue
            if w.name[:12] in committed:
                items.append(Item("work", w, tree_bytes(w), "leftover of a step that is committed"))
            elif not reach.keep_all and not reach.holds(w.name[:12]):
                items.append(Item("work", w, tree_bytes(w), "resumable work of an unreachable step"))
    tmp = store.root / "tmp"
    if tmp.is_dir():
        for t in sorted(tmp.iterdir()):
            dirname = t.name.rsplit(".", 2)[0]
            if dirname[-12:] not in live12:
                items.append(Item("staging", t, tree_bytes(t), "staging of an attempt that did not commit"))
    for sub, kind, why in (("quarantine", "quarantine", "damaged object moved aside by `hepc run`"),
                           ("trash", "trash", "left by an interrupted `hepc gc`")):
        folder = store.root / sub
        if folder.is_dir():
            for q in sorted(folder.iterdir()):
                if kind == "trash" and _gc_alive(q.name):
                    continue
                items.append(Item(kind, q, tree_bytes(q), why))
    leases = store.root / "leases"
    if leases.is_dir():
        now = time.time()
        for p in sorted(leases.iterdir()):
            if not p.name.startswith(".") and p.name not in live:
                items.append(Item("lease", p, tree_bytes(p), "lease of a process that is gone"))
            elif p.name.startswith((".tomb-", ".new-", ".takeover-")):
                try:
                    old = now - p.lstat().st_mtime > LEFTOVER_AGE_S
                except OSError:
                    continue
                if old:
                    items.append(Item("lease", p, tree_bytes(p), "leftover lease file"))
    verified = store.root / "verified"
    if verified.is_dir():
        present = {f"{o.parent.name}-{o.name}" for o in iter_objects(store.objects)}
        gone = {i.path.parent.name + "-" + i.path.name for i in items if i.kind == "object"}
        for v in sorted(verified.iterdir()):
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


def collect(store: Store, items: list[Item], named: list | None = None) -> Collected:
    """Phase 1: move `items` into trash/<stamp>/. Phase 2: re-read the records, put back what became
    reachable meanwhile, delete the rest (and older trash of dead gc runs)."""
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}~{socket.gethostname()}~{os.getpid()}~{uuid.uuid4().hex[:6]}"
    trash = store.root / "trash" / stamp
    moved: list[tuple[Item, Path]] = []
    for item in items:
        if item.kind == "trash":
            continue
        dest = trash / item.kind / (item.path.parent.name if item.kind == "object" else "") / item.path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(item.path, dest)
        except FileNotFoundError:
            continue  # gone meanwhile (committed work dir removed, staging renamed into objects/)
        moved.append((item, dest))
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
        if item.kind == "trash":  # an interrupted gc's phase 1: put back what is reachable, drop the rest
            restored += _restore_from(store, item.path, reach)
            shutil.rmtree(item.path, ignore_errors=True)
            removed.append(item)
    store.refresh()
    return Collected(removed, restored)


def _restore_from(store: Store, trash: Path, reach: Reachability) -> list[str]:
    restored = []
    folder = trash / "object"
    if not folder.is_dir():
        return restored
    for obj in iter_objects(folder):
        if reach.holds(obj.name[-12:]):
            dest = store.objects / obj.parent.name / obj.name
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.rename(obj, dest)
                    restored.append(f"{obj.parent.name}/{obj.name}")
                except OSError:
                    pass
    return restored
