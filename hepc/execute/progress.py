"""Progress on stderr: rich bars on a terminal (the overall bar, then one line per busy worker with its
step's position, ETA, losses and tokens/s), plain lines otherwise (logs, CI, `nohup`). Results never
go here; they go to stdout. `slot` names the worker (None: the driver's own process, one step at a time).

What a person can plan around:

- A step's ETA comes from its own measured optimizer steps: the rate between its first report (a
  cycle reports right after its first step, whose time carries the start-up: loading, compiling)
  and its latest one. Cycles report at least every second (hepc.train.loop), so the bar has its
  total at once and an ETA within seconds, in both modes.
- The overall bar is weighted by each step's estimated cost (`step_costs`), not by step count: a
  3-minute cycle weighs what it costs next to a 2-second score. Its ETA is the cost still to run at
  the rate the run has progressed since its first measured optimizer step.
- During distillation a cycle's objective mixes cross-entropy toward the data with the distillation
  term: both are shown, `ce 2.3700 · kd 1.3700` (CE is what the val score measures), never a
  "loss" that silently changes meaning.
- Plain mode: a line per busy step as soon as it has an ETA, then at most every PLAIN_EVERY_S
  (HEPC_PROGRESS_EVERY_S overrides it).

Every figure shown also goes to `sinks` (each takes dicts through `record`, and `close`): the run
record's progress.jsonl (`ProgressLog`) and, when asked for, TensorBoard (hepc.execute.tensorboard).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

PLAIN_EVERY_S = 10.0
COST_FLOOR = 0.01  # a step without FLOPs (corpus, prior, curve) weighs this share of a mean cycle
LOG_EVERY_S = 5.0  # progress.jsonl: a line per step at most this often (plus its first and last)
METRICS = ("loss", "ce", "kd", "loss_step", "lr", "wd", "tokens_per_s", "global_step")


def plain_every_s() -> float:
    value = os.environ.get("HEPC_PROGRESS_EVERY_S")
    try:
        seconds = float(value) if value else PLAIN_EVERY_S
    except ValueError:
        return PLAIN_EVERY_S
    return seconds if math.isfinite(seconds) and seconds > 0 else PLAIN_EVERY_S


class StepProgress:
    """The display of one run. `costs`: key → estimated cost of each step to run (None: every step
    weighs the same); `sinks`: where every figure is recorded as well."""

    def __init__(self, total_steps: int, quiet: bool = False, costs: dict[str, float] | None = None, sinks=()):
        self.console = Console(stderr=True)
        self.quiet = quiet
        self.live = self.console.is_terminal and not quiet
        self.total = total_steps
        self.done = 0
        self.started = 0
        self.numbers: dict[str, int] = {}  # step key → its number in the counter
        self.costs = dict(costs or {})
        self.default_cost = min(self.costs.values(), default=1.0) or 1.0
        self.total_cost = sum(self.costs.values()) if self.costs else float(total_steps)
        self.done_cost = 0.0
        self.rate_from: tuple[float, float] | None = None  # (time, cost completed) at the first measured step
        self.sinks = list(sinks)
        self.plain_every = plain_every_s()
        self.running: dict[str | None, dict] = {}  # slot → its step's label, start time, bar, figures
        if self.live:
            self.bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[count]}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                transient=False,
            )
            self.overall = self.bars.add_task(
                "all steps", total=max(self.total_cost, 1e-12), count=self._count(), eta="", info=""
            )
            self.bars.start()

    # ------------------------------------------------------------------ what the driver calls
    def start(self, kind: str, name: str, slot: str | None = None, key: str | None = None) -> None:
        """A step begins. A step begun again (its worker died, its lease was lost, it was committed
        elsewhere meanwhile) keeps its number, so the counter never passes the total."""
        again = key is not None and key in self.numbers
        if not again:
            self.started += 1
            if key is not None:
                self.numbers[key] = self.started
        number = self.numbers[key] if again else self.started
        label = f"[{number}/{self.total}] {kind} {name}" + (" (again)" if again else "")
        if slot is not None:
            label = f"{slot}: {label}"
        task = None
        if self.live:
            task = self.bars.add_task(label, total=None, count="", eta="", info="")
        elif not self.quiet:
            print(f"{label} ...", file=sys.stderr, flush=True)
        now = time.time()
        self.running[slot] = {
            "label": label, "t0": now, "task": task, "last_plain": None, "kind": kind, "name": name, "key": key,
            "worker": slot, "cost": self.costs.get(key, self.default_cost), "fraction": 0.0, "first": None,
            "metrics": {},
        }  # fmt: skip
        self._record({"event": "start", "kind": kind, "name": name, "key": key, "worker": slot})

    def add(self, steps: int, cost: float | None = None) -> None:
        """More steps to run than planned (a damaged or vanished input is recomputed)."""
        self.total += steps
        self.total_cost += cost if cost is not None else self.default_cost * steps
        if self.live:
            self.bars.update(self.overall, total=max(self.total_cost, 1e-12), count=self._count())

    def note(self, text: str) -> None:
        """A warning for the user (damaged objects, waiting for another process): shown even when quiet."""
        if self.live:
            from rich.markup import escape

            self.bars.console.print(f"[yellow]warning:[/] {escape(text)}", highlight=False)
        else:
            print(f"warning: {text}", file=sys.stderr, flush=True)

    def update(self, info: dict, slot: str | None = None) -> None:
        run = self.running.get(slot)
        if run is None:
            return
        now = time.time()
        run["metrics"].update({k: info[k] for k in METRICS if k in info})
        step, steps, start = info.get("step"), info.get("steps"), info.get("start_step", 0)
        eta = None
        if _is_int(step) and _is_int(steps) and 0 <= step <= steps:
            run["step"], run["steps"] = step, steps
            start = start if _is_int(start) and 0 <= start < step else 0
            run["fraction"] = (step - start) / (steps - start) if steps > start else 1.0
            eta = _step_eta(run, now, step, steps)
        run_fraction, run_eta = self._overall(now)
        figures = {
            "event": "update", "kind": run["kind"], "name": run["name"], "key": run["key"], "worker": slot,
            "step": step, "steps": steps, **run["metrics"], "eta_s": _round(eta), "elapsed_s": round(now - run["t0"], 3),
            "run_fraction": round(run_fraction, 6), "run_eta_s": _round(run_eta),
        }  # fmt: skip
        self._record(figures)
        text = describe(run["metrics"])
        if self.live and run["task"] is not None:
            self.bars.update(
                run["task"], total=steps, completed=step or 0, count=f"{step}/{steps}" if steps else "",
                eta=f"ETA {_hms(eta)}" if eta is not None else "ETA -:--:--", info=text,
            )  # fmt: skip
            self._show_overall(run_eta)
        elif not self.quiet and (step is not None or text) and self._plain_due(run, now, eta):
            run["last_plain"] = now
            parts = [f"step {step}/{steps}" if step is not None else ""]
            tail = ", ".join([x for x in (text, f"ETA {_hms(eta)}" if eta is not None else "") if x])
            overall = f"all steps {run_fraction:.0%}" + (f" ETA {_hms(run_eta)}" if run_eta is not None else "")
            print(f"  {run['label']}: {' '.join([*parts, tail]).strip()}; {overall}", file=sys.stderr, flush=True)

    def finish(self, summary: dict | None, status: str = "done", slot: str | None = None) -> None:
        self.done += 1
        now = time.time()
        run = self.running.pop(slot, None) or {
            "label": f"[{self.done}/{self.total}]", "t0": now, "task": None, "kind": None, "name": None,
            "key": None, "cost": 0.0,
        }  # fmt: skip
        if status == "done" or status.startswith("committed"):  # else it runs again (stopped, died, input gone)
            self.done_cost += run["cost"]
        took = now - run["t0"]
        run_fraction, run_eta = self._overall(now)
        self._record({
            "event": "finish", "kind": run["kind"], "name": run["name"], "key": run["key"], "worker": slot,
            "status": status, "elapsed_s": round(took, 3), **_figures(summary),
            "run_fraction": round(run_fraction, 6), "run_eta_s": _round(run_eta),
        })  # fmt: skip
        line = f"{run['label']} {status} in {took:.1f}s{_brief(summary)}"
        if self.live:
            if run["task"] is not None:
                self.bars.remove_task(run["task"])
            self._show_overall(run_eta)
            self.bars.console.print(line, markup=False, highlight=False)
        elif not self.quiet:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.live:
            self.bars.stop()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001  (a display aid: never fail a run on its way out)
                print(f"warning: progress record: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ internals
    def _record(self, figures: dict) -> None:
        figures = {"t": round(time.time(), 3), **figures}
        for sink in list(self.sinks):
            try:
                sink.record(figures)
            except Exception as e:  # noqa: BLE001  (a display aid: say so once, stop recording there)
                self.sinks.remove(sink)
                self.note(f"progress is no longer recorded in {getattr(sink, 'where', sink)}: {type(e).__name__}: {e}")

    def _overall(self, now: float) -> tuple[float, float | None]:
        """The share of the run's cost done (busy steps by their own progress) and the time left."""
        completed = self.done_cost + sum(r["cost"] * r.get("fraction", 0.0) for r in self.running.values())
        total = max(self.total_cost, completed, 1e-12)
        fraction = min(1.0, completed / total)
        if self.rate_from is None:
            if any(r.get("fraction", 0.0) > 0 for r in self.running.values()):
                self.rate_from = (now, completed)
            return fraction, None
        t1, c1 = self.rate_from
        if now <= t1 or completed <= c1:
            return fraction, None
        return fraction, (total - completed) * (now - t1) / (completed - c1)

    def _show_overall(self, eta: float | None) -> None:
        completed = self.done_cost + sum(r["cost"] * r.get("fraction", 0.0) for r in self.running.values())
        self.bars.update(
            self.overall, completed=min(completed, self.total_cost), count=self._count(),
            eta=f"ETA {_hms(eta)}" if eta is not None else "",
        )  # fmt: skip

    def _count(self) -> str:
        return f"{self.done}/{self.total} steps"

    def _plain_due(self, run: dict, now: float, eta: float | None) -> bool:
        if run["last_plain"] is None:
            return eta is not None or now - run["t0"] >= self.plain_every  # the first as soon as there is an ETA
        return now - run["last_plain"] >= self.plain_every


