"""`hepc run --backend ray` on a real local Ray cluster, started here and stopped even on failure.

The cluster (`ray start --head` on a free loopback port, a temporary folder, 2 CPUs and 2 fake
GPUs, usage stats off) runs, where the machine allows it, in its own mount namespace in which one
folder is covered by an empty tmpfs: a store inside that folder is what a Ray node that cannot see
the driver's store looks like."""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cli_helpers import ROOT, TINY, hepc, tiny_store
from test_jobs import LONG, _checkpointed_cycles, _holder_pid, _wait_for, events, object_contents

ray = pytest.importorskip("ray")
sys.path.insert(0, str(ROOT / "bench"))
import ray_local


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tempfile.mkdtemp()
    try:
        out = subprocess.run(
            ["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs {probe}"], check=False, capture_output=True, timeout=10
        )
        return out.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
    finally:
        os.rmdir(probe)


@pytest.fixture(scope="module")
def cluster():
    """(address, env, hidden): a running Ray head; `hidden` is a folder its nodes cannot see (or None).
    Stopped by pid at the end (bench/ray_local.py): only this cluster, never another one on the machine."""
    base = Path(tempfile.mkdtemp(prefix="hepc-ray-"))  # short: Ray's socket paths must stay short
    hidden = base / "hidden"
    hidden.mkdir()
    temp_dir = str(base / "ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    isolated = _can_unshare()

    def in_namespace(command: list[str]) -> list[str]:  # the cluster's processes see `hidden` as an empty tmpfs
        script = f"mount -t tmpfs tmpfs {shlex.quote(str(hidden))} && exec {shlex.join(command)}"
        return ["unshare", "-m", "sh", "-c", script]

    try:
        address = ray_local.start_ray_retrying(
            temp_dir, env, num_cpus=2, num_gpus=2, wrap=in_namespace if isolated else None
        )
        yield address, env, hidden if isolated else None
    finally:
        left = ray_local.stop_ray(temp_dir, env, quiet=True)
        shutil.rmtree(base, ignore_errors=True)
        assert left == 0, f"{left} Ray processes outlived the test cluster"


def ray_run(cluster, store: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    address, env, _ = cluster
    command = [sys.executable, "-m", "hepc.cli", "run", TINY, *args, "--backend", "ray", "--address", address]
    env = {**env, "HEPC_STORE": str(store)}
    out = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True)
    assert "Traceback" not in out.stderr, out.stderr
    if check:
        assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory) -> tuple[Path, dict]:
    return tiny_store(tmp_path_factory.mktemp("local"))


def test_a_population_through_ray_matches_the_local_backend(cluster, local_reference, tmp_path):
    store, results = local_reference
    out = ray_run(cluster, tmp_path / "store", "--json")
    assert json.loads(out.stdout) == results
    assert object_contents(tmp_path / "store") == object_contents(store)
    (run,) = events(tmp_path / "store")
    (backend,) = [e for e in run if e["event"] == "backend"]
    assert backend["backend"] == "ray" and backend["cluster_cpus"] == 2 and backend["cluster_gpus"] == 2
    placed = [e for e in run if e["event"] == "placed"]
    assert len(placed) == 15 and all(e["num_gpus"] == 0 for e in placed)  # runtime.device is cpu: no GPU asked
    assert len({e["pid"] for e in placed}) >= 1 and all(e["host"] for e in placed)


