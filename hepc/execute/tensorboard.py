"""TensorBoard event files of a run (`runtime.tensorboard: true`; the optional `tensorboard` package,
`pip install 'hepc[tensorboard]'`), so a run can be watched in the tool people already use.

Written by the driver, from the same figures as the progress display (hepc.execute.progress), under
the run record: records/<spec>/<run>/tensorboard/<trajectory>/, one TensorBoard run per trajectory
(`t1`, `t2`, ...), its x axis the trajectory's global optimizer step:

    train/loss          the objective (during distillation (1 − α)·CE + α·KD)
    train/ce            cross-entropy toward the data (what val measures)
    train/kd            the distillation term (distilled cycles only)
    train/lr, train/wd, train/tokens_per_s
    val/loss            the val score of each cycle's snapshot, at the cycle's last step

Watch it with `tensorboard --logdir STORE/records/SPEC_NAME`. Runtime only: never in a step key.
This module imports neither torch nor tensorboard until a writer is made (`hepc validate` stays light).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from hepc.errors import Problem, SpecError

EXTRA = "pip install 'hepc[tensorboard]'"
FLUSH_S = 10
EVERY_S = 2.0  # train scalars of one step at most this often (plus its last report)
TRAIN_TAGS = ("loss", "ce", "kd", "lr", "wd", "tokens_per_s")


def missing_message() -> str:
    return f"needs the optional tensorboard package, which is not installed: {EXTRA}"


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def check(loaded) -> None:
    """`runtime.tensorboard: true` without the package: one located error (exit 2), before anything runs."""
    if loaded.spec.runtime.tensorboard and not available():
        raise SpecError([Problem(loaded.where("runtime.tensorboard"), "runtime.tensorboard", missing_message())])


def trajectory(name: str) -> str:
    """'t1' for cycle 't1-c003' and score 't1-c003-val' (a sweep variant's prefix stays)."""
    base = re.sub(r"-c\d+(-[a-z]+)?$", "", name or "")
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", base) or "run"


class TensorBoardSink:
    """Takes the progress figures (`record`) and writes scalars; `graph` and `store` find a val score's
    cycle and its last global step."""

    def __init__(self, folder: Path, graph, store):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SpecError(f"runtime.tensorboard: {missing_message()}") from None
        self.SummaryWriter = SummaryWriter
        self.folder, self.graph, self.store = Path(folder), graph, store
        self.where = self.folder
        self.writers: dict[str, object] = {}
        self.last: dict[str | None, float] = {}  # step key → when its train scalars were last written
        self.step_end: dict[str, int] = {}  # cycle key → its last global step
        self.loss_at: dict[str | None, int | None] = {}  # step key → global step of the losses last written

    def writer(self, run: str):
        if run not in self.writers:
            self.writers[run] = self.SummaryWriter(log_dir=str(self.folder / run), flush_secs=FLUSH_S)
        return self.writers[run]

    def record(self, figures: dict) -> None:
        event, kind = figures.get("event"), figures.get("kind")
        if event == "update" and kind == "cycle":
            self._train(figures)
        elif event == "finish" and kind == "cycle" and isinstance(figures.get("global_step_end"), int):
            self.step_end[figures["key"]] = figures["global_step_end"]
        elif event == "finish" and kind == "score" and figures.get("split") == "val":
            self._val(figures)

    def _train(self, f: dict) -> None:
        key, t = f.get("key"), f["t"]
        final = f.get("step") is not None and f.get("step") == f.get("steps")
        if key in self.last and t - self.last[key] < EVERY_S and not final:
            return
        self.last[key] = t
        w = self.writer(trajectory(f.get("name")))
        at, loss_at = f.get("global_step"), f.get("loss_step")  # the figures carry the latest logged losses
        fresh = loss_at != self.loss_at.get(key)
        self.loss_at[key] = loss_at
        for tag in TRAIN_TAGS:
            value = f.get(tag)
            losses = tag in ("loss", "ce", "kd")
            x = loss_at if losses else at
            if isinstance(value, (int, float)) and isinstance(x, int) and (fresh or not losses):
                w.add_scalar(f"train/{tag}", float(value), x, walltime=t)

    def _val(self, f: dict) -> None:
        loss, key = f.get("loss"), f.get("key")
        if not isinstance(loss, (int, float)) or key is None:
            return
        try:
            cycle = self.graph[self.graph[key].inputs["snapshot"]]
        except (KeyError, TypeError):
            return
        at = self.step_end.get(cycle.key)
        if at is None:  # the cycle was committed before this run: its summary says where it ended
            from hepc.store.safe_io import read_json

            path = self.store.find(cycle)
            try:
                summary = read_json(path / "summary.json") if path is not None else None
            except (OSError, ValueError):
                summary = None
            at = summary.get("global_step_end") if isinstance(summary, dict) else None
        if isinstance(at, int):
            self.writer(trajectory(cycle.name)).add_scalar("val/loss", float(loss), at, walltime=f["t"])

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        self.writers.clear()