def _step_eta(run: dict, now: float, step: int, steps: int) -> float | None:
    """Seconds left in a step at its rate since its first report (None until it has reported twice)."""
    first = run["first"]
    if first is None or step < first[1]:
        run["first"] = (now, step)
        return None
    t1, s1 = first
    if step == s1 or now <= t1:
        return None
    return (now - t1) / (step - s1) * (steps - step)


def describe(metrics: dict) -> str:
    """'loss 2.5000, 1,000 tok/s'; during distillation 'ce 2.3700 · kd 1.3700, 1,000 tok/s'."""
    text = []
    if metrics.get("kd") is not None and metrics.get("ce") is not None:
        text.append(f"ce {metrics['ce']:.4f} · kd {metrics['kd']:.4f}")
    elif metrics.get("loss") is not None:
        text.append(f"loss {metrics['loss']:.4f}")
    if metrics.get("tokens_per_s") is not None:
        text.append(f"{metrics['tokens_per_s']:,.0f} tok/s")
    return ", ".join(text)


def _hms(seconds: float) -> str:
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _round(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 3)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


SUMMARY_FIGURES = (
    "final_loss", "final_ce", "final_kd", "loss", "split", "steps", "tokens", "global_step_end",
    "best_ensemble_val_loss", "final_best_val_loss",
)  # fmt: skip


