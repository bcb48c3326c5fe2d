"""Training throughput: a hepc cycle against plain PyTorch loops, measured interleaved in one process.

    flock /tmp/hepc-bench.lock python bench/throughput.py [--steps 24] [--reps 3] [--threads 2] [--profile]

Four runs per round, rounds repeated (the first is a warm-up and not counted), so that load drifting on
a shared machine hits every variant alike:
  cycle     hepc.train.loop.train_cycle, a CE cycle (store-free API, temp dirs, quickstart runtime:
            checkpoints every 50 steps, a log line every 10), wall of the whole call
  distill   the same, a distilled and perturbed cycle (teacher forward on every step)
  plain     a plain loop over hepc's GPT: same batch, AdamW with the same groups, grad clip, no
            checkpoints, logging or progress
  nanogpt   the same plain loop over a nanoGPT-shaped model (LayerNorm, GELU MLP 4x, learned positions,
            tied embeddings, causal SDPA) of the same width, depth, heads and sequence length
Model and batch are the quickstart's (specs/quickstart.yaml): 4 layers, d_model 128, 4 heads, seq_len 128,
4,096 tokens per step, byte vocabulary; the corpus is this Python's standard library source as bytes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hepc.train.loop import train_cycle
from hepc.train.model import GPT, GPTConfig
from hepc.train.optim import make_optimizer

VOCAB, SEQ_LEN, BATCH_TOKENS = 256, 128, 4096
MODEL = {"n_layer": 4, "d_model": 128, "n_head": 4, "dropout": 0.1}
OPTIMIZER = {"kind": "adamw", "lr": 0.003, "weight_decay": 0.5, "batch_tokens": BATCH_TOKENS, "grad_clip": 1.0,
             "betas": [0.9, 0.95], "eps": 1e-8}  # fmt: skip
SCHEDULE = {"kind": "cyclic", "lr_floor": 0.08, "wd_floor": 0.7}
DISTILL = {"alpha": 0.45, "temperature": 1.2}


def make_corpus(path: Path, tokens: int) -> Path:
    """`tokens` bytes of the standard library's .py files, one document per file (train.npy, train_docs.npy,
    meta.json: what train_cycle reads)."""
    lib = Path(json.__file__).resolve().parent.parent
    docs, total = [], 0
    for f in sorted(lib.glob("*.py")):
        data = f.read_bytes()
        if len(data) < 2 * SEQ_LEN:
            continue
        data = data[: tokens - total]
        docs.append(np.frombuffer(data, dtype=np.uint8).astype(np.uint16))
        total += len(data)
        if total >= tokens:
            break
    if total < tokens:
        raise SystemExit(f"only {total} bytes of standard library source found")
    lengths = np.array([len(d) for d in docs])
    np.save(path / "train.npy", np.concatenate(docs))
    np.save(path / "train_docs.npy", np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
    (path / "meta.json").write_text(json.dumps({"vocab_size": VOCAB}))
    return path


class NanoBlock(nn.Module):
    """nanoGPT's block (Karpathy): pre-LayerNorm, causal self-attention, GELU MLP of 4x width."""

    def __init__(self, d: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.attn_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        x = x + self.drop(self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C)))
        return x + self.drop(self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)))))


