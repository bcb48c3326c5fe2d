"""`hepc run --jobs N`: steps run in N worker processes, with the same results as one process.

The tiny fixture runs with `runtime.threads: 1`, so every step computes with one thread whatever
the number of workers; torch's CPU kernels reduce in a thread-count-dependent order, so results
are bit-identical for the same threads per step (docs/scale-out.md)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import ROOT, TINY, hepc, tiny_store

TIMING = {"wall_s", "tokens_per_s"}  # measured, not computed: the only fields allowed to differ


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def object_contents(store: Path) -> dict[str, object]:
    """Every committed file (manifests aside) by path; JSON files without their timing fields."""
    out = {}
    for f in sorted((store / "objects").rglob("*")):
        if not f.is_file() or f.name == "manifest.json":
            continue
        rel = f.relative_to(store / "objects").as_posix()
        if f.suffix == ".json":
            out[rel] = _strip(json.loads(f.read_text()))
        elif f.suffix == ".jsonl":
            out[rel] = [_strip(json.loads(line)) for line in f.read_text().splitlines()]
        else:
            out[rel] = f.read_bytes()
    return out


def events(store: Path, spec: str = "tiny") -> list[list[dict]]:
    runs = []
    for folder in sorted((store / "records" / spec).iterdir()):
        runs.append([json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()])
    return runs


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory) -> tuple[Path, dict]:
    return tiny_store(tmp_path_factory.mktemp("jobs1"))  # one step at a time: the tiny spec's default on a CPU


def test_two_workers_give_bit_identical_results_and_records(one_worker, tmp_path):
    store1, results1 = one_worker
    store2 = tmp_path / "store"
    out = hepc("run", TINY, "--jobs", "2", "--json", store=store2)
    assert json.loads(out.stdout) == results1
    assert object_contents(store2) == object_contents(store1)
    (run1,) = events(store1)
    (run2,) = events(store2)
    done1 = sorted((e["kind"], e["name"], e["key"]) for e in run1 if e["event"] == "done")
    done2 = sorted((e["kind"], e["name"], e["key"]) for e in run2 if e["event"] == "done")
    assert done1 == done2 and len(done2) == 15  # every step ran once, in either run
    workers = {e.get("worker") for e in run2 if e["event"] == "begin"}
    assert workers == {"w1", "w2"}  # both workers took steps
    (backend,) = [e for e in run2 if e["event"] == "backend"]
    assert backend["jobs"] == 2
    # one progress line per step, each naming its worker
    assert "w1: [" in out.stderr and "w2: [" in out.stderr


def test_a_trajectory_never_runs_two_cycles_at_once(tmp_path):
    store = tmp_path / "store"
    hepc("run", TINY, "population.cycles=3", "population.epochs_per_cycle=3", "--jobs", "2", "--quiet", store=store)
    (run,) = events(store)
    spans: dict[str, list[tuple[float, float]]] = {}
    begun: dict[str, float] = {}
    for e in run:
        if e.get("kind") != "cycle":
            continue
        if e["event"] == "begin":
            begun[e["name"]] = e["t"]
        elif e["event"] == "done":
            spans.setdefault(e["name"].split("-")[0], []).append((begun.pop(e["name"]), e["t"]))
    assert set(spans) == {"t1", "t2"} and all(len(v) == 3 for v in spans.values())
    for trajectory in spans.values():
        trajectory.sort()
        for (_, end), (start, _) in itertools.pairwise(trajectory):
            assert start >= end  # cycle c+1 begins only after cycle c is committed
    # both workers trained (each trajectory's first cycle went to its own worker at once)
    assert {e.get("worker") for e in run if e["event"] == "begin" and e.get("kind") == "cycle"} == {"w1", "w2"}


# --------------------------------------------------------------------------- killed workers, Ctrl-C

# one long cycle per trajectory (~1,000 optimizer steps, seconds on an idle machine), checkpointed every 20
LONG = ["population.cycles=1", "population.epochs_per_cycle=48", "runtime.checkpoint_every_steps=20",
        "runtime.log_every_steps=5"]  # fmt: skip


def _start(store: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HEPC_STORE": str(store), "HEPC_LEASE_TIMEOUT_S": "5"}
    return subprocess.Popen(
        [sys.executable, "-m", "hepc.cli", "run", TINY, *LONG, "--jobs", "2", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"run ended early ({proc.returncode}): {proc.communicate()[1]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out")


def _checkpointed_cycles(store: Path) -> list[str]:
    """Keys of cycles that have written a mid-cycle checkpoint and are leased now."""
    work = store / "work"
    leases = store / "leases"
    if not work.is_dir() or not leases.is_dir():
        return []
    return [p.name for p in work.iterdir() if (p / "progress.json").is_file() and (leases / p.name).is_file()]


def _running_cycles(store: Path) -> list[str]:
    """Keys of cycles inside their training loop now (a lease, and a live file with a step count)."""
    leases = store / "leases"
    if not leases.is_dir():
        return []
    out = []
    for lease in leases.iterdir():
        try:
            live = json.loads((store / "work" / lease.name / "live.json").read_text())
        except (OSError, ValueError):
            continue
        if live.get("kind") == "cycle" and live.get("step"):
            out.append(lease.name)
    return sorted(out)


def _holder_pid(store: Path, key: str) -> int:
    return int(json.loads((store / "leases" / key).read_text())["pid"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory) -> dict:
    """The long-cycle population run by one worker, never interrupted."""
    store = tmp_path_factory.mktemp("long1") / "store"
    hepc("run", TINY, *LONG, "--jobs", "1", "--quiet", store=store)
    return object_contents(store)


def test_a_killed_worker_is_replaced_and_its_step_resumes(long_reference, tmp_path):
    store = tmp_path / "store"
    proc = _start(store)
    key = _wait_for(lambda: (_checkpointed_cycles(store) or [None])[0], proc)
    victim = _holder_pid(store, key)
    assert victim != proc.pid  # the step runs in a worker process, not in the driver
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "died during cycle" in err and "resumes from its last checkpoint" in err
    (run,) = events(store)
    died = [e for e in run if e["event"] == "worker-died"]
    assert [e["key"] for e in died] == [key] and died[0]["exitcode"] == -signal.SIGKILL
    assert [e["event"] for e in run if e.get("key") == key and e["event"] in ("begin", "done")] == [
        "begin",
        "begin",
        "done",
    ]
    assert object_contents(store) == long_reference  # resumed exactly: same weights, losses, scores


def test_ctrl_c_stops_every_worker_at_a_checkpoint_and_exits_130(long_reference, tmp_path):
    store = tmp_path / "store"
    proc = _start(store)
    keys = _wait_for(lambda: _running_cycles(store) if len(_running_cycles(store)) == 2 else None, proc)
    workers = {_holder_pid(store, k) for k in keys}  # both workers are inside a cycle
    assert len(workers) == 2 and proc.pid not in workers
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert not any(_alive(pid) for pid in workers)  # no worker outlives the driver
    assert not [p for p in (store / "leases").iterdir() if not p.name.startswith(".")]  # all released
    for key in keys:  # each stopped at a step boundary with a checkpoint
        assert (store / "work" / key / "ckpt.pt").is_file()
    (run,) = events(store)
    assert {e["key"] for e in run if e["event"] == "interrupted" and "key" in e} >= set(keys)
    hepc("run", TINY, *LONG, "--jobs", "2", "--quiet", store=store)  # resumes
    assert object_contents(store) == long_reference


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.parametrize("when", ["starting", "training"])
def test_workers_orphaned_by_a_killed_driver_stop_quietly(tmp_path, when):
    """kill -9 of the driver while its workers are still importing torch, or inside a cycle: each worker
    notices within seconds, stops its step, and exits without a traceback."""
    store = tmp_path / "store"
    proc = _start(store)
    if when == "starting":
        workers = _wait_for(lambda: _children(proc.pid), proc, timeout=60)
    else:
        keys = _wait_for(lambda: _running_cycles(store) or None, proc)
        workers = [_holder_pid(store, k) for k in keys]
    proc.kill()
    _, err = proc.communicate(timeout=60)  # the pipes close once every worker has gone
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    deadline = time.time() + 30
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers)


def test_a_worker_whose_driver_dies_before_sending_its_arguments_exits_quietly():
    """The narrowest instant of the test above, made certain: the worker process exists but its driver
    is gone before the first message (multiprocessing's own bootstrap printed EOFError here)."""
    import socket

    from hepc.execute.pool import worker_command

    here, there = socket.socketpair()
    worker = subprocess.Popen(worker_command(there.fileno()), pass_fds=(there.fileno(),), stderr=subprocess.PIPE)
    there.close()
    here.close()  # what a SIGKILLed driver's end does
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0 and err == b"", err.decode()