def _figures(summary: dict | None) -> dict:
    return {k: summary[k] for k in SUMMARY_FIGURES if summary and isinstance(summary.get(k), (int, float, str))}


def _brief(summary: dict | None) -> str:
    if not summary:
        return ""
    if isinstance(summary.get("final_ce"), float) and isinstance(summary.get("final_kd"), float):
        return f" (final ce {summary['final_ce']:.4f} · kd {summary['final_kd']:.4f})"
    for key in ("final_loss", "loss", "best_ensemble_val_loss", "final_best_val_loss"):
        if key in summary:
            return f" ({key.replace('_', ' ')} {summary[key]:.4f})"
    return ""


# --------------------------------------------------------------------------- the run record


class ProgressLog:
    """records/<spec>/<run>/progress.jsonl: one JSON object per line, appended with one write each
    (O_APPEND), so an interrupted run leaves whole lines. Per step: its start, its first report,
    a report at most every LOG_EVERY_S, its last report, its finish."""

    def __init__(self, path: Path, every_s: float = LOG_EVERY_S):
        self.where, self.every_s = path, every_s
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.last: dict[tuple, float] = {}

    def record(self, figures: dict) -> None:
        if figures["event"] == "update":
            who = (figures.get("key"), figures.get("worker"))
            t = figures["t"]
            final = figures.get("step") is not None and figures.get("step") == figures.get("steps")
            if who in self.last and t - self.last[who] < self.every_s and not final:
                return
            self.last[who] = t
        elif figures["event"] == "finish":
            self.last.pop((figures.get("key"), figures.get("worker")), None)
        os.write(self.fd, (json.dumps(figures, sort_keys=True) + "\n").encode())

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# --------------------------------------------------------------------------- what each step costs


