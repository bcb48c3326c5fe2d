"""Training throughput and MFU per GPU, read from stores that `hepc run` filled (bench/gpu.sh runs it).

    python bench/gpu_report.py [LABEL=]STORE [...] [--peak-tflops X] [--json]
    python bench/gpu_report.py gpt-85m=/tmp/s1 gpt-85m-compile=/tmp/s2     # compile against eager

For every committed training cycle in a store: its tokens and wall time (summary.json), its worker,
device and data-parallel ranks (the manifest's provenance), its parameter count N (hepc.sizes, from the
cycle's model and the corpus's vocabulary) and its logged tokens/s (metrics.jsonl). Per worker (`main`
when one process ran everything), per GPU (a worker's cycle on gpus_per_step = k GPUs counts k):
    tokens/s (cycle)    Σ tokens / Σ wall_s / k: whole cycles, with model build, warm-up (and
                        torch.compile) and the final save
    tokens/s (steady)   median of the logged intervals, each cycle's first interval left out (warm-up), / k
    MFU                 model FLOPs per token × tokens/s per GPU / peak bf16 dense FLOP/s of the GPU (its
                        name looked up in PEAK, or --peak-tflops). Model FLOPs per token
                        (hepc.sizes.model_flops_per_token): 6 per weight of the blocks and the output head
                        (the input embedding is a lookup), attention's 12·L·d·T, and in a distilled cycle
                        the teacher's forward (a third more)
Stores whose cycles train the same model are compared: steady tokens/s against the first such store.
The last line is JSON. Reads only; a store may be partial (a run stopped by its time limit).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from hepc.sizes import model_flops_per_token, param_count

# Peak dense bf16 tensor-core FLOP/s by GPU name (NVIDIA data sheets; "with sparsity" figures halved).
# First match wins: more specific names first.
PEAK = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200", 989e12),  # also GH200
    ("H100", 989e12),  # SXM
    ("A100", 312e12),
)


def peak_flops(device: str, override_tflops: float | None) -> float | None:
    if override_tflops is not None:
        return override_tflops * 1e12
    name = device.removeprefix("cuda:")
    return next((peak for key, peak in PEAK if key.lower() in name.lower()), None)


def _corpus_meta(store: Path, corpus_key: str) -> dict:
    (folder,) = store.glob(f"objects/corpus/*-{corpus_key[:12]}")
    return json.loads((folder / "meta.json").read_text())


def read_cycles(store: Path) -> list[dict]:
    """One row per committed cycle of `store`."""
    rows = []
    for manifest_path in sorted(store.glob("objects/cycle/*/manifest.json")):
        folder = manifest_path.parent
        manifest = json.loads(manifest_path.read_text())
        summary = json.loads((folder / "summary.json").read_text())
        prov, params = manifest["provenance"], manifest["params"]
        model = params["model"]
        vocab = int(_corpus_meta(store, manifest["inputs"]["corpus"])["vocab_size"])
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
        logged = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")]
        rows.append({
            "cycle": manifest["name"],
            "worker": prov.get("worker", "main"),
            "device": prov.get("device", "?"),
            "host": prov.get("host"),
            "params": param_count(vocab, model["n_layer"], model["d_model"]),
            "ranks": int(prov.get("ranks", 1)),  # GPUs of a data-parallel cycle (gpus_per_step)
            "flops_per_token": model_flops_per_token(vocab, model["n_layer"], model["d_model"], params["seq_len"],
                                                     teacher=bool(summary.get("distilled"))),
            "model": f"{model['n_layer']}x{model['d_model']} T={params['seq_len']} V={vocab}",
            "tokens": int(summary["tokens"]),
            "wall_s": float(summary["wall_s"]),
            "steps": int(summary["steps"]),
            "steady": logged[1:] or logged,  # the first interval holds the warm-up (and compilation)
        })  # fmt: skip
    return rows


def per_worker(rows: list[dict], override_tflops: float | None) -> list[dict]:
    out = []
    for worker in sorted({r["worker"] for r in rows}):
        mine = [r for r in rows if r["worker"] == worker]
        device, n, ranks = mine[0]["device"], mine[0]["params"], mine[0]["ranks"]
        tokens, wall = sum(r["tokens"] for r in mine), sum(r["wall_s"] for r in mine)
        flops = sum(r["flops_per_token"] * r["tokens"] for r in mine)  # distilled cycles weigh more
        fpt = flops / tokens if tokens else 0.0
        cycle_tps = tokens / wall / ranks if wall > 0 else None
        steady = [v / r["ranks"] for r in mine for v in r["steady"]]
        steady_tps = statistics.median(steady) if steady else None
        peak = peak_flops(device, override_tflops)

        out.append({
            "worker": worker, "device": device, "model": mine[0]["model"], "params": n, "cycles": len(mine),
            "gpus": ranks, "tokens": tokens, "wall_s": round(wall, 3), "tokens_per_s_cycle": cycle_tps,
            "tokens_per_s_steady": steady_tps, "model_flops_per_token": fpt, "peak_flops": peak,
            "mfu_cycle": mfu(cycle_tps, fpt, peak), "mfu_steady": mfu(steady_tps, fpt, peak),
        })  # fmt: skip
    return out


def mfu(tokens_per_s: float | None, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOP utilisation: flops_per_token · tokens/s / peak FLOP/s (None when either is unknown)."""
    return None if peak is None or tokens_per_s is None else flops_per_token * tokens_per_s / peak


