"""Shared by the tests that drive the real `hepc` command in a subprocess against a store."""

from __future__ import annotations

import atexit
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "fixtures" / "tiny.yaml")


def hepc(*args, store: Path, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `hepc ARGS` with HEPC_STORE=store (in `cwd`, default the repository); never a traceback;
    raise on a non-zero exit if `check`."""
    env = {**os.environ, "HEPC_STORE": str(store)}
    out = subprocess.run([sys.executable, "-m", "hepc.cli", *args], capture_output=True, text=True, env=env,
                         cwd=cwd or ROOT)
    assert "Traceback" not in out.stderr, out.stderr
    if check and out.returncode != 0:
        raise AssertionError(f"hepc {' '.join(args)} exited {out.returncode}\n{out.stderr}")
    return out


def executed(store: Path, spec_name: str = "tiny") -> list[list[str]]:
    """Per run record (oldest first): `kind:name` of each step it executed."""
    runs = []
    for folder in sorted((store / "records" / spec_name).iterdir()):
        events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
        runs.append([f"{e['kind']}:{e['name']}" for e in events if e["event"] == "done"])
    return runs


_TINY_RUN: tuple[Path, dict] | None = None  # the tiny fixture trained once per test session


def tiny_store(folder: Path) -> tuple[Path, dict]:
    """A store at `folder/store` holding the tiny fixture's run, and that run's `--json` results.

    The first call trains it (`hepc run TINY --json --quiet` into a store of its own); later calls
    copy that store, byte for byte, so the modules that each start from a finished tiny population
    share one training run. The copy is a whole store: its marker, objects, records and index."""
    global _TINY_RUN
    if _TINY_RUN is None:
        cache = Path(tempfile.mkdtemp(prefix="hepc-tiny-"))
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        results = json.loads(hepc("run", TINY, "--json", "--quiet", store=cache / "store").stdout)
        _TINY_RUN = cache / "store", results
    source, results = _TINY_RUN
    store = folder / "store"
    shutil.copytree(source, store, symlinks=True)
    return store, copy.deepcopy(results)


def obj(store: Path, kind: str, name: str) -> Path:
    """The one committed object of `kind` named `name` (its folder is `<name>-<key12>`) in a store."""
    (found,) = [p for p in (store / "objects" / kind).iterdir() if p.name.rsplit("-", 1)[0] == name]
    return found
