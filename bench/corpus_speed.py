"""A BPE corpus from JSON Lines: hepc's tokenizer and corpus steps against `tokenizers` alone
(docs/benchmarks.md, "Own data at size").

Writes a JSON Lines file of about --mb MB of local text into a temporary folder (one record per
standard-library `.py` file; `--mb` beyond the library's ~31 MB adds documents drawn from a seeded
word-level Markov chain over the library's own text, each one distinct), then in fresh processes:

1. hepc: the tokenizer step (BPE of --vocab trained on the train split only, in rounds) and the
   corpus step (encode, carve, write), through their step bodies, each timed with its peak memory;
2. `tokenizers` alone: the same trainer on every record, then every record encoded (encode_batch),
   timed with its peak memory.

    python bench/corpus_speed.py [--mb 100] [--vocab 8192] [--only hepc|hf]

The splits: val and held-out 1 % of the estimated tokens each, train the rest (a 4 bytes/token guess,
so that train takes about 90 % of the text).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts)


def write_jsonl(path: Path, mb: int, seed: int = 0) -> int:
    """About `mb` MB of distinct documents as {"text": ...} lines; returns the bytes of text written."""
    rng = random.Random(seed)
    target, written = mb * 1_000_000, 0
    words: list[str] = []
    with open(path, "w", encoding="utf-8") as out:
        for f in _stdlib_files():
            if written >= target:
                break
            try:
                text = f.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if text.strip():
                out.write(json.dumps({"text": text}) + "\n")
                written += len(text.encode())
                if len(words) < 3_000_000:
                    words += re.findall(r"\S+", text)
        follow: dict[tuple[str, str], list[str]] = {}
        for a, b, c in zip(words, words[1:], words[2:]):
            follow.setdefault((a, b), []).append(c)
        keys = list(follow)
        n = 0
        while written < target:
            a, b = rng.choice(keys)
            doc = [a, b]
            for _ in range(rng.randint(200, 1500)):
                nxt = follow.get((a, b))
                if not nxt:
                    a, b = rng.choice(keys)
                    doc.append("\n")
                    continue
                a, b = b, rng.choice(nxt)
                doc.append(b)
            text = f"# document {n}\n" + " ".join(doc)
            out.write(json.dumps({"text": text}) + "\n")
            written += len(text.encode())
            n += 1
    return written


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that across fork and
    exec, so each child reported at least its parent's peak (writing the text: hundreds of MB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_hepc(folder: Path, vocab: int, text_bytes: int) -> dict:
    from hepc.compile.compiler import compile_spec
    from hepc.spec.load import load_spec
    from hepc.steps import RunContext, body

    tokens = text_bytes // 4
    spec = folder / "spec.yaml"
    tiny = (ROOT / "tests" / "fixtures" / "tiny.yaml").read_text()
    tiny = re.sub(r"(?m)^  source: .*$", "  source: {kind: text, paths: [data.jsonl], documents: jsonl}", tiny)
    tiny = tiny.replace("tokenizer: bytes", f"tokenizer: {{kind: bpe, vocab_size: {vocab}}}")
    sizes = {"train_tokens": int(tokens * 0.9), "val_tokens": tokens // 100, "heldout_tokens": tokens // 100}
    for key, value in sizes.items():
        tiny = re.sub(rf"(?m)^  {key}: .*$", f"  {key}: {value}", tiny)
    spec.write_text(tiny)
    compiled = compile_spec(load_spec(str(spec), []))
    steps = {s.kind: s for s in compiled.graph.order() if s.kind in ("tokenizer", "corpus")}
    ctx = RunContext(runtime={})
    out = {}
    paths = {}
    for kind in ("tokenizer", "corpus"):
        dest, work = folder / f"{kind}-out", folder / f"{kind}-work"
        dest.mkdir()
        work.mkdir()
        inputs = {"tokenizer": str(paths["tokenizer"])} if kind == "corpus" else {}
        t0 = time.perf_counter()
        summary = body(kind)(steps[kind], inputs, dest, work, ctx)
        out[kind] = {"seconds": round(time.perf_counter() - t0, 2), "peak_mb": round(_peak_mb())}
        if kind == "tokenizer":
            out[kind]["rounds"] = summary.get("rounds")
        else:
            out[kind]["tokens"] = summary.get("tokens")
        paths[kind] = dest
    return out


def run_hf(folder: Path, vocab: int) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def texts():
        with open(folder / "data.jsonl", encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]

    t0 = time.perf_counter()
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator(texts(), trainer)
    trained = time.perf_counter() - t0
    n, batch = 0, []
    for text in texts():
        batch.append(text)
        if len(batch) == 1024:
            n += sum(len(e.ids) for e in hf.encode_batch(batch))
            batch = []
    n += sum(len(e.ids) for e in hf.encode_batch(batch))
    return {"hf": {"seconds": round(time.perf_counter() - t0, 2), "train_seconds": round(trained, 2),
                   "tokens": n, "peak_mb": round(_peak_mb())}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--only", choices=["hepc", "hf"])
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # (which, folder): one measurement per process
    args = ap.parse_args()
    if args.child:
        which, folder = args.child[0], Path(args.child[1])
        text_bytes = int((folder / "bytes").read_text())
        result = run_hepc(folder, args.vocab, text_bytes) if which == "hepc" else run_hf(folder, args.vocab)
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(prefix="hepc-corpus-speed-") as tmp:
        folder = Path(tmp)
        text_bytes = write_jsonl(folder / "data.jsonl", args.mb)
        (folder / "bytes").write_text(str(text_bytes))
        results = {"text_mb": round(text_bytes / 1e6, 1), "vocab": args.vocab, "cpus": os.cpu_count()}
        for which in ("hepc", "hf"):
            if args.only and which != args.only:
                continue
            sub = folder / which
            sub.mkdir()
            for name in ("data.jsonl", "bytes"):
                os.link(folder / name, sub / name)
            out = subprocess.run([sys.executable, __file__, "--vocab", str(args.vocab), "--child", which, str(sub)],
                                 check=False, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return out.returncode
            results |= json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(results, indent=1))
        if "hepc" in results and "hf" in results:
            total = results["tokenizer"]["seconds"] + results["corpus"]["seconds"]
            print(f"hepc tokenizer + corpus {total:.1f} s vs tokenizers alone {results['hf']['seconds']:.1f} s: "
                  f"{total / results['hf']['seconds']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
