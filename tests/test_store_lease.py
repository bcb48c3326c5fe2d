"""Leases: exclusive, heartbeated, taken over when stale (dead pid or old heartbeat), race-free."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hepc.store import lease as store_lease
from hepc.store.lease import LeaseBusy, LeaseLost, acquire, read_lease


def test_lease_is_exclusive_and_released(tmp_path):
    path = tmp_path / "leases" / "k"
    lease = acquire(path, "cycle t1")
    info = read_lease(path)
    assert info["pid"] == os.getpid() and info["token"] == lease.token and info["step"] == "cycle t1"
    with pytest.raises(LeaseBusy):
        acquire(path, "cycle t1")  # the holder is alive and its heartbeat fresh
    lease.release()
    assert not path.exists()
    acquire(path, "again").release()
    assert sorted(p.name for p in path.parent.iterdir()) == []  # no private or tombstone files left


def test_lease_of_a_dead_process_is_taken_over(tmp_path):
    path = tmp_path / "k"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    path.write_text(json.dumps({"pid": pid, "host": os.uname().nodename, "token": "old", "step": "x"}))
    with acquire(path, "mine") as lease:
        assert read_lease(path)["token"] == lease.token


def test_lease_with_a_stale_heartbeat_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setenv("HEPC_LEASE_TIMEOUT_S", "2")
    path = tmp_path / "k"
    # A live holder on another host: only its heartbeat can tell.
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "token": "theirs"}))
    with pytest.raises(LeaseBusy):
        acquire(path, "mine")
    old = time.time() - 10
    os.utime(path, (old, old))
    with acquire(path, "mine") as lease:
        assert read_lease(path)["token"] == lease.token


def test_heartbeat_keeps_a_long_step_alive(tmp_path, monkeypatch):
    monkeypatch.setenv("HEPC_LEASE_TIMEOUT_S", "1")  # heartbeat every 0.25 s
    path = tmp_path / "k"
    with acquire(path, "long") as lease:
        time.sleep(1.6)  # longer than the timeout: only the heartbeat keeps it fresh
        with pytest.raises(LeaseBusy):
            acquire(path, "other")
        lease.check()


def test_a_process_that_lost_its_lease_notices_and_does_not_delete_the_new_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HEPC_LEASE_TIMEOUT_S", "1")
    path = tmp_path / "k"
    lease = acquire(path, "mine")
    lease._stop.set()  # simulate a frozen process: no heartbeat
    lease._thread.join()
    old = time.time() - 5
    os.utime(path, (old, old))
    other = json.loads(path.read_text()) | {"host": "elsewhere"}
    path.write_text(json.dumps(other))  # (make it look like another host's, so only age matters)
    os.utime(path, (old, old))
    thief = acquire(path, "thief")
    assert not lease.still_mine()
    lease.lost = True
    with pytest.raises(LeaseLost):
        lease.check()
    lease.release()  # must not remove the thief's lease
    assert read_lease(path)["token"] == thief.token
    thief.release()


def test_heartbeat_thread_flags_a_lost_lease(tmp_path, monkeypatch):
    monkeypatch.setenv("HEPC_LEASE_TIMEOUT_S", "1")
    path = tmp_path / "k"
    lease = acquire(path, "mine")
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "token": "thief"}))
    deadline = time.time() + 3
    while not lease.lost and time.time() < deadline:
        time.sleep(0.05)
    assert lease.lost
    with pytest.raises(LeaseLost):
        lease.check()
    lease.release()
    assert read_lease(path)["token"] == "thief"


def _contend(path: str, barrier, out, done) -> None:
    os.environ["HEPC_LEASE_TIMEOUT_S"] = "30"
    judge = store_lease.is_stale

    def slow_judge(*a, **k):  # widen the window between judging a lease stale and acting on it
        verdict = judge(*a, **k)
        time.sleep(0.02)
        return verdict

    store_lease.is_stale = slow_judge
    barrier.wait(timeout=30)  # all eight start together (a barrier, not a busy wait that starves some)
    try:
        lease = acquire(Path(path), f"pid {os.getpid()}")
    except LeaseBusy:
        out.put(None)
        return
    out.put(lease.token)
    done.wait(timeout=60)  # hold it until every contender has tried: a late one can never find it free
    lease.release()


@pytest.mark.parametrize("round_", range(4))
def test_take_over_of_a_stale_lease_is_race_free(tmp_path, round_):
    """Eight processes see the same stale lease at the same instant: exactly one of them gets it."""
    path = tmp_path / "k"
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "token": "stale"}))
    old = time.time() - 3600
    os.utime(path, (old, old))
    ctx = mp.get_context("fork")
    out, barrier, done = ctx.Queue(), ctx.Barrier(8), ctx.Event()
    procs = [ctx.Process(target=_contend, args=(str(path), barrier, out, done)) for _ in range(8)]
    for p in procs:
        p.start()
    try:
        tokens = [out.get(timeout=30) for _ in procs]
    finally:
        done.set()
    for p in procs:
        p.join(timeout=30)
    assert sum(t is not None for t in tokens) == 1, tokens
