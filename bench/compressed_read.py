"""Reading a compressed JSON Lines corpus (docs/benchmarks.md, "Compressed corpora").

Writes about --mb MB of text as JSON Lines into a temporary folder (bench/corpus_speed.py's generator:
one record per standard-library `.py` file, then distinct documents from a seeded word-level Markov
chain over that text), compresses it with the `zstd` (level 3, one thread) and `gzip` (level 6)
command-line tools, then, each in a fresh process, with its wall time (measured inside the process,
interpreter start excluded), the CPU time of every process involved and its peak memory (VmHWM):

1. the corpus step's read path (`iter_named_documents` under `documents: jsonl`, each document
   digested as hepc/data/pieces.py does) over `data.jsonl`, `data.jsonl.zst` and `data.jsonl.gz`;
2. the same reader fed by `zstd -dc data.jsonl.zst |` and `gzip -dc data.jsonl.gz |` (the file is
   decompressed by the tool in another process, on the other core, and read from the pipe);
3. the source identity: the decompressed digest computed (cache empty) and looked up (cache warm);
4. the whole corpus step (its body, bytes tokenizer, val and held-out 1 % of the text, train 10 %)
   on each of the three files, the three corpus keys checked equal.

    python bench/compressed_read.py [--mb 100]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SOURCE = {"kind": "text", "documents": "jsonl"}


def _read(folder: Path, name: str, stdin: bool) -> dict:
    """The corpus step's read of every document of `folder/name` (or of the stdin pipe, parsed the same way)."""
    from hepc.data import sources
    from hepc.data.pieces import read_document

    if stdin:
        def from_pipe(path):
            f = open(0, "rb", closefd=False)  # noqa: SIM115  (the pipe, closed by the process's end)
            f.compression = None
            return f

        sources.open_data = from_pipe
    t0 = time.perf_counter()
    docs = n_bytes = 0
    for _, chunks in sources.iter_named_documents({**SOURCE, "paths": [name]}, folder):
        _, size, _ = read_document(chunks, 0)
        docs, n_bytes = docs + 1, n_bytes + size
    return {"seconds": time.perf_counter() - t0, "documents": docs, "text_bytes": n_bytes}


def _identity(folder: Path, name: str) -> dict:
    from hepc.data.identity import source_identity

    t0 = time.perf_counter()
    identity = source_identity({**SOURCE, "paths": [name]}, folder)
    return {"seconds": time.perf_counter() - t0, "digest": identity["files"][0]["digest"]}


