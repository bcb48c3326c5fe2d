"""Benchmark: bookkeeping cost at paper scale (1,443 steps). Not a test.

    python bench/plan_scale.py [SPEC] [--repeat N]

Times `hepc plan SPEC --json` as a fresh process (what a user waits for, imports included) and
the in-process compile + plan, and checks that torch was never imported.
"""

from __future__ import annotations

import argparse
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
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as store:
        cli = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "hepc.cli", "plan", args.spec, "--json", "--store", store],
                check=True, capture_output=True,
            )
            cli.append(time.perf_counter() - t0)

        from hepc.compile import compile_spec
        from hepc.plan import make_plan
        from hepc.spec.load import load_spec
        from hepc.store import Store

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


if __name__ == "__main__":
    main()
