"""Progress on stderr: rich bars on a terminal (the overall bar of steps, then one line per busy
worker with its step's tokens/s, loss and ETA), plain lines otherwise. Results never go here; they
go to stdout. `slot` names the worker (None: the driver's own process, one step at a time)."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StepProgress:
    def __init__(self, total_steps: int, quiet: bool = False):
        self.console = Console(stderr=True)
        self.quiet = quiet
        self.live = self.console.is_terminal and not quiet
        self.total = total_steps
        self.done = 0
        self.started = 0
        self.running: dict[str | None, dict] = {}  # slot → its step's label, start time, bar
        if self.live:
            self.bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                transient=False,
            )
            self.overall = self.bars.add_task("steps", total=total_steps, info="")
            self.bars.start()

    def start(self, kind: str, name: str, slot: str | None = None) -> None:
        self.started += 1
        label = f"[{self.started}/{self.total}] {kind} {name}"
        if slot is not None:
            label = f"{slot}: {label}"
        task = None
        if self.live:
            task = self.bars.add_task(label, total=None, info="")
        elif not self.quiet:
            print(f"{label} ...", file=sys.stderr, flush=True)
        self.running[slot] = {"label": label, "t0": time.time(), "task": task, "last_plain": 0.0}

    def add(self, steps: int) -> None:
        """More steps to run than planned (a damaged or vanished input is recomputed)."""
        self.total += steps
        if self.live:
            self.bars.update(self.overall, total=self.total)

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
        text = []
        if "loss" in info:
            text.append(f"loss {info['loss']:.4f}")
        if "tokens_per_s" in info:
            text.append(f"{info['tokens_per_s']:,.0f} tok/s")
        if self.live and run["task"] is not None:
            self.bars.update(run["task"], total=info.get("steps"), completed=info.get("step", 0), info=", ".join(text))
        elif not self.quiet and time.time() - run["last_plain"] > 10:
            run["last_plain"] = time.time()
            where = f"step {info.get('step')}/{info.get('steps')}" if "step" in info else ""
            eta = _eta(time.time() - run["t0"], info.get("step"), info.get("steps"))
            if eta:
                text.append(f"ETA {eta}")
            print(f"  {run['label']}: {where} {', '.join(text)}", file=sys.stderr, flush=True)

    def finish(self, summary: dict | None, status: str = "done", slot: str | None = None) -> None:
        self.done += 1
        run = self.running.pop(slot, None) or {"label": f"[{self.done}/{self.total}]", "t0": time.time(), "task": None}
        took = time.time() - run["t0"]
        line = f"{run['label']} {status} in {took:.1f}s{_brief(summary)}"
        if self.live:
            if run["task"] is not None:
                self.bars.remove_task(run["task"])
            self.bars.update(self.overall, completed=self.done)
            self.bars.console.print(line, markup=False, highlight=False)
        elif not self.quiet:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.live:
            self.bars.stop()


def _eta(elapsed: float, step, steps) -> str:
    """Time left for a step at the rate since it started ('' before there is a rate)."""
    if not isinstance(step, int) or not isinstance(steps, int) or step <= 0 or steps < step:
        return ""
    left = elapsed / step * (steps - step)
    minutes, seconds = divmod(round(left), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def _brief(summary: dict | None) -> str:
    if not summary:
        return ""
    for key in ("final_loss", "loss", "best_ensemble_val_loss", "final_best_val_loss"):
        if key in summary:
            return f" ({key.replace('_', ' ')} {summary[key]:.4f})"
    return ""
