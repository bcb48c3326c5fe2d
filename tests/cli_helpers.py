"""Shared by the tests that drive the real `hepc` command in a subprocess against a store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "fixtures" / "tiny.yaml")


def hepc(*args, store: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run `hepc ARGS` with HEPC_STORE=store; never a traceback; raise on a non-zero exit if `check`."""
    env = {**os.environ, "HEPC_STORE": str(store)}
    out = subprocess.run([sys.executable, "-m", "hepc.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)
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


def tiny_store(folder: Path) -> tuple[Path, dict]:
    """A store at `folder/store` holding the tiny fixture's run, and that run's `--json` results."""
    store = folder / "store"
    return store, json.loads(hepc("run", TINY, "--json", "--quiet", store=store).stdout)
