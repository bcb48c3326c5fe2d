"""How long a mid-cycle checkpoint holds up training: written in line (as before issue 24) against a host
snapshot handed to the background writer (hepc.train.checkpoint), for a training state of a given size.

    python bench/checkpoint_stall.py [--params 100e6] [--reps 3] [--dir /tmp] [--json]

The state is what a cycle checkpoints for an AdamW model of `--params` float32 parameters: weights and two
moments (12 bytes per parameter), in tensors of 4M elements. "In line": torch.save to a temporary file,
fsync, rename, then the digest sidecar, which reads the file back (what the loop did before). "Background":
the time the training thread spends (the snapshot: one copy of the state into host buffers kept from one
checkpoint to the next; the first one also allocates them) until it can go on, and the write's own wall time (torch.save through a digesting file object, fsync, rename, sidecar) in
the writer thread. CPU only: on CUDA the snapshot is a device-to-host copy into pinned buffers, not
measured here. Figures: docs/benchmarks.md.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=100e6)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the checkpoint files are written")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from hepc.store.ckpt_digest import write_digest
    from hepc.train.checkpoint import BackgroundWriter, save_state, save_state_hashed, snapshot

    n, chunk = int(args.params), 1 << 22
    sizes = [min(chunk, n - i) for i in range(0, n, chunk)]
    state = {"model": {f"w{i}": torch.randn(s) for i, s in enumerate(sizes)},
             "optimizer": {f"m{i}": torch.randn(s) for i, s in enumerate(sizes)} | {f"v{i}": torch.rand(s)
                                                                                 for i, s in enumerate(sizes)},
             "step": 100}  # fmt: skip
    nbytes = 12 * n
    inline, stall, write, buffers = [], [], [], {}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="hepc-ckpt-bench-") as tmp:
        path = Path(tmp) / "ckpt.pt"
        for _ in range(args.reps):
            t0 = time.perf_counter()
            save_state(state, path)
            write_digest(path)
            inline.append(time.perf_counter() - t0)
            path.unlink()

            writer, spent = BackgroundWriter(), []
            t0 = time.perf_counter()
            copy = snapshot(state, buffers)  # host buffers kept from one checkpoint to the next, as the loop does

            def work(copy=copy, spent=spent):
                t = time.perf_counter()
                write_digest(path, save_state_hashed(copy, path))
                spent.append(time.perf_counter() - t)

            writer.submit(work)
            stall.append(time.perf_counter() - t0)
            writer.wait()
            write.append(spent[0])
            path.unlink()
            del copy
    result = {"bench": "checkpoint-stall", "params": n, "bytes": nbytes, "dir": args.dir,
              "inline_s": statistics.median(inline), "background_stall_s": statistics.median(stall[1:] or stall),
              "background_stall_first_s": stall[0],
              "background_write_s": statistics.median(write), "reps": args.reps}  # fmt: skip
    if not args.json:
        print(f"state {nbytes / 1e9:.2f} GB ({n / 1e6:.0f}M parameters, AdamW) in {args.dir}: in line "
              f"{result['inline_s']:.2f} s; background: training held {result['background_stall_s']:.2f} s "
              f"(snapshot; the first, which allocates its buffers, {result['background_stall_first_s']:.2f} s), write {result['background_write_s']:.2f} s in the writer thread")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
