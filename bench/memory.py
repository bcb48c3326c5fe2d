"""Peak memory of hepc's training on the CPU, measured against hepc/train/memory.py's estimate; the chunked
loss and activation checkpointing against the full-logits loss and plain blocks.

    python bench/memory.py [--json] [--cases estimator,loss,checkpointing]

How it measures: in a fresh process, with glibc told to give every allocation of 64 KiB or more back to
the system at once (MALLOC_MMAP_THRESHOLD_=65536, so the resident size follows the live tensors), after
a warm-up cycle of a tiny model (thread pools, kernels, libraries loaded), it resets the kernel's
high-water mark (/proc/self/clear_refs) and reads VmHWM − VmRSS-before around the measured work: a real
`train_cycle` of 2-3 steps (estimator) or one forward and backward of the loss (loss). Linux only.
tests/test_memory.py runs the same cases (the acceptance bound: estimate within 25 % of the peak).
Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENV = "MALLOC_MMAP_THRESHOLD_"

# Small shapes that run in seconds on 2 cores: (name, model, seq_len, batch sequences, vocab, runtime extras,
# optimizer kind, distilled)
SHAPES = [
    ("ce-adamw", {"n_layer": 2, "d_model": 128, "n_head": 4, "dropout": 0.0}, 128, 8, 512, {}, "adamw", False),
    ("kd-muon-micro4", {"n_layer": 1, "d_model": 64, "n_head": 2, "dropout": 0.1}, 64, 16, 4096,
     {"micro_batch": 4}, "muon", True),
    ("ce-chunked-loss", {"n_layer": 1, "d_model": 64, "n_head": 2, "dropout": 0.0}, 128, 8, 8192,
     {"loss_chunk_tokens": 256}, "adamw", False),
    ("kd-muon-micro8", {"n_layer": 2, "d_model": 128, "n_head": 4, "dropout": 0.1}, 64, 32, 2048,
     {"micro_batch": 8}, "muon", True),
    ("ce-checkpointed", {"n_layer": 4, "d_model": 256, "n_head": 4, "dropout": 0.0}, 256, 8, 512,
     {"activation_checkpointing": True}, "adamw", False),
    ("kd-wide-vocab", {"n_layer": 2, "d_model": 64, "n_head": 2, "dropout": 0.0}, 64, 16, 8192, {}, "adamw", True),
]  # fmt: skip
FAST = ["ce-adamw", "kd-muon-micro4", "ce-chunked-loss"]  # the cases tests/test_memory.py runs


def _status(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


class Peak:
    """`with Peak() as p: ...` → p.bytes: the resident high-water mark above the resident size at entry."""

    def __enter__(self):
        import gc

        gc.collect()
        _reset_peak()
        self.base = _status("VmRSS")
        return self

    def __exit__(self, *exc):
        self.bytes = _status("VmHWM") - self.base
        return False


def _corpus(folder: Path, vocab: int, tokens: int) -> Path:
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(folder / "train.npy", rng.integers(0, vocab, tokens).astype(np.uint16))
    np.save(folder / "train_docs.npy", np.arange(0, tokens, 512, dtype=np.int64))
    (folder / "meta.json").write_text(json.dumps({"vocab_size": vocab}))
    return folder


def _cycle(root: Path, name: str, model: dict, seq_len: int, batch: int, vocab: int, extra: dict, kind: str,
           distill: bool, steps: int = 2) -> dict:  # fmt: skip
    """Train `steps` steps (a distilled cycle trains one plain cycle first, outside the measurement)."""
    from hepc.train.loop import train_cycle

    corpus = _corpus(root / f"{name}-corpus", vocab, batch * (seq_len + 1) * steps + seq_len + 1)
    optimizer = {"kind": kind, "lr": 1e-3, "weight_decay": 0.1, "batch_tokens": batch * seq_len, "grad_clip": 1.0,
                 "betas": [0.9, 0.95], "eps": 1e-8}  # fmt: skip
    runtime = {"device": "cpu", "dtype": "float32", "threads": 2, "compile": False, "checkpoint_every_steps": 0,
               "log_every_steps": 1, **extra}  # fmt: skip
    epochs = steps * batch * seq_len / (batch * (seq_len + 1) * steps + seq_len + 1)
    common = {"model": model, "optimizer": optimizer, "schedule": {"kind": "cyclic", "lr_floor": 0.1, "wd_floor": 0.7},
              "trajectory_seed": 1, "epochs_per_cycle": epochs, "seq_len": seq_len, "corpus_dir": corpus}
    prev = None
    if distill:
        prev = root / f"{name}-c1"
        train_cycle(**common, distill=None, perturb_scale=0.0, cycle_index=1, prev_dir=None, out_dir=prev,
                    work_dir=root / f"{name}-w1", runtime={**runtime, "micro_batch": "auto"})  # fmt: skip
    with Peak() as peak:
        summary = train_cycle(**common, distill={"alpha": 0.45, "temperature": 1.2} if distill else None,
                              perturb_scale=0.0, cycle_index=2 if distill else 1, prev_dir=prev,
                              out_dir=root / f"{name}-out", work_dir=root / f"{name}-work", runtime=runtime)  # fmt: skip
    return {"peak": peak.bytes, "steps": summary["steps"], "runtime": runtime, "optimizer": optimizer}


def _estimate(model: dict, seq_len: int, batch: int, vocab: int, extra: dict, kind: str, distill: bool) -> dict:
    from hepc.train import memory

    shape = memory.Shape(vocab, model["n_layer"], model["d_model"], model["n_head"], seq_len, model["dropout"] > 0,
                         kind, distill)  # fmt: skip
    choice = memory.choose(shape, batch, 1e15, device="cpu", bf16=False, micro=extra.get("micro_batch", "auto"),
                           checkpointing=extra.get("activation_checkpointing", "auto"),
                           chunk_tokens=extra.get("loss_chunk_tokens"))  # fmt: skip
    return {"total": choice.estimate.total, "parts": choice.estimate.parts, "micro": choice.micro,
            "checkpointing": choice.checkpointing}  # fmt: skip


def warm_up(root: Path) -> None:
    """One tiny distilled Muon cycle in micro-batches, checkpointed blocks and a chunked loss: every code path
    the cases take has run once (and loaded what it loads) before anything is measured."""
    _cycle(root, "warm", {"n_layer": 1, "d_model": 32, "n_head": 2, "dropout": 0.1}, 16, 4, 64,
           {"micro_batch": 2, "activation_checkpointing": True, "loss_chunk_tokens": 16}, "muon", True)  # fmt: skip


def estimator_cases(root: Path, names: list[str] | None = None) -> list[dict]:
    out = []
    for name, model, seq_len, batch, vocab, extra, kind, distill in SHAPES:
        if names and name not in names:
            continue
        measured = _cycle(root, name, model, seq_len, batch, vocab, extra, kind, distill)
        est = _estimate(model, seq_len, batch, vocab, extra, kind, distill)
        out.append({
            "case": name, "model": model, "seq_len": seq_len, "batch_seqs": batch, "vocab": vocab, "optimizer": kind,
            "distilled": distill, "runtime": extra, "micro_batch": est["micro"], "measured_bytes": measured["peak"],
            "estimated_bytes": est["total"], "ratio": est["total"] / measured["peak"], "parts": est["parts"],
        })  # fmt: skip
    return out


def loss_cases(tokens: int = 2048, vocab: int = 8192, d: int = 64, chunk: int = 256) -> list[dict]:
    """One forward and backward of CE and of CE + KD from hidden states: full logits against chunks."""
    import torch
    import torch.nn.functional as F

    from hepc.train.distill import chunked_loss, distill_loss

    torch.manual_seed(0)
    out = []
    for distilled in (False, True):
        peaks = {}
        for how in ("full", "chunked"):
            h = torch.randn(tokens, d, requires_grad=True)
            w = (0.1 * torch.randn(vocab, d)).requires_grad_()
            th, tw = torch.randn(tokens, d), 0.1 * torch.randn(vocab, d)
            y = torch.randint(0, vocab, (tokens,))
            with Peak() as peak:
                if how == "full":
                    logits = F.linear(h, w).float()
                    if distilled:
                        with torch.no_grad():
                            teacher = F.linear(th, tw).float()
                        loss = distill_loss(logits, teacher, y, 0.45, 1.2)[0]
                        del teacher
                    else:
                        loss = F.cross_entropy(logits, y)
                    del logits
                else:
                    kw = {"teacher_hidden": th, "teacher_weight": tw, "alpha": 0.45, "temperature": 1.2} if distilled else {}
                    loss = chunked_loss(h, w, y, chunk_tokens=chunk, **kw)[0]
                loss.backward()
            grads = (h.numel() + w.numel()) * 4  # the gradients themselves: the same either way
            peaks[how] = peak.bytes - grads
        out.append({"case": "kd" if distilled else "ce", "tokens": tokens, "vocab": vocab, "chunk_tokens": chunk,
                    "full_bytes": peaks["full"], "chunked_bytes": peaks["chunked"],
                    "ratio": peaks["chunked"] / peaks["full"]})  # fmt: skip
    return out


def checkpointing_cases(root: Path) -> list[dict]:
    """The same cycle with and without activation checkpointing: measured peaks."""
    model = {"n_layer": 4, "d_model": 256, "n_head": 4, "dropout": 0.0}
    peaks = {}
    for on in (False, True):
        peaks[on] = _cycle(root, f"ckpt-{on}", model, 256, 8, 512, {"activation_checkpointing": on}, "adamw", False)["peak"]
    return [{"case": "activation checkpointing", "model": model, "seq_len": 256, "batch_seqs": 8,
             "off_bytes": peaks[False], "on_bytes": peaks[True], "ratio": peaks[True] / peaks[False]}]  # fmt: skip


def measure(cases: list[str], names: list[str] | None = None) -> dict:
    """In this process (its environment must set MALLOC_MMAP_THRESHOLD_: `run` does)."""
    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="hepc-memory-") as tmp:
        root = Path(tmp)
        warm_up(root)
        result = {}
        if "loss" in cases:
            result["loss"] = loss_cases()
        if "checkpointing" in cases:
            result["checkpointing"] = checkpointing_cases(root)
        if "estimator" in cases:
            result["estimator"] = estimator_cases(root, names)
    return result


def run(cases: list[str], names: list[str] | None = None, timeout: float = 600) -> dict:
    """`measure` in a fresh process with the allocator setting it needs; returns its result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--json", "--cases", ",".join(cases)]
    if names:
        command += ["--names", ",".join(names)]
    env = {**os.environ, ENV: "65536", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"bench/memory.py exited {out.returncode}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def _mb(b: float) -> str:
    return f"{b / 1e6:,.1f} MB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="only the JSON line")
    ap.add_argument("--cases", default="estimator,loss,checkpointing")
    ap.add_argument("--names", default="", help="estimator cases by name (default: all)")
    args = ap.parse_args()
    if not sys.platform.startswith("linux"):
        print("error: bench/memory.py reads /proc (Linux only)", file=sys.stderr)
        return 2
    cases = [c for c in args.cases.split(",") if c]
    names = [n for n in args.names.split(",") if n] or None
    if os.environ.get(ENV) != "65536":  # the allocator reads it at start-up: run again in a fresh process
        result = run(cases, names)
    else:
        result = measure(cases, names)
    if not args.json:
        for row in result.get("estimator", []):
            print(f"{row['case']:<18} measured {_mb(row['measured_bytes']):>10}  estimated {_mb(row['estimated_bytes']):>10}"
                  f"  estimate/measured {row['ratio']:.2f}  (micro-batch {row['micro_batch']} of {row['batch_seqs']})")
        for row in result.get("loss", []):
            print(f"loss {row['case']}: full logits {_mb(row['full_bytes'])}, chunks of {row['chunk_tokens']} tokens "
                  f"{_mb(row['chunked_bytes'])} ({row['ratio']:.2f}×), {row['tokens']} tokens, vocab {row['vocab']}")
        for row in result.get("checkpointing", []):
            print(f"{row['case']}: off {_mb(row['off_bytes'])}, on {_mb(row['on_bytes'])} ({row['ratio']:.2f}×)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