def _fmt(value, pattern: str) -> str:
    return "n/a" if value is None else format(value, pattern)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+", help="[LABEL=]STORE")
    ap.add_argument("--peak-tflops", type=float, help="peak dense FLOP/s of one GPU in TFLOP/s (overrides PEAK)")
    ap.add_argument("--json", action="store_true", help="only the JSON line")
    args = ap.parse_args()

    report = []
    for item in args.stores:
        label, _, path = item.rpartition("=")
        store = Path(path)
        if not (store / "objects").is_dir():
            print(f"error: {store} is not a store with objects (did the run start?)", file=sys.stderr)
            return 2
        rows = read_cycles(store)
        report.append({"label": label or store.name, "store": str(store), "workers": per_worker(rows, args.peak_tflops),
                       "cycles": [{k: v for k, v in r.items() if k != "steady"} for r in rows]})  # fmt: skip

    baselines: dict[str, dict] = {}
    for entry in report:  # compile on/off (or any two runs of one model): steady tokens/s against the first
        workers = [w for w in entry["workers"] if w["tokens_per_s_steady"]]
        if not workers:
            continue
        model = workers[0]["model"]
        total = sum(w["tokens_per_s_steady"] * w["gpus"] for w in workers)
        base = baselines.setdefault(model, {"label": entry["label"], "total": total})
        entry["steady_vs"] = {"label": base["label"], "ratio": total / base["total"]}

    if not args.json:
        for entry in report:
            print(f"{entry['label']}  ({entry['store']})")
            if not entry["workers"]:
                print("  no committed cycle")
            for w in entry["workers"]:
                print(
                    f"  {w['worker']:<8} {w['device']:<26} N={w['params'] / 1e6:.2f}M {w['model']:<22} "
                    f"cycles {w['cycles']}  per GPU: tokens/s cycle {_fmt(w['tokens_per_s_cycle'], ',.0f')}  "
                    f"steady {_fmt(w['tokens_per_s_steady'], ',.0f')}  MFU cycle {_fmt(w['mfu_cycle'], '.1%')}  "
                    f"steady {_fmt(w['mfu_steady'], '.1%')}"
                )
            vs = entry.get("steady_vs")
            if vs and vs["label"] != entry["label"]:
                print(f"  steady tokens/s (all workers) = {vs['ratio']:.3f} × {vs['label']}'s")
        if any(w["peak_flops"] is None for e in report for w in e["workers"]):
            print("note: MFU n/a where the GPU is not in PEAK; pass --peak-tflops")
    print(json.dumps({"bench": "gpu", "runs": report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
