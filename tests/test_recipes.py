"""`hepc new --budget B` renders a spec that validates and spends the budget as the rules say."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hepc.cli.main import app
from hepc.spec.load import load_spec
from hepc.spec.recipes import recipe


@pytest.mark.parametrize("budget", [1, 4, 16, 64, 256])
def test_rendered_spec_validates_and_spends_the_budget(tmp_path, budget):
    out = tmp_path / f"b{budget}.yaml"
    res = CliRunner().invoke(app, ["new", "--budget", str(budget), "--out", str(out)])
    assert res.exit_code == 0, res.output
    spec = load_spec(out).spec
    pop = spec.population
    spent = pop.trajectories * pop.cycles * pop.epochs_per_cycle
    assert spent == pytest.approx(budget, rel=0.25)
    assert pop.trajectories * pop.cycles >= 4  # even one epoch yields a population
    assert all(k == "all" or k <= pop.trajectories * pop.cycles for k in spec.prior.budgets)
    assert out.read_text().startswith("# q0 population for a budget of")


def test_distillation_starts_near_saturation():
    r = recipe(256, 16)
    assert r.distill_after_cycles * r.epochs_per_cycle == pytest.approx(16)
    assert recipe(16, 16).distill_after_cycles is None  # a chain shorter than S never distils


def test_stdout_and_unknown_template(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["new", "--budget", "8"])
    assert res.exit_code == 0 and "version: 1" in res.output
    res = runner.invoke(app, ["new", "--budget", "8", "--template", "nope"])
    assert res.exit_code == 2
