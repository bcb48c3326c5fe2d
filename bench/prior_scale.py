"""Benchmark: the prior fit and the loss-vs-budget curve at the paper's sizes. Not a test.

    flock /tmp/hepc-bench.lock python bench/prior_scale.py [--members 480] [--trajectories 5]
        [--heldout 131072] [--val 10000000] [--chunk COLUMNS] [--seed 0] [--no-shrinkage] [--quick]

Paper sizes (specs/paper-1.8b.yaml): 480 snapshots (P = 5 trajectories x C = 96 cycles), a held-out
slice of ~131K tokens for the fit, 10M val tokens, budgets K = 8 ... 256, the learned prior (AdamW,
300 steps, lr 0.5). The probabilities are synthetic but shaped like a population's: logit-normal
per-token probabilities of the correct token (a shared per-token difficulty, a per-trajectory and a
per-member noise, snapshot quality rising with the cycle), so the fit is not trivial.

Held-out (members x heldout, float32: 250 MB at paper size) is built in memory. Val is written in
column chunks to a memory-mapped .npy file under a temporary directory (19 GB at paper size, deleted
at the end), each chunk a window at a random offset into a 65,536-column bank of the same
distribution (fresh draws for 4.8e9 entries would cost more than everything timed), and only ever
read a column block at a time. Timed, in order:

  fit learned      hepc.prior.fit.fit_prior on all members (what the prior step fits)
  fit shrinkage    hepc.prior.shrinkage.fit_prior_shrinkage, default grid and folds (--no-shrinkage: skip)
  prior scoring    the prior step's val pass: all-member, uniform and every budget's top-K, one pass
  curve            hepc.prior.curve.loss_curve with the learned prior at every completed round (what the
                   curve step runs), split into its fits (batched) and its one scoring pass over val

and the from-scratch cost of the curve's fits is estimated from the first figure (each point's fit
costs about j/M of the full fit: sum over points of j/M full fits). Peak memory: VmHWM from
/proc/self/status (reset before each phase where the kernel allows it) counts the val file's pages
mapped while they are read (page cache, dropped under pressure); the peak anonymous memory (RssAnon,
sampled every 20 ms) is what the process itself allocates.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hepc.prior import curve, select, shrinkage
from hepc.prior import fit as prior_fit
from hepc.prior import rows as prior_rows

PAPER_BUDGETS = [8, 16, 32, 64, 128, 256]
BANK_COLUMNS = 1 << 16  # val is written as windows of a bank of this many columns, at random offsets


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class AnonPeak:
    """Peak RssAnon of this process, sampled every 20 ms on a thread, while in a `with` block."""

    def __enter__(self):
        self.peak = status_kib("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, status_kib("RssAnon"))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_kib("RssAnon"))


def gib(kib: int) -> str:
    return f"{kib / 2**20:.2f} GiB"


class Population:
    """Synthetic per-token probabilities of P trajectories x C cycles (row (p-1)*C + (c-1))."""

    def __init__(self, members: int, trajectories: int, seed: int):
        if members % trajectories:
            raise SystemExit(f"--members ({members}) must be a multiple of --trajectories ({trajectories})")
        self.M, self.P, self.C = members, trajectories, members // trajectories
        rng = np.random.default_rng(seed)
        self.traj = np.repeat(np.arange(self.P), self.C)
        cycle = np.tile(np.arange(1, self.C + 1), self.P)
        self.quality = (0.45 * np.log(cycle) + 0.15 * rng.standard_normal(self.P)[self.traj]
                        + 0.1 * rng.standard_normal(self.M)).astype(np.float32)[:, None]
        self.bank = None

    def block(self, rng: np.random.Generator, n: int, own: np.ndarray | None = None) -> np.ndarray:
        """An M x n float32 block: p = sigmoid(difficulty_n + quality_i + 0.6 shared_{p(i),n} + 0.5 own_{i,n})."""
        z = rng.normal(-2.6, 2.6, n).astype(np.float32)[None, :] + self.quality
        z += 0.6 * rng.standard_normal((self.P, n), dtype=np.float32)[self.traj]
        if own is None:
            own = rng.standard_normal((self.M, n), dtype=np.float32)
        z += 0.5 * own
        np.negative(z, out=z)
        np.exp(z, out=z)
        z += 1.0
        return np.reciprocal(z, out=z)

    def val_block(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n val columns: a window at a random offset into a bank of BANK_COLUMNS columns drawn by `block`
        (drawing 4.8e9 fresh normals for the paper's val would cost more than everything timed here)."""
        if self.bank is None:
            self.bank = self.block(rng, BANK_COLUMNS)
        if n > BANK_COLUMNS:
            raise SystemExit(f"--write-chunk must be at most {BANK_COLUMNS}")
        start = int(rng.integers(0, BANK_COLUMNS - n + 1))
        return self.bank[:, start:start + n]


