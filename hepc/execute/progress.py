"""Progress on stderr: rich bars on a terminal (steps done, current step's tokens/s and loss, ETA),
plain lines otherwise. Results never go here; they go to stdout."""

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
        self._last_plain = 0.0
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
            self.current = None
            self.bars.start()

    def start(self, kind: str, name: str) -> None:
        self.label = f"[{self.done + 1}/{self.total}] {kind} {name}"
        self.t0 = time.time()
        if self.live:
            self.current = self.bars.add_task(self.label, total=None, info="")
        elif not self.quiet:
            print(f"{self.label} ...", file=sys.stderr, flush=True)

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

    def update(self, info: dict) -> None:
        text = []
        if "loss" in info:
            text.append(f"loss {info['loss']:.4f}")
        if "tokens_per_s" in info:
            text.append(f"{info['tokens_per_s']:,.0f} tok/s")
        if self.live and self.current is not None:
            self.bars.update(self.current, total=info.get("steps"), completed=info.get("step", 0), info=", ".join(text))
        elif not self.quiet and time.time() - self._last_plain > 10:
            self._last_plain = time.time()
            where = f"step {info.get('step')}/{info.get('steps')}" if "step" in info else ""
            print(f"  {self.label}: {where} {', '.join(text)}", file=sys.stderr, flush=True)

    def finish(self, summary: dict | None, status: str = "done") -> None:
        self.done += 1
        took = time.time() - self.t0
        if self.live:
            if self.current is not None:
                self.bars.remove_task(self.current)
                self.current = None
            self.bars.update(self.overall, completed=self.done)
            self.bars.console.print(f"{self.label} {status} in {took:.1f}s{_brief(summary)}")
        elif not self.quiet:
            print(f"{self.label} {status} in {took:.1f}s{_brief(summary)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.live:
            self.bars.stop()


def _brief(summary: dict | None) -> str:
    if not summary:
        return ""
    for key in ("final_loss", "loss", "best_ensemble_val_loss", "final_best_val_loss"):
        if key in summary:
            return f" ({key.replace('_', ' ')} {summary[key]:.4f})"
    return ""
