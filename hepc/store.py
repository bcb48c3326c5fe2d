"""The store (`runs/` by default): immutable objects by key, resumable work dirs, leases, run records.

    objects/<kind>/<name>-<key12>/   committed, immutable; manifest.json written last, then renamed in
    work/<key>/                      resumable scratch of an in-flight step
    tmp/                             staging; commit = rename into objects/ (first writer wins)
    leases/<key>                     one lease per running step (pid, host, heartbeat)
    records/<spec-name>/<run-id>/    each run: resolved spec, plan, events.jsonl

Reading never creates anything: `hepc plan` on a missing store writes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import xxhash

from hepc.errors import StoreError
from hepc.graph import StepSpec

MANIFEST = "manifest.json"
DEFAULT_STORE = "runs"


def resolve_store_path(cli_value: str | None, spec_value: str | None = None) -> Path:
    """--store beats $HEPC_STORE beats the spec's runtime.store beats ./runs."""
    return Path(cli_value or os.environ.get("HEPC_STORE") or spec_value or DEFAULT_STORE)


def file_digest(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


class LeaseBusy(Exception):
    """Another live process holds the lease of this step."""

    def __init__(self, holder: dict):
        self.holder = holder
        super().__init__(f"held by pid {holder.get('pid')} on {holder.get('host')}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._index: dict[str, dict[str, Path]] = {}

    # ------------------------------------------------------------------ layout
    @property
    def objects(self) -> Path:
        return self.root / "objects"

    def work_dir(self, key: str) -> Path:
        return self.root / "work" / key

    def lease_path(self, key: str) -> Path:
        return self.root / "leases" / key

    def _ensure(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root}: store path exists and is not a folder")
        for sub in ("objects", "work", "tmp", "leases", "records"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ lookup
    def _kind_index(self, kind: str) -> dict[str, Path]:
        if kind not in self._index:
            idx: dict[str, Path] = {}
            folder = self.objects / kind
            if folder.is_dir():
                for entry in os.scandir(folder):
                    name = entry.name
                    if entry.is_dir() and len(name) > 13 and name[-13] == "-":
                        idx[name[-12:]] = Path(entry.path)
            self._index[kind] = idx
        return self._index[kind]

    def find(self, step: StepSpec) -> Path | None:
        """The committed object of `step`, or None. A folder is committed once its manifest exists."""
        path = self._kind_index(step.kind).get(step.key12)
        if path is None or not (path / MANIFEST).is_file():
            return None
        return path

    def manifest(self, path: Path) -> dict:
        try:
            return json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise StoreError(f"{path / MANIFEST}: unreadable manifest ({e}); run `hepc verify`") from None

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
                return {"state": state, **info}
        return None

    # ------------------------------------------------------------------ writing
    def stage(self, step: StepSpec) -> Path:
        self._ensure()
        path = self.root / "tmp" / f"{step.dirname}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def prepare_work(self, step: StepSpec) -> Path:
        self._ensure()
        work = self.work_dir(step.key)
        work.mkdir(parents=True, exist_ok=True)
        (work / "failed.json").unlink(missing_ok=True)
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
        write_json_atomic(staged / MANIFEST, manifest)
        dest_dir = self.objects / step.kind
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / step.dirname
        try:
            os.rename(staged, dest)
        except OSError:
            if (dest / MANIFEST).is_file():  # another process committed the same step first
                shutil.rmtree(staged, ignore_errors=True)
            else:
                raise
        self._kind_index(step.kind)[step.key12] = dest
        return dest

    def mark_failed(self, step: StepSpec, error: str) -> None:
        work = self.work_dir(step.key)
        work.mkdir(parents=True, exist_ok=True)
        write_json_atomic(work / "failed.json", {"error": error, "time": time.time()})

    def finish_work(self, step: StepSpec) -> None:
        shutil.rmtree(self.work_dir(step.key), ignore_errors=True)

    # ------------------------------------------------------------------ leases
    @contextmanager
    def lease(self, step: StepSpec) -> Iterator[None]:
        """Hold `leases/<key>` while a step runs. A lease of a dead local process is taken over."""
        self._ensure()
        path = self.lease_path(step.key)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "step": step.dirname, "heartbeat": time.time()}
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_lease(path)
                if holder and holder.get("host") == me["host"] and not _pid_alive(int(holder.get("pid", -1))):
                    path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                if holder is None:
                    continue
                raise LeaseBusy(holder) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            break
        else:
            raise LeaseBusy(self._read_lease(path) or {})
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    @staticmethod
    def _read_lease(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    # ------------------------------------------------------------------ run records
    def open_record(self, spec_name: str, resolved: dict, plan: dict) -> "RunRecord":
        self._ensure()
        run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        folder = self.root / "records" / spec_name / run_id
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "spec.json", resolved)
        write_json_atomic(folder / "plan.json", plan)
        return RunRecord(folder)


class RunRecord:
    """Append-only events of one `hepc run` invocation."""

    def __init__(self, folder: Path):
        self.folder = folder

    def event(self, event: str, **fields) -> None:
        line = json.dumps({"t": round(time.time(), 3), "event": event, **fields}, sort_keys=True)
        with open(self.folder / "events.jsonl", "a") as f:
            f.write(line + "\n")
