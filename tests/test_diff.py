"""`hepc diff A B`: every change reads A's value → B's, a section one side drops is one change."""

from __future__ import annotations

from hepc.compile.diff import changes


def test_a_dropped_section_is_one_change_from_a_to_b():
    a = {"population": {"cycles": 2, "distill": {"after_cycles": 1, "alpha": 0.45}}}
    b = {"population": {"cycles": 2, "distill": None}}
    assert changes(a, b) == [{"field": "population.distill", "old": {"after_cycles": 1, "alpha": 0.45}, "new": None}]
    assert changes(b, a) == [{"field": "population.distill", "old": None, "new": {"after_cycles": 1, "alpha": 0.45}}]


def test_fields_inside_a_shared_section_are_compared_one_by_one():
    a = {"optimizer": {"lr": 0.003, "weight_decay": 0.1}, "name": "a"}
    b = {"optimizer": {"lr": 0.001, "weight_decay": 0.1}, "name": "b", "extra": 1}
    assert changes(a, b) == [
        {"field": "extra", "old": "<absent>", "new": 1},
        {"field": "name", "old": "a", "new": "b"},
        {"field": "optimizer.lr", "old": 0.003, "new": 0.001},
    ]
    assert changes(a, a) == []


def test_output_cut_short_by_its_reader_is_not_an_error(tmp_path):
    """`hepc plan BIG | head -1`: the closed pipe ends the command quietly (exit 0), no error line."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "hepc.cli", "plan", str(root / "specs" / "paper-1.8b.yaml"), "--store", str(tmp_path)]
    proc = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # 1,443 plan lines: far more than a pipe holds
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, err
    assert first.startswith("+ new") and "error" not in err and "Traceback" not in err
