"""`sweep:` expands one spec into several populations inside one graph, sharing steps by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hepc.compile.compiler import compile_spec
from hepc.errors import SpecError
from hepc.spec.load import load_spec

ROOT = Path(__file__).resolve().parents[1]
TINY = (ROOT / "tests" / "fixtures" / "tiny.yaml").read_text()


def write(tmp_path: Path, sweep: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(TINY + sweep)
    return p


def test_cross_product_and_shared_steps(tmp_path):
    spec = write(tmp_path, "sweep:\n  population.epochs_per_cycle: [1, 2]\n  prior.kind: [learned, uniform]\n")
    c = compile_spec(load_spec(spec))
    assert [p.label for p in c.populations] == [
        "epochs_per_cycle=1,kind=learned", "epochs_per_cycle=1,kind=uniform",
        "epochs_per_cycle=2,kind=learned", "epochs_per_cycle=2,kind=uniform",
    ]
    cycles = [s for s in c.graph if s.kind == "cycle"]
    assert len(cycles) == 2 * 4  # two values of E × (2 trajectories × 2 cycles); the prior kinds share them
    assert len([s for s in c.graph if s.kind == "prior"]) == 4
    assert c.totals["epochs"] == 4 * 1 + 4 * 2


def test_a_variant_equals_the_plain_spec(tmp_path):
    """A sweep value that equals the base value yields exactly the base spec's keys."""
    spec = write(tmp_path, "sweep:\n  population.epochs_per_cycle: [1, 2]\n")
    swept = compile_spec(load_spec(spec))
    plain = compile_spec(load_spec(ROOT / "tests" / "fixtures" / "tiny.yaml"))
    first = swept.populations[0]
    base = plain.populations[0]
    assert [m.cycle_key for m in first.members] == [m.cycle_key for m in base.members]


def test_errors_point_at_the_sweep_value(tmp_path):
    spec = write(tmp_path, "sweep:\n  population.cycles: [2, 0]\n")
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    (problem,) = e.value.problems
    lines = TINY.count("\n")
    assert problem.where == f"{spec}:{lines + 2}:26"  # the "0" in [2, 0]
    assert problem.path == "population.cycles" and "must be >= 1" in problem.message


@pytest.mark.parametrize("key", ["runtime.device", "name", "sweep.x", "version"])
def test_cannot_sweep_identity_or_runtime(tmp_path, key):
    with pytest.raises(SpecError):
        load_spec(write(tmp_path, f"sweep:\n  {key}: [a, b]\n"))


def test_budget_larger_than_one_variant_is_reported(tmp_path):
    spec = write(tmp_path, "sweep:\n  population.cycles: [1, 2]\n")  # budgets [1, 2, all]: K=2 > 2×1? no
    load_spec(spec)
    spec = write(tmp_path, "sweep:\n  population.trajectories: [1, 2]\n  population.cycles: [1]\n")
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert any("larger than the population" in p.message for p in e.value.problems)
