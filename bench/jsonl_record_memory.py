"""Peak memory of reading one huge JSON Lines record (docs/benchmarks.md, "Reading with digests").

Writes a file holding one `{"text": "a" * N}` line into a temporary folder, reads it with the
corpus's reader (`hepc.data.records.jsonl_records`) and prints the peak resident memory above the
process's own start (ru_maxrss), next to the record's size. With `--compress gzip|zstd|xz|bz2` the file
is written compressed (streamed) and read decompressed, as a `.jsonl.gz` or `.jsonl.zst` corpus is.

    python bench/jsonl_record_memory.py [--mb 200] [--compress zstd]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def read_peak(path: Path) -> tuple[int, float]:
    """(bytes of text read, peak MB above the start) of reading `path` in this fresh process."""
    from hepc.data.identity import DataFile
    from hepc.data.records import jsonl_records

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    total = sum(len(t) for _, t in jsonl_records(DataFile(path.name, path, "x"), "text", "utf-8", "f"))
    return total, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200, help="size of the record's text in MB")
    ap.add_argument("--compress", choices=["gzip", "zstd", "xz", "bz2"], help="write the file compressed")
    ap.add_argument("--read", help=argparse.SUPPRESS)  # the measuring child process
    args = ap.parse_args()
    if args.read:
        total, peak = read_peak(Path(args.read))
        print(f"one record of {total / 1e6:.0f} MB: peak {peak:.0f} MB above the start ({peak / (total / 1e6):.2f}x the record)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("big.jsonl" + {None: "", "gzip": ".gz", "zstd": ".zst", "xz": ".xz", "bz2": ".bz2"}[args.compress])
        with _writer(path, args.compress) as f:
            f.write(b'{"text": "')
            for _ in range(args.mb):
                f.write(b"a" * 1_000_000)
            f.write(b'"}\n')
        return subprocess.run([sys.executable, __file__, "--read", str(path)], check=False).returncode


def _writer(path: Path, compress: str | None):
    if compress == "gzip":
        import gzip

        return gzip.open(path, "wb")
    if compress == "xz":
        import lzma

        return lzma.open(path, "wb")
    if compress == "bz2":
        import bz2

        return bz2.open(path, "wb")
    if compress == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().stream_writer(open(path, "wb"))  # closed with the writer
    return open(path, "wb")


if __name__ == "__main__":
    raise SystemExit(main())