def step_costs(graph, steps, store_root=None, runtime: dict | None = None, done: dict | None = None,
               required: set[str] | None = None) -> dict:  # fmt: skip
    """key → estimated cost of running each of `steps`, for weighting the overall bar.

    Seconds when this store has measured every step in `required` (default: all of `steps`) by its
    kind (hepc.observe.estimate: cycles by their model shape's tokens/s, other steps by their mean wall
    time; a step outside `required` without a measurement gets the smallest measured cost); otherwise
    FLOPs (a cycle: training plus teacher forwards; a score: its forward passes), with each step at
    least COST_FLOOR of a mean cycle. `done`: key → share of a resumable cycle already trained."""
    steps, done = list(steps), done or {}
    required = {s.key for s in steps} if required is None else required
    seconds = _measured_seconds(graph, steps, store_root, runtime or {}) if store_root is not None else {}
    seconds = {k: v for k, v in seconds.items() if v > 0}
    if required and all(k in seconds for k in required):
        least = min(seconds.values())
        base = {s.key: seconds.get(s.key, least) for s in steps}
    else:
        base = {s.key: _flops(s) for s in steps}
        cycles = [base[s.key] for s in steps if s.kind == "cycle" and base[s.key] > 0]
        floor = COST_FLOOR * (sum(cycles) / len(cycles)) if cycles else 1.0
        base = {k: max(v, floor) for k, v in base.items()}
    return {k: v * (1.0 - min(0.99, max(0.0, float(done.get(k, 0.0))))) for k, v in base.items()}


def _flops(step) -> float:
    total = 0.0
    for name in ("flops", "teacher_flops") if step.kind == "cycle" else ("flops",):
        value = step.context.get(name)
        if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
            total += float(value)
    return total


def _measured_seconds(graph, steps, store_root, runtime: dict) -> dict:
    from types import SimpleNamespace

    from hepc.observe.estimate import measure_for, pending_steps

    try:
        pending = pending_steps(graph, steps)
        measured = measure_for(
            store_root, pending, SimpleNamespace(device=runtime.get("device"), threads=runtime.get("threads"))
        )
    except (OSError, ValueError, TypeError, KeyError):  # a display aid: FLOPs will do
        return {}
    out = {}
    for p in pending:
        if p.kind == "cycle":
            rate = measured.rates.get(p.shape) if p.shape is not None else None
            if rate is not None and rate.work_per_s > 0:
                out[p.key] = p.work / rate.work_per_s
        else:
            t = measured.step_times.get((p.kind, p.shape))
            if t is not None:
                out[p.key] = t.wall_s
    return out
