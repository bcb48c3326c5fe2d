"""Chaos: kill `hepc run` with SIGKILL at random instants, restart it each time, and check that the
final results are bit-identical to an uninterrupted run's.

    python bench/chaos.py                       # 20 kills of tests/fixtures/tiny.yaml (longer cycles)
    python bench/chaos.py --kills 50 --seed 3 --keep /tmp/chaos

What is compared (reference = one uninterrupted run in a separate store):
  * `hepc run --json` output (members, ensembles, curve: every val/held-out loss),
  * every committed cycle's model.safetensors, byte for byte,
  * every cycle's reported training losses (metrics.jsonl without the tokens/s timing field),
  * `hepc verify` on the chaos store (exit 0) and no lease left behind.

Each kill is logged with what was in flight at that instant (the leased step and its checkpoint
progress), so a report shows that kills landed inside cycles, not only between steps.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from hepc.store.lease import pid_alive

TINY = ROOT / "tests" / "fixtures" / "tiny.yaml"
# Longer cycles with a checkpoint every 2 optimizer steps, so that most kills land mid-cycle.
DEFAULT_OVERRIDES = (
    "population.epochs_per_cycle=4",
    "runtime.checkpoint_every_steps=2",
    "runtime.log_every_steps=1",
)


@dataclass
class Kill:
    trial: int
    after_s: float
    exit: int | None  # None: killed; else the run ended on its own first
    in_flight: list[str] = field(default_factory=list)  # "cycle t1-c002 at step 14/86"
    stderr: str = ""  # what the run wrote to stderr before it was killed or ended


@dataclass
class Report:
    kills: int
    trials: int
    identical: bool
    mismatches: list[str]
    kill_log: list[Kill]
    mid_cycle_kills: int
    wall_s: float

    def text(self) -> str:
        lines = [
            f"chaos: {self.kills} SIGKILLs in {self.trials} trials ({self.mid_cycle_kills} inside a cycle), "
            f"{self.wall_s:.0f}s: " + ("bit-identical to the uninterrupted run" if self.identical else "MISMATCH")
        ]
        for k in self.kill_log:
            what = ", ".join(k.in_flight) or "no step leased (start-up, planning or between steps)"
            status = "killed" if k.exit is None else f"ended by itself (exit {k.exit})"
            lines.append(f"  #{k.trial:>2} {status} after {k.after_s:.2f}s: {what}")
        lines.extend(f"  mismatch: {m}" for m in self.mismatches)
        return "\n".join(lines)


def _env(store: Path) -> dict:
    env = {**os.environ, "HEPC_STORE": str(store), "PYTHONUNBUFFERED": "1"}
    env.pop("HEPC_LEASE_TIMEOUT_S", None)
    return env


def _cmd(spec: Path, overrides, *extra) -> list[str]:
    return [sys.executable, "-m", "hepc.cli", "run", str(spec), *overrides, "--json", "--quiet", *extra]


def run_to_end(spec: Path, overrides, store: Path, timeout: float = 600) -> dict:
    out = subprocess.run(_cmd(spec, overrides), capture_output=True, text=True, env=_env(store), cwd=ROOT,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"hepc run exited {out.returncode}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def in_flight(store: Path) -> list[str]:
    """The steps leased right now by a live process, with their checkpoint progress."""
    out = []
    leases = store / "leases"
    if not leases.is_dir():
        return out
    for lease in sorted(leases.iterdir()):
        if lease.name.startswith("."):
            continue
        try:
            info = json.loads(lease.read_text())
        except (OSError, ValueError):
            continue
        if not pid_alive(int(info.get("pid", -1))):
            continue  # left by an earlier, killed process (cleared when a run completes)
        label = str(info.get("step", lease.name[:12]))
        where = ""
        try:
            prog = json.loads((store / "work" / lease.name / "progress.json").read_text())
            where = f" at checkpoint {prog['step']}/{prog['steps']}"
        except (OSError, ValueError, KeyError):
            pass
        out.append(f"{label}{where}")
    return out


def _first_lease(store: Path, proc: subprocess.Popen, limit: float) -> float | None:
    """Seconds until the process holds a lease (its step work starts), or None if it ended first."""
    t0 = time.monotonic()
    leases = store / "leases"
    while time.monotonic() - t0 < limit:
        if proc.poll() is not None:
            return None
        if leases.is_dir() and any(not p.name.startswith(".") for p in leases.iterdir()):
            return time.monotonic() - t0
        time.sleep(0.02)
    return time.monotonic() - t0


def milestones(store: Path) -> tuple:
    """What has been saved so far: committed objects and mid-cycle checkpoints (changes on each save)."""
    objects = store / "objects"
    committed = sum(1 for k in objects.iterdir() for _ in k.iterdir()) if objects.is_dir() else 0
    ckpts = []
    work = store / "work"
    if work.is_dir():
        for w in work.iterdir():
            try:
                ckpts.append((w.name, (w / "progress.json").stat().st_mtime_ns))
            except OSError:
                pass
    return committed, tuple(sorted(ckpts))


def _wait_milestones(store: Path, proc: subprocess.Popen, n: int, limit: float = 120) -> int:
    """Wait until the store passed `n` more milestones (or the process ended); returns how many."""
    seen, passed, t0 = milestones(store), 0, time.monotonic()
    while passed < n and proc.poll() is None and time.monotonic() - t0 < limit:
        time.sleep(0.01)
        now = milestones(store)
        if now != seen:
            seen, passed = now, passed + 1
    return passed


def measure(spec: Path, overrides, store: Path) -> tuple[dict, int, float]:
    """The reference run: its results, how many milestones it passed, and its wall time."""
    t0 = time.monotonic()
    proc = subprocess.Popen(_cmd(spec, overrides), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(store), cwd=ROOT)
    count = _wait_milestones(store, proc, 10**9, limit=600)
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"reference run exited {proc.returncode}:\n{err[-3000:]}")
    return json.loads(out), count, time.monotonic() - t0


def chaos_runs(spec: Path, overrides, store: Path, kills: int, milestones_total: int, rng: random.Random):
    """Start `hepc run` and SIGKILL it, `kills` times, then let it finish.

    Each trial waits for a random number of milestones (a checkpoint or a commit: so every trial
    makes progress and the kills spread over the whole run), then a random fraction of a second
    more (so the kill lands anywhere: mid-step, mid-checkpoint, mid-commit); one trial in ten is
    killed during start-up instead."""
    log: list[Kill] = []
    trials = 0
    per_kill = max(1, int(milestones_total / (1.5 * max(kills, 1))))  # leave a margin: restarts redo work
    while sum(k.exit is None for k in log) < kills and trials < kills * 3:
        trials += 1
        err_path = store.parent / f"trial-{trials}.stderr"  # a file: a killed run never blocks on a full pipe
        err_file = open(err_path, "w")  # noqa: SIM115  (closed below, after the run ends)
        proc = subprocess.Popen(_cmd(spec, overrides), stdout=subprocess.DEVNULL, stderr=err_file,
                                env=_env(store), cwd=ROOT)
        t0 = time.monotonic()
        if rng.random() < 0.1:
            time.sleep(rng.uniform(0.0, 2.0))
        else:
            _wait_milestones(store, proc, rng.randint(1, max(1, 2 * per_kill - 1)))
            time.sleep(rng.uniform(0.0, 0.3))
        flying = in_flight(store)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        err_file.close()
        err = err_path.read_text(errors="replace")
        err_path.unlink()
        log.append(Kill(trials, time.monotonic() - t0, None if killed else proc.returncode, flying if killed else [], err))
        if not killed and proc.returncode == 0:
            break  # the run completed before this kill
    return log, trials


def _metrics(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in rows:
        r.pop("tokens_per_s", None)
    return rows


def compare_stores(ref: Path, other: Path) -> list[str]:
    """Differences between the committed cycles of two stores (weights bytes, reported losses)."""
    bad = []
    ref_cycles = {p.name: p for p in (ref / "objects" / "cycle").iterdir()}
    got_cycles = {p.name: p for p in (other / "objects" / "cycle").iterdir()} if (other / "objects" / "cycle").is_dir() else {}
    if set(ref_cycles) != set(got_cycles):
        bad.append(f"cycle objects differ: {sorted(set(ref_cycles) ^ set(got_cycles))}")
    for name in sorted(set(ref_cycles) & set(got_cycles)):
        a, b = ref_cycles[name], got_cycles[name]
        if (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes():
            bad.append(f"{name}: model.safetensors differs")
        if _metrics(a / "metrics.jsonl") != _metrics(b / "metrics.jsonl"):
            bad.append(f"{name}: reported training losses differ")
        sa, sb = (json.loads((x / "summary.json").read_text()) for x in (a, b))
        sa.pop("wall_s", None), sb.pop("wall_s", None)
        if sa != sb:
            bad.append(f"{name}: summary differs")
    return bad


def restart_problems(log: list[Kill]) -> list[str]:
    """A restart must never crash on its own or print a traceback, killed or not."""
    out = []
    for k in log:
        if k.exit not in (None, 0):
            out.append(f"trial {k.trial} exited {k.exit} on its own: {k.stderr.strip()[-500:]}")
        if "Traceback" in k.stderr:
            out.append(f"trial {k.trial} printed a traceback: {k.stderr.strip()[-500:]}")
    return out


def verify_problems(store: Path) -> list[str]:
    """`hepc verify` of the store after the chaos: anything but exit 0 (every object intact) is a problem."""
    verify = subprocess.run([sys.executable, "-m", "hepc.cli", "verify", "--store", str(store)],
                            capture_output=True, text=True, cwd=ROOT, env=_env(store))
    if verify.returncode != 0:
        return [f"hepc verify exited {verify.returncode}: {(verify.stdout + verify.stderr)[-500:]}"]
    return []


def chaos(
    kills: int = 20,
    seed: int = 0,
    spec: Path = TINY,
    overrides=DEFAULT_OVERRIDES,
    workdir: Path | None = None,
) -> Report:
    t0 = time.monotonic()
    rng = random.Random(seed)
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="hepc-chaos-"))
    ref_store, chaos_store = base / "reference", base / "chaos"
    for s in (ref_store, chaos_store):
        shutil.rmtree(s, ignore_errors=True)
    reference, n_milestones, _ = measure(spec, overrides, ref_store)
    log, trials = chaos_runs(spec, overrides, chaos_store, kills, n_milestones, rng)
    final = run_to_end(spec, overrides, chaos_store)
    mismatches = []
    if final != reference:
        mismatches.append("results JSON differs from the uninterrupted run")
    mismatches += compare_stores(ref_store, chaos_store)
    mismatches += restart_problems(log) + verify_problems(chaos_store)
    leftovers = [p.name for p in (chaos_store / "leases").iterdir() if not p.name.startswith(".")]
    if leftovers:
        mismatches.append(f"leases left behind: {leftovers}")
    n_kills = sum(k.exit is None for k in log)
    mid = sum(1 for k in log if k.exit is None and any(f.startswith("cycle ") for f in k.in_flight))
    if workdir is None:
        shutil.rmtree(base, ignore_errors=True)
    return Report(n_kills, trials, not mismatches, mismatches, log, mid, time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spec", type=Path, default=TINY)
    ap.add_argument("--keep", type=Path, default=None, help="Keep both stores under this folder.")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("overrides", nargs="*", help=f"spec overrides (default: {' '.join(DEFAULT_OVERRIDES)})")
    a = ap.parse_args()
    report = chaos(a.kills, a.seed, a.spec, tuple(a.overrides) or DEFAULT_OVERRIDES, a.keep)
    print(json.dumps(asdict(report), indent=1) if a.json else report.text())
    sys.exit(0 if report.identical else 1)


if __name__ == "__main__":
    main()
