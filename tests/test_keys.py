"""Step identity: identical specs give identical keys; each field changes exactly the steps it should."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hepc.compile.compiler import compile_spec
from hepc.hashing import UnhashableValue, canonical_json, key_fields
from hepc.spec.load import load_spec

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny.yaml"


def compiled(*overrides, path=TINY):
    return compile_spec(load_spec(path, list(overrides)))


def names_by_key(c):
    return {s.key: f"{s.kind}:{s.name}" for s in c.graph}


def changed(*overrides) -> set[str]:
    """Steps of the overridden spec whose key is not in the base spec."""
    base = set(compiled().graph.steps)
    new = compiled(*overrides)
    return {f"{s.kind}:{s.name}" for s in new.graph if s.key not in base}


def test_identical_specs_identical_keys():
    a, b = compiled(), compiled()
    assert list(a.graph.steps) == list(b.graph.steps)


def test_golden_keys():
    """Pinned keys of tests/fixtures/tiny.yaml. A change here invalidates every stored result:
    bump the step kind's impl_version instead of changing its params silently."""
    c = compiled()
    by_name = {f"{s.kind}:{s.name}": s.key for s in c.graph}
    golden = json.loads((ROOT / "tests" / "fixtures" / "tiny.keys.json").read_text())
    assert by_name == golden


@pytest.mark.parametrize(
    "override",
    ["runtime.threads=2", "runtime.device=cuda", "runtime.checkpoint_every_steps=7", "runtime.store=elsewhere",
     "runtime.log_every_steps=1", "runtime.compile=true", "runtime.dtype=bfloat16", "name=other",
     "runtime.jobs=4", "runtime.backend=ray", "runtime.ray_address=auto", "runtime.gpus_per_step=4",
     "runtime.cpus_per_step=2"],
)
def test_runtime_and_cosmetic_fields_change_no_key(override):
    assert changed(override) == set()


def test_budgets_rerun_only_prior_and_curve():
    assert changed("prior.budgets=[1,all]") == {"prior:p2xc2", "curve:p2xc2"}
    assert changed("prior.steps=50") == {"prior:p2xc2", "curve:p2xc2"}
    assert changed("prior.kind=uniform") == {"prior:p2xc2", "curve:p2xc2"}


def test_more_cycles_is_prefix_stable():
    new = changed("population.cycles=3")
    assert {n for n in new if n.startswith("cycle:")} == {"cycle:t1-c003", "cycle:t2-c003"}
    assert {n for n in new if n.startswith("score:")} == {
        f"score:t{t}-c003-{s}" for t in (1, 2) for s in ("heldout", "val")
    }
    assert new - {n for n in new if n.startswith(("cycle:", "score:"))} == {"prior:p2xc3", "curve:p2xc3"}


def test_more_trajectories_adds_one_chain():
    new = changed("population.trajectories=3")
    assert {n for n in new if n.startswith("cycle:")} == {"cycle:t3-c001", "cycle:t3-c002"}


def test_distill_settings_touch_only_distilled_cycles():
    new = changed("population.distill.alpha=0.3")
    assert {n for n in new if n.startswith("cycle:")} == {"cycle:t1-c002", "cycle:t2-c002"}
    new = changed("population.perturb.start=0.5")
    assert {n for n in new if n.startswith("cycle:")} == {"cycle:t1-c002", "cycle:t2-c002"}


@pytest.mark.parametrize(
    "override",
    ["model.d_model=64", "model.dropout=0.0", "optimizer.lr=0.001", "population.epochs_per_cycle=2",
     "population.schedule.lr_floor=0.1", "data.seq_len=16"],
)
def test_training_fields_change_every_cycle_but_not_the_corpus(override):
    new = changed(override)
    cycles = {n for n in new if n.startswith("cycle:")}
    assert cycles == {f"cycle:t{t}-c00{c}" for t in (1, 2) for c in (1, 2)}
    assert not any(n.startswith("corpus:") for n in new)




@pytest.mark.parametrize(
    "override",
    ["data.val_tokens=2500", "data.seed=1", "data.source.seed=3",
     "data.max_doc_tokens=1024", "data.max_doc_tokens=null"],
)
def test_data_fields_change_everything(override):
    assert len(changed(override)) == len(compiled().graph)


def test_a_test_split_changes_the_corpus_and_adds_test_scores():
    """data.test_tokens = 0 (the default) stays out of every key; a test split is a new corpus, every
    snapshot gains a test score step, and the prior and curve read them."""
    assert compiled("data.test_tokens=0").graph.steps.keys() == compiled().graph.steps.keys()
    c = compiled("data.test_tokens=1500")
    base = compiled()
    assert not set(c.graph.steps) & set(base.graph.steps)
    kinds = [s.kind for s in c.graph]
    assert kinds.count("score") == 3 * len(c.populations[0].members)
    pop = c.populations[0]
    assert all(set(m.score_keys) == {"heldout", "val", "test"} for m in pop.members)
    assert c.graph[pop.prior_key].inputs["test"] == [m.score_keys["test"] for m in pop.members]


def test_training_on_heldout_changes_only_cycles_and_what_follows():
    """train_on_heldout (uniform prior) keeps the corpus: val and test stay the very same arrays."""
    base = compiled("prior.kind=uniform")
    c = compiled("prior.kind=uniform", "data.train_on_heldout=true")
    assert base.populations[0].corpus_key == c.populations[0].corpus_key
    changed_kinds = {s.kind for s in c.graph if s.key not in base.graph.steps}
    assert changed_kinds == {"cycle", "score", "prior", "curve"}
    cycle = c.graph[c.populations[0].members[0].cycle_key]
    assert cycle.params["train_splits"] == ["train", "heldout"]
    assert c.populations[0].totals["trained_tokens_per_epoch"] == 12000
    assert base.populations[0].totals["trained_tokens_per_epoch"] == 11000


