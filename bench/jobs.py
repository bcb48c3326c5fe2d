"""Benchmark: `hepc run --jobs 2` (two worker processes, one torch thread each) against `--jobs 1`
(one process, two torch threads) on a 2-core machine: same spec, a fresh store for every run.

    python bench/jobs.py                                  # specs/quickstart.yaml, 2 repetitions: A B B A
    python bench/jobs.py SPEC [KEY=VALUE ...] --reps N [--keep DIR]
    python bench/jobs.py tests/fixtures/tiny.yaml --reps 1            # smoke test (~15 s)

Modes: A = `--jobs 1 runtime.threads=2`, B = `--jobs 2 runtime.threads=1`. Repetition i runs A then B
when i is even and B then A when it is odd (A B B A ...), so a slow drift of the machine hits both
modes alike. Each run's wall time is the whole `hepc run` process (start-up, corpus, training,
scoring, prior, curve), measured here. Printed: every wall time, the mean per mode, the ratio
mean(jobs 1) / mean(jobs 2) (> 1: two workers are faster), and the largest absolute difference
between the two modes' `val_loss` figures (members, ensembles, curve, from `hepc results --json`):
different thread counts change float summation order, so the results are close, not bit-identical.
Runs of the same mode are compared too (they should agree exactly). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEPC = [sys.executable, "-m", "hepc.cli"]
MODES = {  # name → (--jobs, runtime.threads)
    "jobs1": (1, 2),
    "jobs2": (2, 1),
}


def hepc(*args: str, timeout: float) -> subprocess.CompletedProcess:
    out = subprocess.run([*HEPC, *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"error: hepc {' '.join(args)} exited {out.returncode}:\n{out.stderr[-3000:]}")
    return out


def losses(results, path: str = "") -> dict[str, float]:
    """Every `val_loss` leaf of `hepc results --json`, keyed by its path (members[3].val_loss, ...)."""
    out: dict[str, float] = {}
    if isinstance(results, dict):
        for k, v in results.items():
            here = f"{path}.{k}" if path else k
            if k == "val_loss" and isinstance(v, (int, float)):
                out[here] = float(v)
            else:
                out.update(losses(v, here))
    elif isinstance(results, list):
        for i, v in enumerate(results):
            out.update(losses(v, f"{path}[{i}]"))
    return out


def max_abs_diff(a: dict[str, float], b: dict[str, float]) -> float:
    if a.keys() != b.keys():
        raise SystemExit(f"error: the runs' results differ in shape: {sorted(a.keys() ^ b.keys())[:5]}")
    return max((abs(a[k] - b[k]) for k in a), default=0.0)


def store_facts(store: Path) -> dict:
    """Steps committed, their summed wall_s and torch threads (manifests), and the run's backend event."""
    manifests = [json.loads(p.read_text()) for p in store.glob("objects/*/*/manifest.json")]
    prov = [m.get("provenance", {}) for m in manifests]
    backend = None
    for events in store.glob("records/*/*/events.jsonl"):
        for line in events.read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "backend":
                backend = {k: v for k, v in event.items() if k not in ("event", "t")}
    return {
        "steps": len(manifests),
        "step_wall_s": round(sum(p.get("wall_s", 0.0) for p in prov), 3),
        "threads": sorted({p["threads"] for p in prov if "threads" in p}),
        "workers": sorted({p["worker"] for p in prov if "worker" in p}),
        "backend": backend,
    }


def run_once(mode: str, spec: str, overrides: list[str], base: Path, n: int, timeout: float) -> dict:
    jobs, threads = MODES[mode]
    store = base / f"{mode}-{n}"
    t0 = time.perf_counter()
    hepc("run", spec, *overrides, f"runtime.threads={threads}", "--jobs", str(jobs), "--store", str(store), "--quiet",
         timeout=timeout)  # fmt: skip
    wall = time.perf_counter() - t0
    results = json.loads(hepc("results", spec, *overrides, "--json", "--store", str(store), timeout=timeout).stdout)
    facts = store_facts(store)
    return {"mode": mode, "jobs": jobs, "threads": threads, "wall_s": round(wall, 3), "losses": losses(results),
            **facts}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", nargs="?", default=str(ROOT / "specs" / "quickstart.yaml"))
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides, as for hepc run")
    ap.add_argument("--reps", type=int, default=2, help="runs per mode (default 2: A B B A)")
    ap.add_argument("--keep", help="keep the stores in this folder (default: temporary, deleted)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one hepc run may take")
    args = ap.parse_args()
    if args.reps < 1:
        ap.error("--reps must be >= 1")

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hepc-bench-jobs-"))
    base.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    print(f"spec: {args.spec} {' '.join(args.overrides)}".rstrip())
    print(f"machine: {cores} cores, {platform.machine()}, Python {platform.python_version()}; stores under {base}")
    if cores != 2:
        print(f"note: this benchmark is meant for a 2-core machine; this one has {cores}")
    runs: list[dict] = []
    try:
        for i in range(args.reps):
            for mode in ("jobs1", "jobs2") if i % 2 == 0 else ("jobs2", "jobs1"):
                r = run_once(mode, args.spec, args.overrides, base, i + 1, args.timeout)
                runs.append(r)
                print(f"  run {len(runs):>2}  {mode}  (--jobs {r['jobs']}, threads {r['threads']})  "
                      f"{r['wall_s']:8.1f} s   {r['steps']} steps, Σ step wall {r['step_wall_s']:.1f} s, "
                      f"backend {r['backend']}", flush=True)  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    walls = {m: [r["wall_s"] for r in runs if r["mode"] == m] for m in MODES}
    means = {m: statistics.fmean(w) for m, w in walls.items()}
    ratio = means["jobs1"] / means["jobs2"]
    first = {m: next(r for r in runs if r["mode"] == m) for m in MODES}
    across = max_abs_diff(first["jobs1"]["losses"], first["jobs2"]["losses"])
    within = max((max_abs_diff(first[r["mode"]]["losses"], r["losses"]) for r in runs), default=0.0)
    for m in MODES:
        print(f"{m}: mean {means[m]:.1f} s over {len(walls[m])} run(s): {', '.join(f'{w:.1f}' for w in walls[m])}")
    print(f"ratio jobs1/jobs2: {ratio:.3f}  ({'--jobs 2 faster' if ratio > 1 else '--jobs 2 not faster'})")
    print(f"val losses: max |jobs1 - jobs2| = {across:.3g} over {len(first['jobs1']['losses'])} figures; "
          f"max difference between runs of one mode = {within:.3g}")  # fmt: skip
    print(json.dumps({
        "bench": "jobs", "spec": args.spec, "overrides": args.overrides, "reps": args.reps, "cores": cores,
        "order": [r["mode"] for r in runs], "walls_s": walls, "mean_s": {m: round(v, 3) for m, v in means.items()},
        "ratio_jobs1_over_jobs2": round(ratio, 4), "max_abs_val_loss_diff": across,
        "max_abs_val_loss_diff_same_mode": within, "steps": first["jobs1"]["steps"],
        "step_wall_s": {m: [r["step_wall_s"] for r in runs if r["mode"] == m] for m in MODES},
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
