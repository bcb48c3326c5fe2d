"""Progress a person can plan around: an ETA from a step's first measured optimizer steps in plain
(non-terminal) mode too, the overall share weighted by each step's cost, distillation's CE and KD
shown apart, and the same figures appended to the run record's progress.jsonl."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import ROOT, TINY

from hepc.compile.compiler import compile_spec
from hepc.execute.progress import ProgressLog, StepProgress, _hms, describe, step_costs
from hepc.spec.load import load_spec

ETA = re.compile(r"ETA (\d+):(\d\d):(\d\d)")


def _seconds(match: re.Match) -> int:
    h, m, s = map(int, match.groups())
    return h * 3600 + m * 60 + s


def test_hms():
    assert _hms(30) == "0:00:30" and _hms(3700) == "1:01:40" and _hms(-2) == "0:00:00"


def test_plain_lines_name_the_worker_and_carry_an_eta_from_measured_steps(capsys):
    progress = StepProgress(3)
    assert not progress.live  # pytest captures stderr: not a terminal
    progress.start("cycle", "t1-c001", slot="w1")
    progress.start("score", "t1-c001-val", slot="w2")
    progress.update({"step": 1, "steps": 21, "tokens_per_s": 900.0}, slot="w1")  # the first step: no rate yet
    progress.running["w1"]["first"] = (time.time() - 10.0, 1)  # ... measured 10 s ago
    progress.update({"step": 5, "steps": 21, "loss": 2.5, "tokens_per_s": 1000.0}, slot="w1")
    progress.finish({"loss": 2.4}, slot="w2")
    progress.finish({"final_loss": 2.3}, slot="w1")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "w1: [1/3] cycle t1-c001 ..." and err[1] == "w2: [2/3] score t1-c001-val ..."
    # 4 steps in 10 s, 16 to go: 40 s
    assert err[2].startswith("  w1: [1/3] cycle t1-c001: step 5/21 loss 2.5000, 1,000 tok/s, ETA 0:00:40; all steps")
    assert err[3].startswith("w2: [2/3] score t1-c001-val done in") and err[3].endswith("(loss 2.4000)")
    assert err[4].startswith("w1: [1/3] cycle t1-c001 done in") and err[4].endswith("(final loss 2.3000)")


def test_a_step_begun_again_keeps_its_number_and_the_counter_never_passes_the_total(capsys):
    """A worker that died or lost its lease: the step starts again under its own number."""
    progress = StepProgress(2)
    progress.start("cycle", "t1-c001", slot="w1", key="a" * 32)
    progress.finish(None, "stopped: lease taken over by another process", slot="w1")
    progress.start("cycle", "t1-c001", slot="w2", key="a" * 32)
    progress.finish({"final_loss": 2.3}, slot="w2")
    progress.start("score", "t1-c001-val", slot="w1", key="b" * 32)
    err = capsys.readouterr().err
    assert "w2: [1/2] cycle t1-c001 (again) ..." in err and "w1: [2/2] score t1-c001-val ..." in err
    assert "[3/2]" not in err


def test_distillation_shows_ce_and_kd_apart_never_as_loss():
    assert describe({"loss": 1.8, "ce": 2.37, "kd": 1.37, "tokens_per_s": 10.0}) == "ce 2.3700 · kd 1.3700, 10 tok/s"
    assert describe({"loss": 2.5, "ce": 2.5}) == "loss 2.5000"
    from hepc.execute.progress import _brief

    assert _brief({"final_loss": 1.8, "final_ce": 2.37, "final_kd": 1.37}) == " (final ce 2.3700 · kd 1.3700)"


def test_the_overall_share_is_weighted_by_cost_and_recorded(tmp_path):
    log = tmp_path / "progress.jsonl"
    sinks = [ProgressLog(log, every_s=0.0)]
    progress = StepProgress(3, quiet=True, costs={"c": 98.0, "s": 1.0, "p": 1.0}, sinks=sinks)
    progress.start("score", "t1-c001-val", key="s")
    progress.finish({"loss": 3.0, "split": "val"})
    progress.start("cycle", "t1-c001", key="c")
    progress.update({"step": 1, "steps": 10, "start_step": 0})
    progress.running[None]["first"] = (time.time() - 1.0, 1)
    progress.update({"step": 6, "steps": 10, "start_step": 0, "loss": 2.0, "ce": 2.0, "global_step": 6})
    progress.finish({"final_loss": 1.9})
    progress.close()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["event"] for x in lines] == ["start", "finish", "start", "update", "update", "finish"]
    assert lines[1]["run_fraction"] == pytest.approx(0.01)  # a score: 1 of 100, not 1 of 3 steps
    assert lines[4]["run_fraction"] == pytest.approx((1 + 98 * 0.6) / 100)
    assert lines[4]["eta_s"] == pytest.approx(0.8, abs=0.1)  # 5 steps in 1 s, 4 to go
    assert lines[4]["key"] == "c" and lines[4]["step"] == 6 and lines[4]["loss"] == 2.0
    assert lines[5]["run_fraction"] == pytest.approx(0.99) and lines[5]["final_loss"] == 1.9


def test_the_record_keeps_a_steps_first_and_last_report_and_whole_lines(tmp_path):
    log = ProgressLog(tmp_path / "progress.jsonl")  # at most a line per LOG_EVERY_S per step in between
    progress = StepProgress(1, quiet=True, sinks=[log])
    progress.start("cycle", "t1-c001", key="c")
    for step in range(1, 11):
        progress.update({"step": step, "steps": 10}, slot=None)
    progress.finish(None)
    progress.close()
    text = (tmp_path / "progress.jsonl").read_text()
    assert text.endswith("\n")
    steps = [json.loads(x).get("step") for x in text.splitlines()]
    assert steps == [None, 1, 10, None]  # start, first, last, finish


def test_step_costs_follow_flops_with_small_nonzero_other_steps():
    loaded = load_spec(TINY, ["population.trajectories=1"])
    graph = compile_spec(loaded).graph
    costs = step_costs(graph, graph.order())
    by_name = {(s.kind, s.name): costs[s.key] for s in graph.order()}
    plain, distilled = by_name[("cycle", "t1-c001")], by_name[("cycle", "t1-c002")]
    assert distilled > plain  # the teacher's forward passes
    small = [v for (kind, _), v in by_name.items() if kind != "cycle"]
    assert all(0 < v < plain / 10 for v in small)
    assert sum(v for (kind, _), v in by_name.items() if kind == "cycle") > 0.8 * sum(costs.values())


def _run_plain(tmp_path: Path, overrides: list[str], env: dict) -> subprocess.CompletedProcess:
    """`hepc run` with stderr a pipe (not a terminal): plain progress lines."""
    return subprocess.run(
        [sys.executable, "-m", "hepc.cli", "run", TINY, *overrides],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=240,
        env={**os.environ, "HEPC_STORE": str(tmp_path / "store"), **env},
    )  # fmt: skip


# A cycle of a few seconds at one thread: 20 epochs of the tiny corpus (21 steps each).
LONG = ["population.trajectories=1", "population.cycles=2", "population.epochs_per_cycle=20", "prior.steps=10"]


def _cycle_lines(err: str, name: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("  [") and f"cycle {name}:" in line]


def test_a_real_run_shows_a_moving_eta_and_ce_kd_in_plain_mode(tmp_path):
    out = _run_plain(tmp_path, LONG, {"HEPC_PROGRESS_EVERY_S": "0.25"})
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    first = _cycle_lines(out.stderr, "t1-c001")
    etas = [_seconds(m) for line in first if (m := ETA.search(line))]
    assert len(etas) >= 2, out.stderr
    assert len(set(etas)) >= 2, first  # the ETA moves
    assert all("all steps" in line for line in first)
    assert all(" loss " in line and " kd " not in line for line in first if "loss" in line)
    distilled = _cycle_lines(out.stderr, "t1-c002")
    assert distilled and all("loss" not in line for line in distilled), distilled
    assert any(re.search(r"ce \d+\.\d{4} · kd \d+\.\d{4}", line) for line in distilled), distilled
    done = [line for line in out.stderr.splitlines() if "cycle t1-c002 done" in line]
    assert re.search(r"\(final ce \d+\.\d{4} · kd \d+\.\d{4}\)$", done[0]), done

    # the same figures, appended to the run record
    (record,) = (tmp_path / "store" / "records" / "tiny").iterdir()
    lines = [json.loads(x) for x in (record / "progress.jsonl").read_text().splitlines()]
    updates = [x for x in lines if x["event"] == "update" and x["name"] == "t1-c002"]
    assert updates and updates[-1]["step"] == updates[-1]["steps"]
    assert {"t", "key", "step", "steps", "tokens_per_s", "ce", "kd", "loss", "lr", "wd", "eta_s", "run_eta_s"} <= set(
        updates[-1]
    )
    fractions = [x["run_fraction"] for x in lines if "run_fraction" in x]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    finishes = [x for x in lines if x["event"] == "finish"]
    planned = json.loads((record / "plan.json").read_text())["steps"]  # corpus, 2 × (cycle + 3 scores), prior, curve
    assert len(finishes) == len([x for x in lines if x["event"] == "start"]) == len(planned)


@pytest.mark.slow
def test_the_default_plain_cadence_moves_the_eta_within_30_seconds(tmp_path):
    """No overrides of the display: a cycle of ~25 s shows at least two different ETAs early."""
    out = _run_plain(tmp_path, [*LONG[:2], "population.epochs_per_cycle=80", "prior.steps=10"], {})
    assert out.returncode == 0, out.stderr
    (record,) = (tmp_path / "store" / "records" / "tiny").iterdir()
    lines = [json.loads(x) for x in (record / "progress.jsonl").read_text().splitlines()]
    (cycle,) = [x for x in lines if x["event"] == "finish" and x["name"] == "t1-c001"]
    if cycle["elapsed_s"] < 15:
        pytest.skip(f"the cycle took {cycle['elapsed_s']:.0f} s here: too fast to see the cadence")
    etas = [_seconds(m) for line in _cycle_lines(out.stderr, "t1-c001")[:3] if (m := ETA.search(line))]
    assert len(etas) >= 2 and len(set(etas)) >= 2, out.stderr