def write_val(pop: Population, path: Path, tokens: int, chunk: int, seed: int) -> np.memmap:
    """Write the M x tokens val matrix to a .npy file a column chunk at a time; reopen it read-only."""
    rng = np.random.default_rng(seed + 1)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(pop.M, tokens))
    for start in range(0, tokens, chunk):
        stop = min(tokens, start + chunk)
        out[:, start:stop] = pop.val_block(rng, stop - start)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def timed(label: str, fn, results: list):
    """Run fn, record (label, wall s, VmHWM KiB during it, peak RssAnon KiB during it)."""
    reset = reset_hwm()
    with AnonPeak() as anon:
        t0 = time.perf_counter()
        value = fn()
        wall = time.perf_counter() - t0
    hwm = status_kib("VmHWM")
    results.append((label, wall, hwm if reset else None, anon.peak))
    print(f"  {label:<34} {wall:9.2f} s   peak RssAnon {gib(anon.peak)}"
          + (f"   VmHWM {gib(hwm)}" if reset else ""), flush=True)
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=480)
    ap.add_argument("--trajectories", type=int, default=5)
    ap.add_argument("--heldout", type=int, default=131072)
    ap.add_argument("--val", type=int, default=10_000_000)
    ap.add_argument("--chunk", type=int, default=None,
                    help="val columns per scoring block (default: about 32 MiB of float64)")
    ap.add_argument("--write-chunk", type=int, default=1 << 15, help="val columns per chunk when writing the file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300, help="AdamW steps of the learned prior (paper: 300)")
    ap.add_argument("--no-shrinkage", action="store_true", help="skip timing the shrinkage fit")
    ap.add_argument("--quick", action="store_true",
                    help="smoke-test size: 20 members x 4,096 held-out x 50,000 val tokens")
    ap.add_argument("--dir", help="folder for the temporary val file (default: the system's temp folder)")
    args = ap.parse_args()
    if args.quick:
        args.members, args.heldout, args.val = 20, 4096, 50_000
    if min(args.members, args.trajectories, args.heldout, args.val, args.write_chunk) < 1:
        raise SystemExit("sizes must be ≥ 1")

    pop = Population(args.members, args.trajectories, args.seed)
    M, P, C = pop.M, pop.P, pop.C
    avail = curve.availability_costs(P, C, 2.0)
    order = [curve.population_index(p, c, C) for p, c, _ in avail]
    costs = [cost for _, _, cost in avail]
    points = curve.round_points(M, P) if M > 64 else None
    budgets = [k for k in PAPER_BUDGETS if k <= M] or ["all"]
    n_points = len(points) if points else M
    print(f"population: {M} members (P={P} x C={C}), held-out {args.heldout:,} tokens, val {args.val:,} tokens, "
          f"budgets {budgets}, {n_points} curve points, learned prior {args.steps} AdamW steps", flush=True)
    print(f"val on disk: {M * args.val * 4 / 2**30:.2f} GiB float32; as one float64 array it would be "
          f"{M * args.val * 8 / 2**30:.2f} GiB", flush=True)
    results: list = []
    start_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hepc-prior-scale-", dir=args.dir) as tmp:
        print("building inputs:", flush=True)
        rng = np.random.default_rng(args.seed)
        P_fit = timed("held-out (in memory)", lambda: pop.block(rng, args.heldout), results)
        P_val = timed("val (.npy written in chunks)",
                      lambda: write_val(pop, Path(tmp) / "val.npy", args.val, args.write_chunk, args.seed), results)
        member_loss = -np.log(np.maximum(P_fit.astype(np.float64), prior_rows.FLOOR)).mean(axis=1)
        print(f"  held-out member losses: best {member_loss.min():.4f}, mean {member_loss.mean():.4f} nats", flush=True)

        print("timed:", flush=True)
        fit = timed("fit learned (AdamW, all members)", lambda: prior_fit.fit_prior(P_fit, steps=args.steps), results)
        print(f"    held-out NLL {fit.nll:.5f} vs uniform {fit.uniform_nll:.5f}; best step {fit.best_step}; "
              f"{int((fit.weights > 1e-3).sum())} weights > 1e-3", flush=True)
        if not args.no_shrinkage:
            shr = timed("fit shrinkage (CV, all members)", lambda: shrinkage.fit_prior_shrinkage(P_fit), results)
            print(f"    held-out NLL {shr.nll:.5f}, strength {shr.strength}, {shr.steps} EM updates", flush=True)
        everyone = np.arange(M)
        chosen = [select.top_k(fit.weights, k) for k in budgets]
        ensembles = [(everyone, fit.weights), (everyone, prior_rows.uniform_weights(M)), *chosen]
        losses = timed(f"prior scoring ({len(ensembles)} ensembles, 1 pass)",
                       lambda: select.ensemble_losses(P_val, ensembles, chunk=args.chunk), results)
        print(f"    val NLL learned {losses[0]:.5f}, uniform {losses[1]:.5f}, "
              f"top-{budgets[-1]} {losses[-1]:.5f}", flush=True)

        # the curve, with its scoring pass timed apart (the real function, wrapped for a stopwatch)
        scoring: list[float] = []
        real = curve.ensemble_losses

        def stopwatch(*a, **kw):
            t0 = time.perf_counter()
            try:
                return real(*a, **kw)
            finally:
                scoring.append(time.perf_counter() - t0)

        fits: list[dict] = []
        curve.ensemble_losses = stopwatch  # as the curve calls it
        try:
            rows = timed("curve (learned prior, all points)",
                         lambda: curve.loss_curve(P_fit, P_val, order, costs, budgets, prior="learned",
                                                steps=args.steps, points=points, fits=fits, chunk=args.chunk),
                         results)
        finally:
            curve.ensemble_losses = real
        curve_wall = results[-1][1]
        js = points or list(range(1, M + 1))
        how = "batched" if max(js) * args.heldout >= prior_fit._BATCH_MIN_ELEMENTS else "one by one"
        print(f"    {len(fits)} fits ({how}) {curve_wall - scoring[0]:.2f} s + scoring {len(rows)} ensembles "
              f"in one val pass {scoring[0]:.2f} s", flush=True)
        assert all(f["nll"] <= f["uniform_nll"] for f in fits), "a prior worse than uniform on its fit data"
        final = [r for r in rows if r["members"] == M]
        print("    final point: " + ", ".join(f"K={r['k']} {r['val_loss']:.5f}" for r in final), flush=True)
        fit_wall = results[2][1]
        scratch = sum(j / M for j in js) * fit_wall
        print(f"    from-scratch fits, estimated: {sum(j / M for j in js):.1f} full fits x {fit_wall:.2f} s "
              f"= {scratch:.0f} s (vs {curve_wall - scoring[0]:.1f} s {how})", flush=True)
    total = time.perf_counter() - start_all
    print(f"total wall {total:.1f} s; VmHWM {gib(status_kib('VmHWM'))} (since the last reset, or the whole run "
          f"where the kernel refused one; counts the val file's pages mapped while read); "
          f"peak RssAnon over phases {gib(max(r[3] for r in results))}", flush=True)
    print("RESULT " + " ".join(f"{label.split(' (')[0].replace(' ', '_')}={wall:.3f}s" for label, wall, _, _ in results),
          flush=True)


if __name__ == "__main__":
    main()
