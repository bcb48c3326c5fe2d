"""Peak memory of the corpus and tokenizer steps against the corpus's size (docs/benchmarks.md, "Own
data at size"): the steps keep the pieces carving may need in a scratch file and write each split a
chunk at a time (hepc/data/spill.py), so their memory should not grow with the corpus.

Writes a JSON Lines file of about --mb MB of text (bench/corpus_speed.py's: the standard library's
`.py` files, then distinct Markov-chain documents), then runs each step through its step body in a
fresh process and reports its wall time, the process's resident memory before the step (imports
done), its peak (VmHWM) and the peak of its scratch folder on disk:

- `bytes`: the corpus step with the bytes tokenizer (one token a byte: the corpus is ~0.9 x --mb
  million tokens of uint16);
- `bpe`: the tokenizer step (a BPE of --vocab) and then the corpus step, as bench/corpus_speed.py;
- `tokens`: the corpus step on the same text as token shards (each record's bytes after an
  end-of-text 256, vocab 257) of --shard-mtokens million ids each, `.npy` uint16, tokenizer none.

    python bench/corpus_memory.py [--mb 10 40 100] [--kind bytes bpe tokens] [--vocab 8192]
                                  [--shard-mtokens 8] [--hepc CHECKOUT]

--hepc runs another checkout's hepc (say, the commit before the spill) on the same text.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _status_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (its peak) of this process, in MiB. Not ru_maxrss: Linux carries
    that across fork and exec, so a child would report its parent's peak (here, writing the text)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _tree_mb(folder: Path) -> float:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total / 2**20


def write_shards(folder: Path, mtokens: int) -> int:
    """data.jsonl as uint16 .npy shards of `mtokens` million ids: each record an end-of-text (256) and its
    UTF-8 bytes, documents cut anywhere by the shards' ends. Returns the shards written."""
    import numpy as np

    size, parts, held, n = mtokens * 1_000_000, [], 0, 0

    def flush(final: bool) -> None:
        nonlocal parts, held, n
        ids = np.concatenate(parts) if parts else np.zeros(0, np.uint16)
        while ids.size >= size or (final and ids.size):
            np.save(folder / f"shard_{n:04d}.npy", ids[:size])
            ids, n = ids[size:], n + 1
        parts, held = [ids], ids.size

    with open(folder / "data.jsonl", encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"].encode("utf-8")
            parts.append(np.concatenate([[256], np.frombuffer(text, np.uint8)]).astype(np.uint16))
            held += len(text) + 1
            if held >= size:
                flush(False)
    flush(True)
    return n


def _spec(folder: Path, kind: str, vocab: int, text_bytes: int) -> Path:
    tiny = (ROOT / "tests" / "fixtures" / "tiny.yaml").read_text()
    source = "{kind: text, paths: [data.jsonl], documents: jsonl}"
    if kind == "tokens":
        source = "{kind: tokens, paths: [shard_*.npy], vocab_size: 257, eot_id: 256}"
        tiny = tiny.replace("tokenizer: bytes", "tokenizer: none")
    tiny = re.sub(r"(?m)^  source: .*$", f"  source: {source}", tiny)
    if kind == "bpe":  # as bench/corpus_speed.py: a 4 bytes/token guess, train about 90 % of the text
        tiny = tiny.replace("tokenizer: bytes", f"tokenizer: {{kind: bpe, vocab_size: {vocab}}}")
        tokens = text_bytes // 4
    else:
        tokens = text_bytes
    sizes = {"train_tokens": int(tokens * 0.9), "val_tokens": tokens // 100, "heldout_tokens": tokens // 100}
    for key, value in sizes.items():
        tiny = re.sub(rf"(?m)^  {key}: .*$", f"  {key}: {value}", tiny)
    spec = folder / f"spec-{kind}.yaml"
    spec.write_text(tiny)
    return spec


def child(folder: Path, kind: str, step_kind: str, vocab: int) -> dict:
    """One step through its step body in this (fresh) process: seconds, resident memory before, peak."""
    from hepc.compile.compiler import compile_spec
    from hepc.spec.load import load_spec
    from hepc.steps import RunContext, body

    text_bytes = int((folder / "bytes").read_text())
    compiled = compile_spec(load_spec(str(_spec(folder, kind, vocab, text_bytes)), []))
    step = next(s for s in compiled.graph.order() if s.kind == step_kind)
    dest, work = folder / f"{kind}-{step_kind}-out", folder / f"{kind}-{step_kind}-work"
    dest.mkdir()
    work.mkdir()
    inputs = {"tokenizer": str(folder / f"{kind}-tokenizer-out")} if kind == "bpe" and step_kind == "corpus" else {}
    scratch = {"peak": 0.0, "done": False}

    def watch() -> None:
        while not scratch["done"]:
            scratch["peak"] = max(scratch["peak"], _tree_mb(work))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    before = _status_mb("VmRSS")
    watcher.start()
    t0 = time.perf_counter()
    summary = body(step_kind)(step, inputs, dest, work, RunContext(runtime={}))
    seconds = time.perf_counter() - t0
    scratch["done"] = True
    watcher.join()
    peak = _status_mb("VmHWM")
    out = {"seconds": round(seconds, 1), "rss_before_mb": round(before), "peak_mb": round(peak),
           "growth_mb": round(peak - before), "scratch_peak_mb": round(scratch["peak"]),
           "scratch_left_mb": round(_tree_mb(work), 1)}
    if step_kind == "corpus":
        out["tokens"] = summary.get("tokens")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, nargs="+", default=[10, 40, 100])
    ap.add_argument("--kind", nargs="+", choices=["bytes", "bpe", "tokens"], default=["bytes", "bpe", "tokens"])
    ap.add_argument("--shard-mtokens", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--hepc", help="a checkout whose hepc to run (default: this one)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # (folder, kind, step kind)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.hepc).resolve() if args.hepc else ROOT))
    if args.child:
        folder, kind, step_kind = Path(args.child[0]), args.child[1], args.child[2]
        print(json.dumps(child(folder, kind, step_kind, args.vocab)))
        return 0
    sys.path.insert(0, str(ROOT / "bench"))
    from corpus_speed import write_jsonl

    rows = []
    for mb in args.mb:
        with tempfile.TemporaryDirectory(prefix="hepc-corpus-memory-") as tmp:
            folder = Path(tmp)
            text_bytes = write_jsonl(folder / "data.jsonl", mb)
            (folder / "bytes").write_text(str(text_bytes))
            shards = write_shards(folder, args.shard_mtokens) if "tokens" in args.kind else None
            for kind in args.kind:
                for step_kind in (("tokenizer", "corpus") if kind == "bpe" else ("corpus",)):
                    command = [sys.executable, __file__, "--vocab", str(args.vocab), "--child", str(folder), kind, step_kind]
                    if args.hepc:
                        command[2:2] = ["--hepc", args.hepc]
                    done = subprocess.run(command, check=False, capture_output=True, text=True)
                    if done.returncode != 0:
                        print(done.stderr, file=sys.stderr)
                        return done.returncode
                    row = {"text_mb": round(text_bytes / 1e6, 1), "kind": kind, "step": step_kind,
                           **({"shards": shards} if kind == "tokens" else {}),
                           **json.loads(done.stdout.strip().splitlines()[-1])}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
