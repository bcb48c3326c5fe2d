"""Seed spread of an independent-seed ensemble baseline, by resampling members (issue: seeds and
significance). Train N members once (e.g. `specs/repro/ensemble-24.yaml`, N = 24), then draw K of
them (K = the baseline's size, 16) many times and score each draw's uniform probability average on
val from the stored per-token probabilities: the standard deviation of those losses is the spread
a K-member baseline has from its seeds alone. Nothing is trained or refit here.

    python bench/ensemble_spread.py specs/repro/ensemble-24.yaml --k 16 --draws 2000 --store runs/repro [--json]

Reads only committed, intact score objects (a damaged one is named and the script exits 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def spread(spec: str, k: int, draws: int, store: str | None, seed: int = 0) -> dict:
    import numpy as np

    from hepc.compile.compiler import compile_spec
    from hepc.prior.rows import uniform_weights
    from hepc.prior.select import ensemble_loss
    from hepc.spec.load import load_spec
    from hepc.store.layout import resolve_store_path
    from hepc.store.objects import Store

    loaded = load_spec(spec)
    compiled = compile_spec(loaded)
    the_store = Store(resolve_store_path(store, loaded.spec.runtime.store))
    (pop,) = compiled.populations
    folders = []
    for mb in pop.members:
        path = the_store.find_intact(compiled.graph[mb.score_keys["val"]])
        if path is None:
            raise SystemExit(f"error: {spec}: member t{mb.trajectory}-c{mb.cycle} is not scored yet (run `hepc run`)")
        folders.append(path)
    P = np.stack([np.load(Path(f) / "probs.npy") for f in folders])
    n = P.shape[0]
    if not 1 <= k <= n:
        raise SystemExit(f"error: --k {k} must be between 1 and the {n} members")
    rng = np.random.default_rng(seed)
    losses = np.array([ensemble_loss(P, np.sort(rng.choice(n, size=k, replace=False)), uniform_weights(k))
                       for _ in range(draws)])
    first = ensemble_loss(P, np.arange(k), uniform_weights(k))
    return {
        "spec": loaded.spec.name, "members": n, "k": k, "draws": draws, "seed": seed,
        "first_k_loss": first, "mean": float(losses.mean()), "sd": float(losses.std(ddof=1)),
        "min": float(losses.min()), "max": float(losses.max()),
        "note": "sd over draws of K of N independently seeded members (uniform probability average, val)",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--store")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from hepc.errors import HepcError

    try:
        out = spread(args.spec, args.k, args.draws, args.store)
    except HepcError as e:
        for p in e.problems:
            print(f"error: {p}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{out['spec']}: {out['k']} of {out['members']} members, {out['draws']} draws: val loss "
              f"{out['mean']:.4f} ± {out['sd']:.4f} (range {out['min']:.4f}–{out['max']:.4f}; "
              f"the first {out['k']}: {out['first_k_loss']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
