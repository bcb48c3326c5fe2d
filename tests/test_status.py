"""`hepc status` (leases, live progress, graph progress, ETA; read-only) and the wall-time estimate
of `hepc plan`, with the measured-throughput estimator of hepc.observe (measure, estimate) tested on synthetic objects."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import ROOT, TINY, hepc, tiny_store

from hepc.observe.estimate import Pending, estimate, human_duration, pending_steps, plan_line
from hepc.observe.measure import DISTILL_COST, Measured, Rate, measure, shape_of
from hepc.observe.status import read_live, step_eta_s
from hepc.store import lease as store_lease

MORE = "population.cycles=3"  # one more cycle per trajectory than the fixture ran


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> Path:
    """A store holding the tiny fixture's run (shared: tests that add leases work on a copy)."""
    store, _ = tiny_store(tmp_path_factory.mktemp("status"))
    return store


@pytest.fixture()
def store(committed, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(committed, copy, symlinks=True)
    return copy


def status(store: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    return hepc("status", *args, "--store", str(store), store=store, check=check)


def status_json(store: Path, *args) -> dict:
    return json.loads(status(store, *args, "--json").stdout)


def new_cycle(store: Path, name: str) -> dict:
    plan = json.loads(hepc("plan", TINY, MORE, "--json", store=store).stdout)
    return next(s for s in plan["steps"] if s["kind"] == "cycle" and s["name"] == name)


def write_live(store: Path, key: str, **fields) -> Path:
    now = time.time()
    value = {
        "key": key, "kind": "cycle", "name": "t1-c003", "worker": "w1", "host": socket.gethostname(),
        "pid": os.getpid(), "started": now - 30, "t": now, "step": 7, "steps": 22, "loss": 3.25,
        "tokens_per_s": 512.0,
    }  # fmt: skip
    value.update(fields)
    work = store / "work" / key
    work.mkdir(parents=True, exist_ok=True)
    (work / "live.json").write_text(json.dumps(value))
    return work / "live.json"


def dead_pid() -> int:
    code = "import os; print(os.getpid())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout)


def hand_lease(store: Path, key: str, label: str, **fields) -> Path:
    path = store / "leases" / key
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "token": "t" + key[:6], "step": label, **fields}))
    return path