def test_seed_shifts_trajectories():
    """Trajectory p uses seed + p, so seed 1's first trajectory is seed 0's second: shared by key."""
    a, b = compiled(), compiled("seed=1")
    a_t2 = [m.cycle_key for m in a.populations[0].members if m.trajectory == 2]
    b_t1 = [m.cycle_key for m in b.populations[0].members if m.trajectory == 1]
    assert a_t2 == b_t1


def test_no_absolute_paths_in_keys(tmp_path):
    """A text source enters keys through content digests: same files elsewhere → same keys."""
    keys = []
    for where in ("a", "b/deeper"):
        folder = tmp_path / where
        (folder / "data").mkdir(parents=True)
        (folder / "data" / "doc.txt").write_text("hello world\n" * 3000)
        spec = TINY.read_text().replace(
            "source: {kind: synthetic, alphabet_size: 16, order: 2, concentration: 0.2, doc_tokens: 200, seed: 0}",
            "source: {kind: text, paths: [data/*.txt]}",
        )
        (folder / "s.yaml").write_text(spec)
        c = compile_spec(load_spec(folder / "s.yaml"), strict_data=True)
        keys.append(list(c.graph.steps))
        for s in c.graph:
            assert str(tmp_path) not in canonical_json(s.params)
    assert keys[0] == keys[1]


def test_canonical_json_refuses_unstable_values():
    for bad in ({"x": float("nan")}, {"x": {1, 2}}, {"x": lambda: 0}, {1: "a"}, {"x": (1, 2)}, {"x": object()}):
        with pytest.raises(UnhashableValue):
            canonical_json(bad)
    assert canonical_json({"b": 1, "a": [1.5, None, True]}) == '{"a":[1.5,null,true],"b":1}'


def test_fields_added_later_are_left_out_while_default():
    from pydantic import BaseModel, Field

    class Old(BaseModel):
        a: int = 1

    class New(BaseModel):
        a: int = 1
        b: int = Field(default=0, json_schema_extra={"key_omits_default": True})

    assert key_fields(New()) == key_fields(Old())
    assert key_fields(New(b=3)) != key_fields(Old())


def test_budget_accounting_pce():
    c = compiled("population.trajectories=3", "population.cycles=5", "population.epochs_per_cycle=0.5",
                 "prior.budgets=[all]")
    assert c.totals["epochs"] == 3 * 5 * 0.5
    members = c.populations[0].members
    assert len(members) == 15
    assert max(m.cost_epochs for m in members) == 3 * 5 * 0.5
    assert sorted(m.cost_epochs for m in members)[0] == 0.5


def test_plan_prints_the_integrated_weight_decay_per_cycle():
    """∫ lr·wd over a cycle, from the actual schedule: the cyclic sawtooth's mean product of multipliers,
    (1 − 0.92x)(0.7 + 0.3x) over x in [0, 1), is about 0.436 (flat WD: 0.54), times lr · wd · steps."""
    from hepc.compile.plan import schedule_lines

    c = compiled("optimizer.weight_decay=2.0")
    steps = c.populations[0].totals["steps_per_cycle"]
    efolds = c.populations[0].totals["wd_efolds_per_cycle"]["adamw"]
    exact = sum((0.08 + 0.92 * (1 - s / steps)) * (0.7 + 0.3 * s / steps) for s in range(steps)) * 0.003 * 2.0
    assert efolds == pytest.approx(exact, abs=1e-6) and abs(efolds / (0.003 * 2.0 * steps) - 0.436) < 0.02
    flat = compiled("optimizer.weight_decay=2.0", "population.schedule.wd_floor=1").populations[0].totals
    assert flat["wd_efolds_per_cycle"]["adamw"] > efolds
    [line] = schedule_lines(c)
    assert f"{efolds:.2f} e-folds" in line and f"{steps} steps" in line
    muon = compiled("optimizer.kind=muon", "optimizer.muon_lr=0.02").populations[0].totals["wd_efolds_per_cycle"]
    assert muon["muon"] == pytest.approx(muon["adamw"] * 0.02 / 0.003, abs=1e-5)


def shipped_specs():
    return sorted((ROOT / "specs").rglob("*.yaml"))


def test_compile_and_plan_never_import_torch(tmp_path):
    specs = [str(p) for p in shipped_specs()] + [str(TINY)]
    code = (
        "import sys\n"
        "from hepc.compile.compiler import compile_spec\nfrom hepc.spec.load import load_spec\n"
        "from hepc.compile.plan import make_plan, split_lines\nfrom hepc.store.objects import Store\n"
        f"for p in {specs!r}:\n"
        f"    store = Store({str(tmp_path / 'store')!r})\n"
        "    split_lines(make_plan(compile_spec(load_spec(p)), store), store)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print('ok', len(sys.argv))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "store").exists(), "planning wrote to the store"


def test_every_shipped_spec_validates():
    assert shipped_specs(), "no specs shipped"
    for p in shipped_specs():
        c = compile_spec(load_spec(p))
        assert len(c.graph) > 0


def test_logit_aggregation_adds_one_step_and_keeps_every_key():
    assert changed("prior.aggregate=logit") == {"logits:p2xc2"}
    assert changed("prior.aggregate=probability") == set()  # the default stays out of every key
