"""What reading with digests costs (docs/benchmarks.md, "Reading with digests").

A run hashes every input object of a step in full right before the step's body reads it, and
`results`, `load_ensemble`, `sample`, `score` and `export` check each file they read on the bytes
read (docs/reliability.md). This measures that work on a store the specs were run into:

- per step kind: the bytes of the step's inputs and the time to hash them (xxh3_128, every file,
  as `hepc run` does before the body), next to the step's own wall time from its manifest;
- the whole graph: hashing time as a share of training time;
- a member snapshot: read + digest check, next to building the model from those bytes;
- `hepc results`' reads (prior.json and curve.json, digest-checked);
- `hepc verify --scrub` over the whole store (its rate).

    python bench/digest_reads.py SPEC... [--store runs] [--repeat 3]

Timings are medians of --repeat passes with the files in the page cache (as a run finds its inputs:
just written or just read by the step before). Reads from a cold disk add the disk's read time,
which the body's own reads would pay otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _bytes(obj: Path) -> int:
    return sum(p.stat().st_size for p in obj.rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="+")
    ap.add_argument("--store", default="runs")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from hepc.compile.compiler import compile_spec
    from hepc.spec.load import load_spec
    from hepc.store.objects import Store
    from hepc.store.verify import check_object

    store = Store(args.store)
    per_kind: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0])  # steps, input bytes, hash s, wall s
    hashed: dict[Path, float] = {}
    seen_steps: set[str] = set()
    member = None
    for spec in args.specs:
        compiled = compile_spec(load_spec(spec, []))
        for step in compiled.graph.order():
            obj = store.find(step)
            if obj is None or step.key in seen_steps:
                continue
            seen_steps.add(step.key)
            wall = float(store.manifest(obj)["provenance"].get("wall_s") or 0.0)
            row = per_kind[step.kind]
            row[0] += 1
            row[3] += wall
            for key in step.upstream():
                up = store.find(compiled.graph[key])
                if up is None:
                    continue
                if up not in hashed:
                    hashed[up] = _median_time(lambda up=up: check_object(up, full=True), args.repeat)
                row[1] += _bytes(up)
                row[2] += hashed[up]
            if step.kind == "cycle":
                member = obj

    total_hash = sum(r[2] for r in per_kind.values())
    total_wall = sum(r[3] for r in per_kind.values())
    print(f"store {args.store}: {sum(r[0] for r in per_kind.values())} committed steps of {', '.join(args.specs)}")
    print()
    print("| step kind | steps | input bytes hashed | hashing (s) | steps' wall (s) | share |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, (n, b, h, w) in sorted(per_kind.items()):
        print(f"| {kind} | {n} | {b / 1e6:.1f} MB | {h:.3f} | {w:.1f} | {100 * h / w if w else 0:.2f} % |")
    print(f"| all | {sum(r[0] for r in per_kind.values())} | {sum(r[1] for r in per_kind.values()) / 1e6:.1f} MB | "
          f"{total_hash:.3f} | {total_wall:.1f} | {100 * total_hash / total_wall if total_wall else 0:.2f} % |")

    if member is not None:
        import torch
        from safetensors.torch import load

        from hepc.use.source import MemberRef, load_member

        info = store.manifest(member)["files"]["model.safetensors"]
        ref = MemberRef(key="x", name="m", trajectory=1, cycle=1, weight=1.0, prior_weight=1.0,
                        path=member / "model.safetensors", xxh3_128=info["xxh3_128"], size=info["size"])
        checked = _median_time(lambda: load_member(ref), args.repeat)
        plain = _median_time(lambda: (member / "model.safetensors").read_bytes(), args.repeat)
        data = load_member(ref)
        build = _median_time(lambda: {k: v.clone() for k, v in load(data).items()}, args.repeat)
        del torch
        print()
        print(f"member snapshot ({info['size'] / 1e6:.2f} MB): read {plain * 1e3:.2f} ms, read + digest check "
              f"{checked * 1e3:.2f} ms (+{(checked - plain) * 1e3:.2f} ms), tensors from the bytes {build * 1e3:.2f} ms")

    from hepc.report.results import collect

    compiled = compile_spec(load_spec(args.specs[-1], []))
    shown = _median_time(lambda: collect(compiled, Store(args.store)), args.repeat)
    print(f"`hepc results` collection (prior, curve, corpus meta read with digest checks): {shown * 1e3:.1f} ms")

    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "hepc.cli", "verify", "--scrub", "--store", args.store],
                         capture_output=True, text=True, cwd=ROOT)
    print(f"`hepc verify --scrub` ({time.perf_counter() - t0:.1f} s with start-up): {out.stdout.strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
