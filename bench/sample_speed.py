"""Sampling speed with and without the KV cache, and against transformers (docs/benchmarks.md, "Sampling").

Tokens per second for --tokens new tokens from the top-K mixture of a trained population (default:
the quickstart's q0 population), for each K, with the members' KV caches (`generate_ids(cache=True)`,
the K members as one batched step) and without them (every new token recomputes the last seq_len
tokens: the sampler before the cache), one CPU thread, the same seed and prompt. At K = 1 the same
member, exported with `hepc export --format hf` into a temporary folder, also samples with
transformers' `generate` (do_sample, temperature 1, no top-k / top-p, use_cache, no end-of-text
stop, as hepc's rows). Every rate is the median of --repeats runs, taken in turns (each repeat
runs every configuration once) so that a contended machine slows all of them alike; the range
follows in brackets. Ratios are medians of the per-repeat ratios. The population must be trained first (`hepc run specs/quickstart.yaml --store
STORE`).

    python bench/sample_speed.py [--spec specs/quickstart.yaml] [--store runs] [--k 1 4 8] [--tokens 256]
                                 [--repeats 5] [--no-transformers]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "def main():\n"


def hepc_rate(ens, prompt, tokens: int, cache: bool) -> float:
    from hepc.use.sample import generate_ids

    t0 = time.perf_counter()
    out = list(generate_ids(ens, prompt, max_tokens=tokens, seed=0, stop_at_eot=False, cache=cache))
    rate = len(out) / (time.perf_counter() - t0)
    assert len(out) == tokens
    return rate


def transformers_member(ens, folder: Path):
    """The ensemble's first member (K = 1) exported as a transformers model folder and loaded back."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from hepc.use.export import export

    transformers.logging.set_verbosity_error()  # its note that 256 tokens pass max_position_embeddings
    transformers.logging.disable_progress_bar()
    export(ens.resolved, ens.tokenizer, folder / "k1", hf=True)
    (member,) = ens.resolved.members
    model = AutoModelForCausalLM.from_pretrained(folder / "k1" / "hf" / f"{member.name}-{member.key[:12]}",
                                                 local_files_only=True, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # run to max_new_tokens, as hepc's rows do
    return model


def transformers_rate(model, prompt, tokens: int) -> float:
    import torch

    ids = torch.as_tensor(prompt, dtype=torch.long)[None]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=None,
                         top_p=None, max_new_tokens=tokens, use_cache=True, pad_token_id=int(prompt[0]))
    rate = (out.size(1) - ids.size(1)) / (time.perf_counter() - t0)
    assert out.size(1) - ids.size(1) == tokens
    return rate


def cell(rates: list[float]) -> str:
    return f"{statistics.median(rates):.1f} [{min(rates):.0f}–{max(rates):.0f}]"


def paired(a: list[float], b: list[float]) -> float:
    """The median of the per-repeat ratios a / b (runs of one repeat are seconds apart: the load on a
    shared machine mostly cancels)."""
    return statistics.median(x / y for x, y in zip(a, b))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "specs" / "quickstart.yaml"))
    ap.add_argument("--store", default="runs")
    ap.add_argument("--k", nargs="+", type=int, default=[1, 4, 8])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-transformers", action="store_true", help="leave out the transformers row")
    args = ap.parse_args()

    import numpy as np
    import torch

    import hepc
    from hepc.use.sample import generate_ids
    from hepc.use.text import encode_document

    torch.set_num_threads(args.threads)
    ensembles = {k: hepc.load_ensemble(args.spec, k=k, store=args.store, threads=args.threads) for k in args.k}
    prompt = np.asarray(encode_document(ensembles[args.k[0]].tokenizer, PROMPT))
    for ens in ensembles.values():  # members loaded, kernels warm
        for cache in (False, True):
            list(generate_ids(ens, prompt, max_tokens=4, seed=0, cache=cache))
    with tempfile.TemporaryDirectory(prefix="hepc-bench-hf-") as tmp:
        hf = None
        if not args.no_transformers and 1 in ensembles:
            hf = transformers_member(ensembles[1], Path(tmp))
            transformers_rate(hf, prompt, 4)
        rates: dict[tuple, list[float]] = {}
        for _ in range(args.repeats):
            for k, ens in ensembles.items():
                for cache in (False, True):
                    rates.setdefault((k, cache), []).append(hepc_rate(ens, prompt, args.tokens, cache))
            if hf is not None:
                rates.setdefault("transformers", []).append(transformers_rate(hf, prompt, args.tokens))

    print(f"{args.tokens} new tokens after {prompt.size} prompt tokens, {args.threads} thread(s), "
          f"median of {args.repeats} [range], tok/s")
    print()
    print("| K | without the cache | with the cache | speed-up | transformers `generate` | cache / transformers |")
    print("|---:|---:|---:|---:|---:|---:|")
    for k in ensembles:
        on = rates[k, True]
        row = f"| {k} | {cell(rates[k, False])} | {cell(on)} | {paired(on, rates[k, False]):.1f}× |"
        if k == 1 and "transformers" in rates:
            row += f" {cell(rates['transformers'])} | {paired(on, rates['transformers']):.2f}× |"
        else:
            row += " | |"
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