@pytest.mark.slow  # a long cycle twice through Ray (~1 min); test_jobs.py kills local workers in the default run
def test_a_killed_ray_worker_is_retried_and_resumes(cluster, tmp_path):
    address, env, _ = cluster
    one = [*LONG, "population.trajectories=1", "prior.budgets=[1]"]
    reference = tmp_path / "reference"
    hepc("run", TINY, *one, "--quiet", store=reference)
    store = tmp_path / "store"
    command = [sys.executable, "-m", "hepc.cli", "run", TINY, *one, "--backend", "ray", "--address", address]
    proc = subprocess.Popen(
        command, cwd=ROOT, env={**env, "HEPC_STORE": str(store)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        key = _wait_for(lambda: (_checkpointed_cycles(store) or [None])[0], proc, timeout=180)
        victim = _holder_pid(store, key)
        assert victim != proc.pid
        os.kill(victim, signal.SIGKILL)  # the Ray worker process running the cycle
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    (run,) = events(store)
    begins = [e for e in run if e.get("key") == key and e["event"] == "begin"]
    assert len(begins) == 2 and begins[0]["worker"] == begins[1]["worker"]  # the same task, retried by Ray
    assert [e["event"] for e in run if e.get("key") == key and e["event"] == "done"] == ["done"]
    assert object_contents(store) == object_contents(reference)  # resumed exactly from its checkpoint


def test_a_store_the_ray_nodes_cannot_see_is_refused(cluster, tmp_path):
    hidden = cluster[2]
    if hidden is None:
        pytest.skip("no mount namespace here (unshare -m): cannot hide a folder from the Ray nodes")
    store = hidden / "store"
    hepc("run", TINY, "population.cycles=1", "--quiet", store=store)  # the driver sees a real store
    before = sorted(p.relative_to(store).as_posix() for p in store.rglob("*"))
    out = ray_run(cluster, store, check=False)
    assert out.returncode == 2
    assert f"cannot see the store: {store}/hepc-store.json does not exist there" in out.stderr
    assert "every Ray node must see the store" in out.stderr and "nothing was run or written" in out.stderr
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) == before  # nothing written


def test_fake_gpus_are_requested_and_gpus_per_step_places_two_on_a_cycle(cluster, tmp_path):
    store = tmp_path / "store"
    ray_run(cluster, store, "population.cycles=1", "runtime.device=auto", "runtime.gpus_per_step=2", "--quiet")
    (run,) = events(store)
    placed = {e["name"]: e for e in run if e["event"] == "placed"}
    cycles = [e for e in placed.values() if e["kind"] == "cycle"]
    assert len(cycles) == 2
    for e in cycles:  # each cycle got both fake GPUs, as Ray's CUDA_VISIBLE_DEVICES says
        assert e["num_gpus"] == 2 and sorted(e["gpus"].split(",")) == ["0", "1"]
    assert all(e["num_gpus"] == 1 for e in placed.values() if e["kind"] == "score")
    # every GPU step in a fresh worker process (max_calls=1): no CUDA context or cached memory is inherited
    gpu_pids = [e["pid"] for e in placed.values() if e["num_gpus"]]
    assert len(gpu_pids) == 6 and len(set(gpu_pids)) == 6, gpu_pids
    assert all(e["num_gpus"] == 0 for e in placed.values() if e["kind"] in ("corpus", "prior", "curve"))
    # two GPUs in all and two per cycle: cycles never overlapped
    spans = sorted(
        (b["t"], d["t"])
        for b in run if b["event"] == "begin" and b["kind"] == "cycle"
        for d in run if d["event"] == "done" and d["key"] == b["key"]
    )  # fmt: skip
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))


def test_gpus_per_step_must_fit_one_node(local_reference, tmp_path):
    """Two nodes of 2 fake GPUs each: 4 GPUs in the cluster, but a data-parallel cycle runs on one node, so
    gpus_per_step = 3 is refused before anything runs or is written (exit 2, one line)."""
    base = Path(tempfile.mkdtemp(prefix="hepc-ray2-"))
    temp_dir = str(base / "ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    store = tmp_path / "store"
    shutil.copytree(local_reference[0], store, symlinks=True)
    before = sorted(p.relative_to(store).as_posix() for p in store.rglob("*"))
    try:
        address = ray_local.start_ray_retrying(temp_dir, env, num_cpus=1, num_gpus=2)
        ray_local.add_node(address, env, num_cpus=1, num_gpus=2)
        out = ray_run((address, env, None), store, "population.cycles=3", "runtime.device=auto", "runtime.gpus_per_step=3",
                      check=False)  # a third cycle: something to run
    finally:
        left = ray_local.stop_ray(temp_dir, env, quiet=True)
        shutil.rmtree(base, ignore_errors=True)
    assert left == 0, f"{left} Ray processes outlived the two-node cluster"
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    assert "gpus_per_step is 3 but the Ray node with the most GPUs has 2 (the cluster 4 on 2 node(s))" in errors[0]
    assert "nothing was run or written" in errors[0]
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) == before