class NanoGPT(nn.Module):
    """Token + learned position embeddings, blocks, final LayerNorm, head tied to the token embedding."""

    def __init__(self, vocab: int, seq_len: int, n_layer: int, d: int, n_head: int, dropout: float):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(NanoBlock(d, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def run_cycle(corpus: Path, tmp: Path, name: str, epochs: float, prev: Path | None = None) -> tuple[float, int]:
    """(wall seconds, steps) of one train_cycle call, CE (prev None) or distilled + perturbed from `prev`."""
    out = tmp / name
    t0 = time.perf_counter()
    summary = train_cycle(
        model=MODEL, optimizer=OPTIMIZER, schedule=SCHEDULE, distill=DISTILL if prev else None,
        perturb_scale=0.25 if prev else 0.0, cycle_index=2 if prev else 1, trajectory_seed=1,
        epochs_per_cycle=epochs, seq_len=SEQ_LEN, corpus_dir=corpus, prev_dir=prev, out_dir=out,
        work_dir=tmp / (name + "-work"), progress=lambda info: None,
        runtime={"device": "cpu", "dtype": "float32", "threads": torch.get_num_threads(), "compile": False,
                 "checkpoint_every_steps": 50, "log_every_steps": 10},
    )  # fmt: skip
    return time.perf_counter() - t0, summary["steps"]


def run_plain(net: nn.Module, train: np.ndarray, steps: int, seed: int = 0) -> float:
    """Wall seconds of `steps` plain training steps (random windows, AdamW, clip); the model is built before."""
    batch_seqs = BATCH_TOKENS // SEQ_LEN
    rng = np.random.default_rng(seed)
    opt = make_optimizer(net, OPTIMIZER["lr"], OPTIMIZER["weight_decay"], OPTIMIZER["betas"], OPTIMIZER["eps"])
    net.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        starts = rng.integers(0, len(train) - SEQ_LEN - 1, batch_seqs)
        rows = np.stack([train[s : s + SEQ_LEN + 1] for s in starts]).astype(np.int64)
        x, y = torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:])
        logits = net(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), OPTIMIZER["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
    loss.item()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=24, help="optimizer steps per measured run")
    ap.add_argument("--reps", type=int, default=3, help="measured rounds (after one warm-up round)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="also cProfile one CE cycle and print the top entries")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tokens = args.steps * BATCH_TOKENS
    config = GPTConfig(VOCAB, MODEL["n_layer"], MODEL["d_model"], MODEL["n_head"], MODEL["dropout"], SEQ_LEN)
    times: dict[str, list[float]] = {"cycle": [], "distill": [], "plain": [], "nanogpt": []}
    with tempfile.TemporaryDirectory(prefix="hepc-bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "corpus").mkdir()
        corpus = make_corpus(tmp / "corpus", tokens + 1)  # one epoch = `steps` steps
        train = np.load(corpus / "train.npy")
        prev = tmp / "prev"
        run_cycle(corpus, tmp, "prev", 1.0)  # the teacher of the distilled cycles
        for rep in range(args.reps + 1):
            wall, steps = run_cycle(corpus, tmp, f"ce{rep}", 1.0)
            assert steps == args.steps, steps
            times["cycle"].append(wall)
            wall, _ = run_cycle(corpus, tmp, f"kd{rep}", 1.0, prev=prev)
            times["distill"].append(wall)
            torch.manual_seed(rep)
            times["plain"].append(run_plain(GPT(config), train, args.steps, rep))
            torch.manual_seed(rep)
            nano = NanoGPT(VOCAB, SEQ_LEN, MODEL["n_layer"], MODEL["d_model"], MODEL["n_head"], MODEL["dropout"])
            times["nanogpt"].append(run_plain(nano, train, args.steps, rep))
            print(f"round {rep}{' (warm-up)' if rep == 0 else ''}: "
                  + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)  # fmt: skip
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            run_cycle(corpus, tmp, "profiled", 1.0)
            profiler.disable()
    median = {k: statistics.median(v[1:]) for k, v in times.items()}
    rate = {k: args.steps * BATCH_TOKENS / v for k, v in median.items()}
    n_hepc = sum(p.numel() for p in GPT(config).parameters())
    n_nano = sum(p.numel() for p in NanoGPT(VOCAB, SEQ_LEN, 4, 128, 4, 0.0).parameters())
    print(f"\n{args.steps} steps x {BATCH_TOKENS} tokens, {args.threads} threads, median of {args.reps} rounds "
          f"(warm-up excluded); hepc GPT {n_hepc:,} parameters, nanoGPT shape {n_nano:,}")  # fmt: skip
    for k, walls in times.items():
        print(f"  {k:8s} {rate[k]:9,.0f} tokens/s   ({median[k]:.2f} s; all rounds: "
              + " ".join(f"{t:.2f}" for t in walls) + ")")  # fmt: skip
    print(f"  hepc cycle / plain loop, same model:  {rate['cycle'] / rate['plain']:.3f}x")
    print(f"  hepc GPT / nanoGPT shape (plain loops): {rate['plain'] / rate['nanogpt']:.3f}x")
    print(f"  distilled / CE cycle wall:              {median['distill'] / median['cycle']:.3f}x (floor ~1.33x)")
    best = {k: min(v[1:]) for k, v in times.items()}  # least disturbed round: a check on a loaded machine
    print(
        f"  the same from each variant's fastest round: {best['plain'] / best['cycle']:.3f}x, "
        f"{best['nanogpt'] / best['plain']:.3f}x, {best['distill'] / best['cycle']:.3f}x"
    )
    if args.profile:
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(25)
        print(stream.getvalue())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
