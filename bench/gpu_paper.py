"""The paper's shape on GPUs for a few steps: tokens/s, peak memory and MFU per GPU (bench/gpu.sh runs it).

    python bench/gpu_paper.py [--layers 4] [--steps 5] [--gpus N] [--compile] [--peak-tflops X] [--json]

The architecture of specs/paper-1.8b.yaml (d_model 2048, 16 heads, 2,048-token context, GPT-2 vocabulary of
50,257, dropout 0.1, Muon + AdamW with the spec's settings, a batch of 524,288 tokens) at reduced depth, on
synthetic tokens, through hepc's own `train_cycle` with the spec's runtime (cuda, bfloat16, micro-batches
chosen by hepc, the chunked loss): a plain cycle (cross-entropy), then a distilled one from it (α 0.45,
T 1.2: the teacher's forward included), `--steps` optimizer steps each, data-parallel over `--gpus` GPUs
(gpus_per_step; default every visible GPU).

Per cycle: steady tokens/s (median over the steps after the first two: warm-up and compilation), tokens/s
per GPU, peak memory of GPU 0 (torch.cuda.max_memory_allocated) next to hepc's estimate (hepc/train/memory.py),
and MFU = model FLOPs per token × tokens/s per GPU / peak dense bf16 FLOP/s, where model FLOPs per token
(hepc.sizes.model_flops_per_token) count 6 per weight of the blocks and the output head (the input
embedding is a lookup), attention's 12·L·d·T, and in the distilled cycle the teacher's forward (a third
more); recomputation is not counted. The last line is JSON. Exit 2 without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PAPER = {"vocab": 50257, "d_model": 2048, "n_head": 16, "seq_len": 2048, "batch_tokens": 524288}
SMOKE = {"vocab": 512, "d_model": 64, "n_head": 2, "seq_len": 64, "batch_tokens": 2048}  # --smoke: on the CPU
OPTIMIZER = {  # specs/paper-1.8b.yaml
    "kind": "muon", "lr": 0.0006, "weight_decay": 1.3, "grad_clip": 1.0,
    "betas": [0.8, 0.95], "eps": 1e-8, "muon_lr": 0.01, "muon_momentum": 0.95, "nesterov": True, "ns_steps": 5,
}  # fmt: skip
DISTILL = {"alpha": 0.45, "temperature": 1.2}
SCHEDULE = {"kind": "cyclic", "lr_floor": 0.08, "wd_floor": 0.7}


def _corpus(folder: Path, tokens: int, vocab: int) -> Path:
    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(folder / "train.npy", rng.integers(0, vocab, tokens).astype(np.uint16))
    np.save(folder / "train_docs.npy", np.arange(0, tokens, 4096, dtype=np.int64))
    (folder / "meta.json").write_text(json.dumps({"vocab_size": vocab}))
    return folder


def run(layers: int, steps: int, gpus: int, compile_: bool, peak_tflops: float | None, smoke: bool = False) -> dict:
    """Both cycles at the paper's shape on CUDA (smoke: a tiny shape on the CPU, which checks this script)."""
    import torch
    from gpu_report import peak_flops

    from hepc.sizes import model_flops_per_token, param_count
    from hepc.train import memory
    from hepc.train.loop import train_cycle
    from hepc.train.setup import device_capacity

    shape = SMOKE if smoke else PAPER
    vocab, d_model, seq_len, batch_tokens = shape["vocab"], shape["d_model"], shape["seq_len"], shape["batch_tokens"]
    cuda = not smoke
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = peak_flops(device_name, peak_tflops) if cuda or peak_tflops else None
    model = {"n_layer": layers, "d_model": d_model, "n_head": shape["n_head"], "dropout": 0.1}
    optimizer = {**OPTIMIZER, "batch_tokens": batch_tokens}
    runtime = {"device": "cuda" if cuda else "cpu", "dtype": "bfloat16", "compile": compile_,
               "checkpoint_every_steps": 0, "log_every_steps": 1, "gpus_per_step": gpus}  # fmt: skip
    rows_per_gpu = batch_tokens // seq_len // gpus
    capacity = device_capacity(torch.device("cuda", 0) if cuda else torch.device("cpu"), runtime, gpus)
    out = {"device": device_name, "gpus": gpus, "layers": layers, "compile": compile_, "steps": steps,
           "shape": shape, "params": param_count(vocab, layers, d_model), "peak_flops": peak, "cycles": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hepc-gpu-paper-") as tmp:
        root = Path(tmp)
        tokens = steps * (batch_tokens // seq_len) * (seq_len + 1) + seq_len + 1
        corpus = _corpus(root / "corpus", tokens, vocab)
        epochs = steps * batch_tokens / tokens
        prev = None
        for index, distill in ((1, None), (2, DISTILL)):
            if cuda:
                torch.cuda.reset_peak_memory_stats(0)
            t0 = time.perf_counter()
            summary = train_cycle(
                model=model, optimizer=optimizer, schedule=SCHEDULE, distill=distill, perturb_scale=0.0,
                cycle_index=index, trajectory_seed=1, epochs_per_cycle=epochs, seq_len=seq_len, corpus_dir=corpus,
                prev_dir=prev, out_dir=root / f"c{index}", work_dir=root / f"w{index}", runtime=runtime,
            )  # fmt: skip
            wall = time.perf_counter() - t0
            measured = torch.cuda.max_memory_allocated(0) if cuda else None
            records = [json.loads(x) for x in (root / f"c{index}" / "metrics.jsonl").read_text().splitlines()]
            rates = [r["tokens_per_s"] for r in records]
            steady = statistics.median(rates[2:] or rates[1:] or rates)
            per_gpu = steady / gpus
            flops = model_flops_per_token(vocab, layers, d_model, seq_len, teacher=distill is not None)
            sizes = memory.Shape(vocab, layers, d_model, shape["n_head"], seq_len, True, "muon", distill is not None)
            choice = memory.choose(sizes, rows_per_gpu, capacity.usable, device=capacity.device, bf16=cuda)
            out["cycles"].append({
                "kind": "distilled" if distill else "ce", "steps": summary["steps"], "wall_s": round(wall, 1),
                "tokens_per_s": steady, "tokens_per_s_per_gpu": per_gpu, "step_rates": rates,
                "peak_memory_bytes": measured, "estimated_bytes": choice.estimate.total,
                "micro_batch": choice.micro, "rows_per_gpu": rows_per_gpu,
                "activation_checkpointing": choice.checkpointing, "model_flops_per_token": flops,
                "mfu": flops * per_gpu / peak if peak else None, "final_loss": summary["final_loss"],
            })  # fmt: skip
            prev = root / f"c{index}"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4, help="depth (the paper: 30; 4 fits a short run)")
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per cycle")
    ap.add_argument("--gpus", type=int, default=0, help="gpus_per_step (default: every visible GPU)")
    ap.add_argument("--compile", action="store_true", help="runtime.compile")
    ap.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s of one GPU (default: by name)")
    ap.add_argument("--json", action="store_true", help="only the JSON line")
    ap.add_argument("--smoke", action="store_true", help="a tiny shape on the CPU: checks this script, measures nothing")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("error: torch is not installed; nothing was run", file=sys.stderr)
        return 2
    if args.smoke:
        result = run(args.layers, args.steps, args.gpus or 1, args.compile, args.peak_tflops, smoke=True)
        print(json.dumps({"bench": "gpu-paper", **result}))
        return 0
    if not torch.cuda.is_available():
        print(f"error: bench/gpu_paper.py needs a CUDA GPU; torch {torch.__version__} sees none; nothing was run",
              file=sys.stderr)  # fmt: skip
        return 2
    gpus = args.gpus or torch.cuda.device_count()
    if gpus > torch.cuda.device_count():
        print(f"error: --gpus {gpus} but {torch.cuda.device_count()} GPU(s) are visible", file=sys.stderr)
        return 2
    result = run(args.layers, args.steps, gpus, args.compile, args.peak_tflops)
    if not args.json:
        for c in result["cycles"]:
            mfu = "n/a" if c["mfu"] is None else f"{c['mfu']:.1%}"
            print(f"{result['device']} × {gpus}, {result['layers']} layers, {'compiled' if result['compile'] else 'eager'}, "
                  f"{c['kind']}: {c['tokens_per_s']:,.0f} tokens/s ({c['tokens_per_s_per_gpu']:,.0f} per GPU), "
                  f"MFU {mfu}, peak memory {c['peak_memory_bytes'] / 1e9:.1f} GB (estimate "
                  f"{c['estimated_bytes'] / 1e9:.1f} GB), micro-batch {c['micro_batch']} of {c['rows_per_gpu']}")
    print(json.dumps({"bench": "gpu-paper", **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