def _corpus(folder: Path, name: str, text_bytes: int) -> dict:
    from hepc.compile.compiler import compile_spec
    from hepc.spec.load import load_spec
    from hepc.steps import RunContext, body

    tiny = (ROOT / "tests" / "fixtures" / "tiny.yaml").read_text()
    tiny = re.sub(r"(?m)^  source: .*$", f"  source: {{kind: text, paths: ['{name}'], documents: jsonl}}", tiny)
    sizes = {"train_tokens": text_bytes // 10, "val_tokens": text_bytes // 100, "heldout_tokens": text_bytes // 100}
    for key, value in sizes.items():
        tiny = re.sub(rf"(?m)^  {key}: .*$", f"  {key}: {value}", tiny)
    (folder / "spec.yaml").write_text(tiny)
    step = next(s for s in compile_spec(load_spec(str(folder / "spec.yaml"), [])).graph if s.kind == "corpus")
    out = folder / f"corpus-{name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    t0 = time.perf_counter()
    body("corpus")(step, {}, out, out, RunContext(runtime={}))
    seconds = time.perf_counter() - t0
    shutil.rmtree(out)
    return {"seconds": seconds, "key": step.key12}


def child(which: str, folder: Path, name: str, text_bytes: int) -> int:
    if which == "read":
        result = _read(folder, name, stdin=False)
    elif which == "pipe":
        result = _read(folder, name, stdin=True)
    elif which == "identity":
        result = _identity(folder, name)
    else:
        result = _corpus(folder, name, text_bytes)
    result["peak_mb"] = _peak_mb()
    print(json.dumps(result))
    return 0


def _peak_mb() -> float:
    """This process's peak resident memory: VmHWM, which exec starts afresh (ru_maxrss keeps the peak of the
    process it was forked from), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(args: list[str], folder: Path, pipe_from: str | None = None) -> dict:
    """One measurement in a fresh process (`pipe_from`: a shell command whose output is its stdin)."""
    command = [sys.executable, __file__, "--child", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    if pipe_from:
        shell = f"{pipe_from} | {' '.join(map(_quote, command))}"
        out = subprocess.run(shell, shell=True, check=False, capture_output=True, text=True, cwd=folder)
    else:
        out = subprocess.run(command, check=False, capture_output=True, text=True, cwd=folder)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["cpu_seconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=100, help="MB of text to write as JSON Lines")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # which, folder, file name, text bytes
    args = ap.parse_args()
    if args.child:
        which, folder, name, text_bytes = args.child
        return child(which, Path(folder), name, int(text_bytes))
    for tool in ("zstd", "gzip"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs the `{tool}` command")
    from corpus_speed import write_jsonl

    with tempfile.TemporaryDirectory(prefix="hepc-compressed-read-") as tmp:
        folder = Path(tmp)
        os.environ["HEPC_CACHE_DIR"] = str(folder / "cache")  # the children's digest cache: empty at first
        t0 = time.perf_counter()
        text_bytes = write_jsonl(folder / "data.jsonl", args.mb)
        print(f"wrote {text_bytes / 1e6:.0f} MB of text in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        sizes = {"data.jsonl": (folder / "data.jsonl").stat().st_size}
        packing = {}
        for name, command in (("data.jsonl.zst", "zstd -q -3 -T1 data.jsonl -o data.jsonl.zst"),
                              ("data.jsonl.gz", "gzip -6 -c data.jsonl > data.jsonl.gz")):
            t0 = time.perf_counter()
            subprocess.run(command, shell=True, check=True, cwd=folder)
            packing[name] = time.perf_counter() - t0
            sizes[name] = (folder / name).stat().st_size
        time.sleep(1.5)  # files older than a second are what the digest cache keeps (SETTLE_NS)
        tb = str(text_bytes)
        runs: dict[str, dict] = {}
        for name in ("data.jsonl", "data.jsonl.zst", "data.jsonl.gz"):
            runs[f"read {name}"] = measure(["read", tmp, name, tb], folder)
        runs["zstd -dc | read"] = measure(["pipe", tmp, "data.jsonl", tb], folder, "zstd -dc data.jsonl.zst")
        runs["gzip -dc | read"] = measure(["pipe", tmp, "data.jsonl", tb], folder, "gzip -dc data.jsonl.gz")
        for name in ("data.jsonl", "data.jsonl.zst", "data.jsonl.gz"):
            shutil.rmtree(folder / "cache", ignore_errors=True)  # the reads above cached the digests
            runs[f"identity {name}"] = measure(["identity", tmp, name, tb], folder)
            if name != "data.jsonl":
                runs[f"identity {name} (cached)"] = measure(["identity", tmp, name, tb], folder)
        for name in ("data.jsonl", "data.jsonl.zst", "data.jsonl.gz"):
            runs[f"corpus step {name}"] = measure(["corpus", tmp, name, tb], folder)
        keys = {runs[f"corpus step {n}"]["key"] for n in sizes}
        digests = {runs[f"identity {n}"]["digest"] for n in sizes}
        assert len(keys) == 1 and len(digests) == 1, (keys, digests)

        mb = sizes["data.jsonl"] / 1e6
        print(json.dumps({"text_mb": round(text_bytes / 1e6, 1), "sizes": sizes,
                          "compress_seconds": {k: round(v, 1) for k, v in packing.items()}, "cpus": os.cpu_count()}))
        print(f"{'':<34}{'wall s':>8}{'MB/s':>8}{'cpu s':>8}{'peak MB':>9}")
        for label, r in runs.items():
            print(f"{label:<34}{r['seconds']:>8.2f}{mb / r['seconds']:>8.0f}{r['cpu_seconds']:>8.2f}{r['peak_mb']:>9.0f}")
        print(f"(MB/s: decompressed JSON Lines bytes, {mb:.0f} MB, per wall second; cpu s: every process of the "
              "measurement, the interpreter's start included; one corpus key for the three files)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
