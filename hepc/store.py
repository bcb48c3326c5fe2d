"""The store (`runs/` by default): immutable objects by key, resumable work dirs, leases, run records.

    objects/<kind>/<name>-<key12>/   committed, immutable; manifest.json written last, then renamed in
    work/<key>/                      resumable scratch of an in-flight step
    tmp/                             staging; commit = rename into objects/ (first writer wins)
    leases/<key>                     one lease per running step (pid, host, heartbeat: see store_lease.py)
    records/<spec-name>/<run-id>/    each run: resolved spec, plan, events.jsonl
    verified/<kind>-<dirname>        stat signatures of objects verified intact (a cache, see verify.py)
    quarantine/<stamp>/<kind>/<dir>  damaged objects moved aside by `hepc run` (kept for inspection)
    trash/<stamp>/                   phase 1 of `hepc gc --yes` (unreachable objects, deleted in phase 2)

Reading never creates anything: `hepc plan` on a missing store writes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

from hepc import store_lease
from hepc.errors import StoreError
from hepc.graph import StepSpec
from hepc.store_lease import Lease, LeaseBusy, LeaseLost  # noqa: F401  (re-exported)
from hepc.verify import SELF_DIGEST, check_object, file_digest, manifest_digest, quarantine, record_sig  # noqa: F401

MANIFEST = "manifest.json"
DEFAULT_STORE = "runs"


def resolve_store_path(cli_value: str | None, spec_value: str | None = None) -> Path:
    """--store beats $HEPC_STORE beats the spec's runtime.store beats ./runs."""
    return Path(cli_value or os.environ.get("HEPC_STORE") or spec_value or DEFAULT_STORE)


def write_json_atomic(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


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


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._index: dict[str, dict[str, Path]] = {}

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

    def _ensure(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root}: store path exists and is not a folder")
        for sub in ("objects", "work", "tmp", "leases", "records"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ lookup
    def _kind_index(self, kind: str) -> dict[str, Path]:
        if kind not in self._index:
            idx: dict[str, Path] = {}
            folder = self.objects / safe_component(kind)
            if folder.is_dir():
                for entry in os.scandir(folder):
                    name = entry.name
                    if entry.is_dir() and len(name) > 13 and name[-13] == "-":
                        idx[name[-12:]] = Path(entry.path)
            self._index[kind] = idx
        return self._index[kind]

    def refresh(self, kind: str | None = None) -> None:
        """Forget what was seen of objects/ (other processes commit, gc and quarantine move things)."""
        if kind is None:
            self._index.clear()
        else:
            self._index.pop(kind, None)

    def find(self, step: StepSpec, *, fresh: bool = False) -> Path | None:
        """The committed object of `step`, or None. A folder is committed once its manifest exists.

        fresh=True looks at the disk again instead of trusting what this process saw before."""
        if fresh:
            direct = self.objects / step.kind / safe_component(step.dirname)
            if (direct / MANIFEST).is_file():
                self._kind_index(step.kind)[step.key12] = direct
                return direct
            self.refresh(step.kind)
        path = self._kind_index(step.kind).get(step.key12)
        if path is None or not (path / MANIFEST).is_file():
            return None
        return path

    def manifest(self, path: Path) -> dict:
        try:
            return json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise StoreError(f"{path / MANIFEST}: unreadable manifest ({e}); run `hepc verify`") from None

    def check(self, path: Path, *, full: bool = False) -> list[str]:
        """Problems of a committed object (see hepc.verify); full=False hashes only what changed."""
        return check_object(path, full=full, sig_file=self.sig_path(path))

    def quarantine(self, path: Path) -> Path | None:
        """Move a damaged object aside to quarantine/ so that it is recomputed; returns where it went."""
        moved = quarantine(path, self.root / "quarantine")
        self.refresh(path.parent.name)
        try:
            self.sig_path(path).unlink(missing_ok=True)
        except OSError:
            pass
        return moved

    def work_status(self, key: str) -> dict | None:
        """What a previous attempt left in work/<key>: {'state': 'resumable'|'failed', ...} or None."""
        work = self.work_dir(key)
        for name, state in (("failed.json", "failed"), ("progress.json", "resumable")):
            f = work / name
            if f.is_file():
                try:
                    info = json.loads(f.read_text())
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
        try:
            os.rename(staged, dest)
        except OSError:
            if (dest / MANIFEST).is_file():  # another process committed the same step first
                shutil.rmtree(staged, ignore_errors=True)
            else:
                raise
        else:
            record_sig(dest, self.sig_path(dest))  # just hashed: trusted until a file changes
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
    def open_record(self, spec_name: str, resolved: dict, plan: dict) -> "RunRecord":
        self._ensure()
        run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        folder = self.root / "records" / safe_component(spec_name) / run_id
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "spec.json", resolved)
        write_json_atomic(folder / "plan.json", plan)
        return RunRecord(folder)


class RunRecord:
    """Append-only events of one `hepc run` invocation (one line per event, written with O_APPEND)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def event(self, event: str, **fields) -> None:
        line = json.dumps({"t": round(time.time(), 3), "event": event, **fields}, sort_keys=True)
        with open(self.folder / "events.jsonl", "a") as f:
            f.write(line + "\n")