def listing(root: Path) -> dict:
    """Every path under `root` with its type, size and mtime (links not followed)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            st = os.lstat(p)
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


# --------------------------------------------------------------------------- leases and live progress


def test_live_lease_shows_step_loss_and_eta_in_text_and_json(store):
    step = new_cycle(store, "t1-c003")
    key = step["key"]
    lease = store_lease.acquire(store / "leases" / key, f"cycle t1-c003-{key[:12]}")
    try:
        write_live(store, key)
        text = status(store, TINY, MORE).stdout
        data = status_json(store, TINY, MORE)
    finally:
        lease.release()
    assert "cycle t1-c003" in text and " live " in text and "(worker w1)" in text, text
    assert "step 7/22, loss 3.2500, 512 tok/s, step ETA ~" in text, text
    assert "leased now: cycle t1-c003 (live)" in text, text
    assert "divided across 1 live worker" in text, text
    [entry] = data["leases"]
    assert entry["key"] == key and entry["state"] == "live" and entry["pid"] == os.getpid()
    assert (entry["kind"], entry["name"], entry["worker"]) == ("cycle", "t1-c003", "w1")
    assert entry["live"]["step"] == 7 and entry["live"]["steps"] == 22 and entry["live"]["loss"] == 3.25
    # 512 tokens per step at 512 tok/s: 15 steps left = 15 s, less the seconds since the update
    assert 5 < entry["step_eta_s"] <= 15, entry
    assert 0 <= entry["update_age_s"] < 10 and entry["heartbeat_age_s"] < 10
    graph = data["graph"]
    assert graph["total"] == 21 and graph["committed"] == 13 and not graph["complete"]  # new prior and curve
    assert graph["by_kind"]["cycle"] == {"total": 6, "committed": 4, "leased": 1, "resumable": 0, "failed": 0}
    assert graph["leased"] == [{"key": key, "kind": "cycle", "name": "t1-c003", "state": "live"}]
    assert data["live_workers"] == 1 and data["eta"]["workers"] == 1
    assert data["eta"]["in_flight"] == 1 and data["eta"]["cycles_estimated"] == 2
    assert data["eta_s"] >= entry["step_eta_s"]  # the other new cycle, from measured throughput, comes on top


def test_dead_holder_is_stale_junk_is_stale_and_a_future_heartbeat_is_suspect(store):
    hand_lease(store, "a" * 32, "cycle t2-c003-aaaaaaaaaaaa", pid=dead_pid())
    junk = store / "leases" / ("b" * 32)
    junk.write_text("{not a lease")
    old = time.time() - 60
    os.utime(junk, (old, old))
    future = hand_lease(store, "c" * 32, "score t1-c003-val-cccccccccccc", pid=os.getpid())
    ahead = time.time() + 3600
    os.utime(future, (ahead, ahead))
    (store / "leases" / ".takeover-x").write_text("{}")  # dot-files are not leases
    data = status_json(store)
    states = {e["key"][0]: e["state"] for e in data["leases"]}
    assert states == {"a": "stale", "b": "stale", "c": "suspect"}
    assert data["live_workers"] == 0
    by = {e["key"][0]: e for e in data["leases"]}
    assert (by["a"]["kind"], by["a"]["name"]) == ("cycle", "t2-c003")
    assert by["b"]["holder"] == "not a lease (unreadable content)"
    text = status(store).stdout
    assert "3 leases (2 stale, 1 suspect)" in text, text
    assert "holder gone; the next `hepc run` takes it over" in text
    assert f"hepc unlock {'c' * 12}" in text


@pytest.mark.parametrize(
    "content, why",
    [
        (b'{"key": "k", "step": 3, "ste', "not JSON"),
        (b"\x00\xff junk", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"{" + b" " * (70 << 10) + b"}", "larger than"),
    ],
)
def test_unreadable_live_progress_is_named_never_a_traceback(tmp_path, content, why):
    path = tmp_path / "live.json"
    path.write_bytes(content)
    live, problem = read_live(path)
    assert live is None and why in problem


def test_a_distilling_step_shows_ce_and_kd_not_one_loss(store):
    """While distilling, `hepc status` shows the CE part (what val measures) and the distillation term."""
    step = new_cycle(store, "t1-c003")
    key = step["key"]
    lease = store_lease.acquire(store / "leases" / key, f"cycle t1-c003-{key[:12]}")
    try:
        write_live(store, key, loss=1.37, ce=2.37, kd=0.0133)
        text = status(store, TINY, MORE).stdout
        data = status_json(store, TINY, MORE)
    finally:
        lease.release()
    assert "step 7/22, ce 2.3700 · kd 0.0133, 512 tok/s" in text and "loss 1.37" not in text, text
    [entry] = data["leases"]
    assert (entry["live"]["ce"], entry["live"]["kd"]) == (2.37, 0.0133)


def test_live_progress_fields_are_checked_one_by_one(tmp_path):
    path = tmp_path / "live.json"
    path.write_text(
        '{"step": "7", "steps": 20, "loss": NaN, "tokens_per_s": true, "t": 100.0, "started": 90.0, "pid": 1' + "0" * 400
        + ', "name": ["x"]}'
    )
    live, problem = read_live(path)
    assert problem is None
    assert live["step"] is None and live["steps"] == 20 and live["tokens_per_s"] is None
    assert live["pid"] is None and live["name"] is None and live["t"] == 100.0
    assert live["loss"] is None and live["loss_text"] == "nan"
    assert read_live(tmp_path / "absent.json") == (None, "no live progress (yet)")
    os.mkfifo(tmp_path / "fifo.json")
    live, problem = read_live(tmp_path / "fifo.json")  # never blocks on a FIFO
    assert live is None and "unreadable" in problem


def test_step_eta_from_its_own_progress():
    live = {"step": 10, "steps": 30, "t": 1000.0, "started": 900.0, "tokens_per_s": 2048.0}
    assert step_eta_s(live, now=1000.0, tokens_per_step=512) == pytest.approx(5.0)  # 4 steps/s, 20 left
    assert step_eta_s(live, now=1002.0, tokens_per_step=512) == pytest.approx(3.0)  # 2 s since that update
    assert step_eta_s(live, now=1000.0) == pytest.approx(200.0)  # no tokens/step: 10 steps in 100 s
    assert step_eta_s({**live, "step": 30}, now=1000.0) == 0.0
    assert step_eta_s({**live, "steps": None}, now=1000.0) is None


def test_broken_live_file_of_a_lease_is_shown_not_a_traceback(store):
    key = "d" * 32
    hand_lease(store, key, "cycle t1-c009-dddddddddddd", pid=os.getpid())
    (store / "work" / key).mkdir(parents=True)
    (store / "work" / key / "live.json").write_text('{"step": 3, "st')
    out = status(store)
    assert "live progress unreadable (not JSON" in out.stdout and out.stderr == ""


# --------------------------------------------------------------------------- read-only, errors


def test_status_writes_nothing_into_the_store(store):
    key = new_cycle(store, "t2-c003")["key"]
    hand_lease(store, key, f"cycle t2-c003-{key[:12]}", pid=dead_pid())
    write_live(store, key, name="t2-c003")
    shutil.rmtree(store / "tmp")  # folders status must not create
    before = listing(store)
    status(store)
    status(store, "--json")
    status(store, TINY, MORE)
    status(store, TINY, MORE, "--json")
    assert listing(store) == before
    shutil.rmtree(store / "leases")
    shutil.rmtree(store / "work")
    before = listing(store)
    assert "no step is running" in status(store, TINY, MORE).stdout
    assert listing(store) == before and not (store / "leases").exists() and not (store / "work").exists()


def test_a_missing_or_empty_store_is_empty_and_a_folder_that_is_not_one_exits_2(tmp_path):
    """The rule of every command: a missing or empty folder is a store nothing has run into yet (`run`
    makes it one); a folder holding other things is not a store."""
    missing = tmp_path / "nope"
    for folder in (missing, tmp_path):
        out = status(folder, check=False)
        assert out.returncode == 0 and "no step is running" in out.stdout
        assert out.stderr.splitlines() == [f"store {folder}: empty (nothing has run into it yet; `hepc run` makes it a store)"]
    assert not missing.exists() and not any(tmp_path.iterdir())
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    out = status(other, check=False)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1 and "not an hepc store" in out.stderr
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    out = status(other, str(tmp_path / "absent.yaml"), check=False)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr


def test_a_committed_graph_is_complete_with_eta_zero_and_watch_stops(committed):
    data = status_json(committed, TINY)
    graph = data["graph"]
    assert graph["complete"] and graph["committed"] == graph["total"] == 15
    assert all(c["committed"] == c["total"] for c in graph["by_kind"].values())
    assert data["eta_s"] == 0 and data["eta"]["basis"] == "all steps committed"
    text = status(committed, TINY).stdout
    assert "15/15 steps committed" in text and "ETA: done" in text
    t0 = time.time()
    watched = status(committed, TINY, "--watch")  # not a terminal: plain blocks; one, since all is committed
    assert watched.stdout.count("ETA: done") == 1 and time.time() - t0 < 30


def test_watch_ends_quietly_on_ctrl_c(committed):
    env = {**os.environ, "HEPC_STORE": str(committed)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hepc.cli", "status", "--watch"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        first = proc.stdout.readline()  # the first block is drawn
        assert "no step is running" in first
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and err == "", err


# --------------------------------------------------------------------------- the estimator


def _cycle_object(store: Path, name: str, key: str, *, d_model=32, tokens, wall_s, device=None, distill=False,
                  threads=None) -> None:  # fmt: skip
    folder = store / "objects" / "cycle" / f"{name}-{key[:12]}"
    folder.mkdir(parents=True)
    provenance = {"wall_s": wall_s + 1.0}
    if device is not None:
        provenance["device"] = device
    if threads is not None:
        provenance["threads"] = threads
    manifest = {
        "key": key, "kind": "cycle", "name": name,
        "params": {"model": {"n_layer": 2, "d_model": d_model, "n_head": 2, "dropout": 0.1}, "seq_len": 64,
                   "distill": {"alpha": 0.5, "temperature": 1.0} if distill else None},
        "inputs": {}, "summary": {"tokens": tokens, "wall_s": wall_s}, "provenance": provenance,
    }  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _score_object(store: Path, name: str, key: str, snapshot: str, wall_s: float, device="cpu") -> None:
    folder = store / "objects" / "score" / f"{name}-{key[:12]}"
    folder.mkdir(parents=True)
    manifest = {"key": key, "kind": "score", "inputs": {"snapshot": snapshot}, "provenance": {"wall_s": wall_s,
                "device": device}}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))


SHAPE = shape_of({"model": {"n_layer": 2, "d_model": 32, "n_head": 2, "dropout": 0.0}, "seq_len": 64})


def test_measured_throughput_matches_shape_and_device(tmp_path):
    assert SHAPE == "d_model=32 n_head=2 n_layer=2 seq_len=64"  # dropout does not change the shape
    s = tmp_path
    _cycle_object(s, "t1-c001", "1" * 32, tokens=10_000, wall_s=2.0, device="cpu", threads=4)
    _cycle_object(s, "t1-c002", "2" * 32, tokens=30_000, wall_s=4.0, device="cpu", distill=True, threads=4)
    _cycle_object(s, "t2-c001", "3" * 32, tokens=1_000_000, wall_s=1.0, device="cuda:NVIDIA H200")
    _cycle_object(s, "t3-c001", "4" * 32, tokens=5_000, wall_s=5.0)  # no device recorded
    _cycle_object(s, "t4-c001", "5" * 32, d_model=64, tokens=1_000, wall_s=1.0, device="cpu")  # another shape
    _score_object(s, "t1-c001-val", "6" * 32, "1" * 32, wall_s=0.5)
    _score_object(s, "t1-c002-val", "7" * 32, "2" * 32, wall_s=1.5)
    _score_object(s, "t4-c001-val", "8" * 32, "5" * 32, wall_s=99.0)  # of another shape
    cpu = measure(s, {SHAPE}, {"score": {SHAPE}, "prior": {None}}, device="cpu")
    rate = cpu.rates[SHAPE]
    assert rate.samples == 2 and rate.devices == ("cpu",) and rate.threads == (4,)
    assert rate.tokens_per_s == pytest.approx(40_000 / 6)
    assert rate.work_per_s == pytest.approx((10_000 + 30_000 * DISTILL_COST) / 6)
    assert cpu.step_times[("score", SHAPE)].wall_s == pytest.approx(1.0)
    assert ("prior", None) not in cpu.step_times
    gpu = measure(s, {SHAPE}, device="cuda")
    assert gpu.rates[SHAPE].tokens_per_s == pytest.approx(1_000_000) and gpu.rates[SHAPE].samples == 1
    for obj in ("t1-c001", "t1-c002", "t2-c001"):
        shutil.rmtree(next((s / "objects" / "cycle").glob(f"{obj}-*")))
    unknown = measure(s, {SHAPE}, device="cuda").rates[SHAPE]  # nothing known on cuda: the unrecorded one
    assert unknown.unknown_device and unknown.tokens_per_s == pytest.approx(1_000)
    assert measure(tmp_path / "empty", {SHAPE}, device="cpu").rates == {}


def _rate(work_per_s: float) -> Measured:
    return Measured("cpu", rates={SHAPE: Rate(SHAPE, work_per_s, work_per_s, 3, ("cpu",), ())})


def test_estimate_divides_across_workers_but_not_below_the_longest_trajectory():
    pending = [
        Pending("a1", "cycle", SHAPE, tokens=10_000, work=10_000, chain="a"),
        Pending("a2", "cycle", SHAPE, tokens=10_000, work=10_000, chain="a"),
        Pending("b1", "cycle", SHAPE, tokens=20_000, work=20_000 * DISTILL_COST, chain="b"),
    ]
    measured = _rate(1000.0)
    one = estimate(pending, measured, workers=1)
    assert one["eta_s"] == pytest.approx((20_000 + 20_000 * DISTILL_COST) / 1000, abs=0.1)
    assert one["cycles_estimated"] == 3 and one["covers"] == "all steps" and not one["partial"]
    three = estimate(pending, measured, workers=3)
    assert three["eta_s"] == pytest.approx(20_000 * DISTILL_COST / 1000, abs=0.1)  # trajectory b: 26.7 s
    in_flight = estimate([*pending, Pending("c1", "cycle", SHAPE, chain="c", remaining_s=100.0)], measured, 3)
    assert in_flight["eta_s"] == pytest.approx(100.0) and in_flight["in_flight"] == 1
    with_other = estimate([*pending, Pending("p", "prior")], measured, workers=1)
    assert with_other["eta_s"] == one["eta_s"] and with_other["covers"] == "training only"
    assert "not measured yet: 1 prior" in with_other["basis"]
    none = estimate(pending, Measured("cpu"), workers=1)
    assert none["eta_s"] is None
    assert none["basis"] == f"no measured throughput for this model shape yet ({SHAPE})"
    assert estimate([], Measured("cpu"))["eta_s"] == 0.0


def test_pending_steps_of_a_compiled_graph_weigh_distillation_and_follow_trajectories():
    from hepc.compile.compiler import compile_path

    compiled = compile_path(TINY)
    cycles = [s for s in compiled.graph if s.kind == "cycle"]
    pending = {p.key: p for p in pending_steps(compiled.graph, cycles, {cycles[1].key: 0.5})}
    by_name = {s.name: pending[s.key] for s in cycles}
    assert by_name["t1-c001"].chain == by_name["t1-c002"].chain != by_name["t2-c002"].chain
    tokens = cycles[0].context["tokens"]
    assert by_name["t1-c001"].work == pytest.approx(tokens)  # cycle 1: not distilled
    assert by_name["t2-c002"].work == pytest.approx(tokens * DISTILL_COST)  # distilled after cycle 1
    assert by_name[cycles[1].name].tokens == pytest.approx(tokens * 0.5)  # half trained (a checkpoint)


def test_human_durations_and_plan_line():
    assert [human_duration(s) for s in (4, 600, 4320, 3 * 86400)] == ["4 s", "10 min", "1 h 12 min", "3 d"]
    pending = [Pending(f"k{i}", "cycle", SHAPE, tokens=7450 * 60, work=7450 * 60, chain=f"k{i}") for i in range(72)]
    est = estimate(pending, _rate(7450.0), workers=1)
    assert plan_line(est) == (
        "estimated wall time: ~1 h 12 min for 72 cycles at 7,450 tok/s measured on cpu over 3 cycles "
        "(1 worker; --jobs N divides the training part)"
    )


# --------------------------------------------------------------------------- hepc plan


def test_plan_estimates_new_cycles_from_the_store_and_says_nothing_without_measurements(committed, tmp_path):
    lines = hepc("plan", TINY, MORE, store=committed).stdout.splitlines()
    assert lines[-1].startswith("estimated wall time: ~"), lines[-1]
    assert " for 2 cycles at " in lines[-1] and " tok/s measured on " in lines[-1]
    data = json.loads(hepc("plan", TINY, MORE, "--json", store=committed).stdout)
    est = data["estimate"]
    assert est["cycles"] == est["cycles_estimated"] == 2 and est["eta_s"] > 0 and est["workers"] == 1
    assert est["throughput"][0]["shape"] == "d_model=32 n_head=2 n_layer=1 seq_len=32"
    assert "estimated wall time" not in hepc("plan", TINY, store=committed).stdout  # nothing new to run
    empty = tmp_path / "empty"
    assert "estimated wall time" not in hepc("plan", TINY, MORE, store=empty).stdout
    assert json.loads(hepc("plan", TINY, MORE, "--json", store=empty).stdout)["estimate"] is None
    assert not empty.exists()
