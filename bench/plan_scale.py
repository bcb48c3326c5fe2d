"""Benchmark: bookkeeping cost at paper scale (1,443 steps). Not a test.

    python bench/plan_scale.py [SPEC] [--repeat N]
    flock /tmp/hepc-bench.lock python bench/plan_scale.py --full-store [--repeat N] [--keep DIR]

Times `hepc plan SPEC --json` as a fresh process (what a user waits for, imports included) and
the in-process compile + plan, and checks that torch was never imported.

--full-store: a fully committed store of the paper's graph shape. The paper's token shards are not
here, so it uses a variant of specs/paper-1.8b.yaml (`paper-shape`, written next to the store) with
the same graph (P=5 trajectories x C=96 cycles x E=2 epochs, distillation from cycle 9, the same
prior budgets 8..256: 1,443 steps, 480 snapshots) on the synthetic source with a 12K-parameter byte
GPT, so that `hepc run` itself builds the store (real objects, manifests and digests, tiny files) in
well under a minute. Then, each in fresh processes (median of N): `hepc plan`, a no-op `hepc run`,
and `hepc run population.cycles=97` on a copy of the store, whose bookkeeping is its wall minus the
new steps' own wall_s (from their manifests). Reports whether torch was imported by plan / no-op run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec", nargs="?", default=str(ROOT / "specs" / "paper-1.8b.yaml"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--full-store", action="store_true", help="time plan / no-op run / +1 cycle on a committed store")
    ap.add_argument("--keep", help="with --full-store: build (or reuse) the store in this folder")
    args = ap.parse_args()
    if args.full_store:
        full_store(args)
        return

    with tempfile.TemporaryDirectory() as store:
        cli = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "hepc.cli", "plan", args.spec, "--json", "--store", store],
                check=True, capture_output=True,
            )
            cli.append(time.perf_counter() - t0)

        from hepc.compile.compiler import compile_spec
        from hepc.compile.plan import make_plan
        from hepc.spec.load import load_spec
        from hepc.store.objects import Store

        inproc = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            compiled = compile_spec(load_spec(args.spec))
            plan = make_plan(compiled, Store(store))
            inproc.append(time.perf_counter() - t0)
        assert "torch" not in sys.modules, "planning imported torch"

    print(f"spec: {args.spec} ({len(plan.steps)} steps)")
    print(f"hepc plan --json, fresh process: median {statistics.median(cli):.3f} s (min {min(cli):.3f})")
    print(f"compile + plan in process:       median {statistics.median(inproc) * 1000:.1f} ms")
    print("torch imported: no")


def paper_shape(spec_path: Path) -> Path:
    """Write the paper-shaped variant of specs/paper-1.8b.yaml (same graph, tiny model and data)."""
    import yaml

    spec = yaml.safe_load((ROOT / "specs" / "paper-1.8b.yaml").read_text())
    spec["name"] = "paper-shape"
    spec["data"] = {
        "source": {"kind": "synthetic", "alphabet_size": 16, "order": 2, "concentration": 0.2, "doc_tokens": 32,
                   "seed": 0},
        "tokenizer": "bytes", "train_tokens": 512, "heldout_tokens": 128, "val_tokens": 256, "seq_len": 16,
    }  # fmt: skip
    spec["model"] = {"n_layer": 1, "d_model": 16, "n_head": 1, "dropout": 0.0}
    spec["optimizer"] = {"lr": 0.003, "weight_decay": 0.1, "batch_tokens": 256, "grad_clip": 1.0}
    spec["prior"]["steps"] = 20
    spec["runtime"] = {"device": "cpu", "threads": 1, "checkpoint_every_steps": 0, "log_every_steps": 1}
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec_path


def _hepc(*args: str, probe: bool = False) -> float:
    """Wall of `hepc ARGS` in a fresh process; with probe, fail if torch got imported."""
    code = "import runpy, sys; sys.argv = ['hepc', *sys.argv[1:]]\n"
    code += "try:\n    runpy.run_module('hepc.cli', run_name='__main__')\n"
    code += "finally:\n    print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    cmd = [sys.executable, "-c", code, *args] if probe else [sys.executable, "-m", "hepc.cli", *args]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"hepc {' '.join(args)} failed:\n{out.stderr}")
    if probe and "NO-TORCH" not in out.stderr:
        raise SystemExit(f"hepc {args[0]} imported torch")
    return wall


def full_store(args) -> None:
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hepc-paper-shape-"))
    folder.mkdir(parents=True, exist_ok=True)
    spec = str(paper_shape(folder / "paper-shape.yaml"))
    store = folder / "store"
    if not (store / "objects").is_dir():
        t0 = time.perf_counter()
        _hepc("run", spec, "--store", str(store), "--quiet")
        print(f"built the committed store ({store}) in {time.perf_counter() - t0:.1f} s")
    _hepc("run", spec, "--store", str(store), "--quiet")  # settles the integrity index
    time.sleep(1.2)
    _hepc("run", spec, "--store", str(store), "--quiet")
    plan = [_hepc("plan", spec, "--store", str(store), probe=i == 0) for i in range(args.repeat)]
    noop = [_hepc("run", spec, "--store", str(store), "--quiet", probe=i == 0) for i in range(args.repeat)]
    before = {p.name for p in (store / "objects").glob("*/*")}
    rerun, own = [], []
    for _ in range(args.repeat):
        # on the store itself (a copy would change every file's ctime and inode, so its index would
        # not match); the new objects are removed afterwards, leaving the old ones untouched
        wall = _hepc("run", spec, "population.cycles=97", "--store", str(store), "--quiet")
        new = [p for p in (store / "objects").glob("*/*") if p.name not in before]
        steps = sum(json.loads((p / "manifest.json").read_text())["provenance"]["wall_s"] for p in new)
        rerun.append(wall)
        own.append(steps)
        for p in new:
            shutil.rmtree(p)
    extra = [w - s for w, s in zip(rerun, own)]
    load = os.getloadavg()
    print(f"spec: {spec} (paper-shape variant of specs/paper-1.8b.yaml: 1,443 steps, 480 snapshots)")
    print(f"hepc plan, fresh process:           median {statistics.median(plan):.3f} s (min {min(plan):.3f})")
    print(f"hepc run, no-op (all committed):    median {statistics.median(noop):.3f} s (min {min(noop):.3f})")
    print(f"hepc run population.cycles=97:      median {statistics.median(rerun):.3f} s wall, "
          f"{len(new)} new steps whose own wall_s sum to {statistics.median(own):.3f} s")
    print(f"  bookkeeping (wall - steps' wall_s): median {statistics.median(extra):.3f} s (min {min(extra):.3f})")
    print("torch imported by plan / no-op run: no")
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
