"""Sampling speed with and without the KV cache (docs/benchmarks.md, "Sampling").

Tokens per second for --tokens new tokens from the top-K mixture of a trained population (default:
the quickstart's q0 population), for each K, with the per-member KV cache and without it (every new
token recomputes the last seq_len tokens), one CPU thread, the same seed and prompt. The population
must be trained first (`hepc run specs/quickstart.yaml --store STORE`).

    python bench/sample_speed.py [--spec specs/quickstart.yaml] [--store runs] [--k 1 4 8] [--tokens 256]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "specs" / "quickstart.yaml"))
    ap.add_argument("--store", default="runs")
    ap.add_argument("--k", nargs="+", type=int, default=[1, 4, 8])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import numpy as np
    import torch

    import hepc
    from hepc.use.sample import generate_ids
    from hepc.use.text import encode_document

    torch.set_num_threads(args.threads)
    print("| K | tokens | without cache (tok/s) | with cache (tok/s) | speed-up |")
    print("|---:|---:|---:|---:|---:|")
    for k in args.k:
        ens = hepc.load_ensemble(args.spec, k=k, store=args.store)
        prompt = encode_document(ens.tokenizer, "def main():\n")
        list(generate_ids(ens, prompt, max_tokens=4, seed=0))  # members loaded, kernels warm
        rates = {}
        for cache in (False, True):
            t0 = time.perf_counter()
            out = list(generate_ids(ens, np.asarray(prompt), max_tokens=args.tokens, seed=0, stop_at_eot=False,
                                    cache=cache))
            rates[cache] = len(out) / (time.perf_counter() - t0)
        print(f"| {k} | {args.tokens} | {rates[False]:.1f} | {rates[True]:.1f} | {rates[True] / rates[False]:.1f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
