"""Benchmark: scheduling overhead per step of the Ray backend against the local one, on a graph of
~1,000 trivially small steps (specs/bench/many-steps.yaml: 993 steps, each a few milliseconds of work).

    python bench/sched_overhead.py                                    # all four modes, full graph
    python bench/sched_overhead.py --trajectories 2 --cycles 3        # smoke test: 21 steps
    python bench/sched_overhead.py --modes local1,local2 [--keep DIR] [SPEC_OVERRIDES ...]

Modes, each into a fresh store (runtime.threads=1 everywhere: one torch thread per step):
    local1  hepc run --jobs 1                              steps in the driver's own process
    local2  hepc run --jobs 2                              two local worker processes
    ray1    hepc run --backend ray --address A --jobs 1    one Ray task at a time
    ray2    hepc run --backend ray --address A --jobs 2    two Ray tasks at a time
For Ray this script starts its own one-node cluster on 127.0.0.1 (2 CPUs, no dashboard, usage stats
off, its own temporary folder) and always stops it at the end. It stops exactly that cluster: the
processes whose command line names its temporary folder, and their children, by pid. (`ray stop
--force` would stop every Ray process of every cluster on the machine; --ray-stop-all adds it, for
a machine that runs nothing else.) ray1 runs on a fresh cluster and pays its workers' first imports;
ray2 reuses those workers.

Figures per mode:
    process wall   the whole `hepc run` process, timed here (imports, compile, plan, Ray connect, results)
    run wall       the run record's `start` → `finish` events: the scheduling loop alone
    Σ step wall    the sum of every committed step's provenance wall_s (its body, from its manifest)
    start-up       process wall − run wall
    overhead/step  jobs 1 only: (run wall − Σ step wall) / steps, in ms: what each step costs beyond its
                   body (lease, input checks, commit with digests, run record, dispatch, result)
    wall/step      run wall / steps, in ms (the figure to compare for jobs 2, where steps overlap)
    concurrency    Σ step wall / run wall (how many step bodies ran at once, on average)
The last line is JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ray_local import start_ray_retrying, stop_ray  # bench/ray_local.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "bench" / "many-steps.yaml"
HEPC = [sys.executable, "-m", "hepc.cli"]
MODES = {  # name → extra `hepc run` arguments (the Ray address is added at run time)
    "local1": ["--jobs", "1"],
    "local2": ["--jobs", "2"],
    "ray1": ["--backend", "ray", "--jobs", "1"],
    "ray2": ["--backend", "ray", "--jobs", "2"],
}


def hepc(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    out = subprocess.run([*HEPC, *args], check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=timeout)  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"error: hepc {' '.join(args)} exited {out.returncode}:\n{out.stderr[-3000:]}")
    return out


# a private Ray cluster: start_ray_retrying / stop_ray in bench/ray_local.py (the Ray tests use it too)


# --------------------------------------------------------------------------- one run


def read_store(store: Path) -> dict:
    """Run-record span and backend; committed steps and their summed body wall time."""
    events = []
    for path in store.glob("records/*/*/events.jsonl"):
        events.extend(json.loads(line) for line in path.read_text().splitlines())
    start = next(e["t"] for e in events if e["event"] == "start")
    finish = next(e["t"] for e in events if e["event"] == "finish")
    backend = next((e for e in events if e["event"] == "backend"), {})
    walls = [json.loads(p.read_text())["provenance"]["wall_s"] for p in store.glob("objects/*/*/manifest.json")]
    return {
        "run_wall_s": finish - start,
        "steps": len(walls),
        "done_events": sum(e["event"] == "done" for e in events),
        "step_wall_s": sum(walls),
        "backend": {k: v for k, v in backend.items() if k not in ("event", "t")},
    }


def run_mode(mode: str, spec: str, overrides: list[str], store: Path, env: dict, address: str | None,
             timeout: float) -> dict:  # fmt: skip
    extra = [*MODES[mode], *(["--address", address] if mode.startswith("ray") else [])]
    t0 = time.perf_counter()
    hepc(["run", spec, *overrides, *extra, "--store", str(store), "--quiet"], env, timeout)
    wall = time.perf_counter() - t0
    facts = read_store(store)
    jobs = int(MODES[mode][MODES[mode].index("--jobs") + 1])
    steps, run_wall, body = facts["steps"], facts["run_wall_s"], facts["step_wall_s"]
    return {
        "mode": mode,
        "jobs": jobs,
        "steps": steps,
        "process_wall_s": round(wall, 3),
        "run_wall_s": round(run_wall, 3),
        "step_wall_s": round(body, 3),
        "startup_s": round(wall - run_wall, 3),
        "overhead_ms_per_step": round(1000 * (run_wall - body) / steps, 2) if jobs == 1 else None,
        "process_overhead_ms_per_step": round(1000 * (wall - body) / steps, 2) if jobs == 1 else None,
        "wall_ms_per_step": round(1000 * run_wall / steps, 2),
        "concurrency": round(body / run_wall, 2),
        "backend": facts["backend"],
        "done_events": facts["done_events"],
    }


def table(rows: list[dict]) -> str:
    head = (f"{'mode':<7} {'steps':>6} {'process s':>10} {'run s':>8} {'Σ step s':>9} {'start-up s':>10} "
            f"{'overhead ms/step':>16} {'wall ms/step':>12} {'concurrency':>11}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        over = f"{r['overhead_ms_per_step']:.2f}" if r["overhead_ms_per_step"] is not None else "-"
        lines.append(
            f"{r['mode']:<7} {r['steps']:>6} {r['process_wall_s']:>10.2f} {r['run_wall_s']:>8.2f} "
            f"{r['step_wall_s']:>9.2f} {r['startup_s']:>10.2f} {over:>16} {r['wall_ms_per_step']:>12.2f} "
            f"{r['concurrency']:>11.2f}"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides of the spec, as for hepc run")
    ap.add_argument("--spec", default=str(SPEC))
    ap.add_argument("--trajectories", type=int, help="population.trajectories (shrinks the graph)")
    ap.add_argument("--cycles", type=int, help="population.cycles (shrinks the graph)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    ap.add_argument("--keep", help="keep the stores in this folder (default: temporary, deleted)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one hepc run may take")
    ap.add_argument(
        "--ray-stop-all",
        action="store_true",
        help="also run `ray stop --force` at the end (stops EVERY Ray process on this machine)",
    )
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"--modes: unknown {unknown} (choose from {', '.join(MODES)})")
    overrides = list(args.overrides)
    if args.trajectories is not None:
        overrides.append(f"population.trajectories={args.trajectories}")
    if args.cycles is not None:
        overrides.append(f"population.cycles={args.cycles}")
    overrides.append("runtime.threads=1")
    if any(m.startswith("ray") for m in modes) and importlib.util.find_spec("ray") is None:
        print("note: Ray is not installed (pip install 'hepc[ray]'): skipping the ray modes")
        modes = [m for m in modes if not m.startswith("ray")]

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    env.pop("HEPC_STORE", None)
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hepc-bench-sched-"))
    base.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    ray_dir = None
    left = 0
    try:
        plan = hepc(["plan", args.spec, *overrides, "--json", "--store", str(base / "plan")], env, 120)
        planned = len(json.loads(plan.stdout)["steps"])
        print(f"spec: {args.spec} {' '.join(overrides)}\nplanned steps: {planned}; stores under {base}", flush=True)
        address = None
        for mode in modes:
            if mode.startswith("ray") and address is None:
                ray_dir = tempfile.mkdtemp(prefix="hepc-bench-ray-", dir="/tmp")  # short: Ray's socket paths
                address = start_ray_retrying(ray_dir, env)
                print(f"ray: started a local cluster at {address} (temp dir {ray_dir})", flush=True)
            row = run_mode(mode, args.spec, overrides, base / mode, env, address, args.timeout)
            if row["steps"] != planned:
                print(f"warning: {mode} committed {row['steps']} steps; {planned} were planned")
            rows.append(row)
            print(f"  {mode}: {row['steps']} steps in {row['process_wall_s']:.1f} s", flush=True)
    finally:
        if ray_dir is not None:
            left = stop_ray(ray_dir, env, args.ray_stop_all)
            shutil.rmtree(ray_dir, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    print(table(rows))
    print(json.dumps({"bench": "sched_overhead", "spec": args.spec, "overrides": overrides, "planned_steps": planned,
                      "cores": len(os.sched_getaffinity(0)), "runs": rows}))  # fmt: skip
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
