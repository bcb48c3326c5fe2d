"""What hepc prints, as a new user reads it: sweep labels and step names, the curve `hepc results`
promises, cut messages, one sign convention, flags in `--help`, plurals, per-spec overrides on
`compare`/`report`/`diff`, and `hepc new --data` with a header that states the S it was given.

One small sweep (two variants of one trajectory × two cycles, ~10 s of training) is run once;
everything else compiles, plans or reads it back.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli_helpers import ROOT, executed, hepc
from typer.testing import CliRunner

from hepc.cli.main import app
from hepc.compile.compiler import compile_spec
from hepc.spec.load import load_spec
from hepc.store.objects import Store
from hepc.wording import count, shorten

TINY = (ROOT / "tests" / "fixtures" / "tiny.yaml").read_text().replace("trajectories: 2", "trajectories: 1")
SWEEP = "sweep:\n  population.epochs_per_cycle: [1, 0.5]\n"
LABELS = ("epochs_per_cycle=1", "epochs_per_cycle=0.5")
ONE_PLURAL = re.compile(r"(?<![\d.,])1 (epochs|members|steps|snapshots|points|budgets|populations|cycles|parameters)\b")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """(folder, store): `sweep.yaml` (the tiny spec, P = 1, swept over E) run into `store`, and
    `base.yaml`, the same spec without the sweep (its keys are the E = 1 variant's)."""
    folder = tmp_path_factory.mktemp("swept")
    (folder / "base.yaml").write_text(TINY)
    (folder / "sweep.yaml").write_text(TINY + SWEEP)
    store = folder / "store"
    hepc("run", str(folder / "sweep.yaml"), "--quiet", store=store)
    return folder, store


# ------------------------------------------------------------------ sweeps: labels and step names


def test_sweep_results_show_each_variant_label(swept):
    folder, store = swept
    out = hepc("results", str(folder / "sweep.yaml"), store=store).stdout
    for label in LABELS:  # rich must not swallow `[epochs_per_cycle=1]` as markup
        assert f"tiny [{label}]: ensembles" in out
        assert f"tiny [{label}]: loss vs budget" in out
    headers = [line for line in out.splitlines() if ": ensembles (" in line]
    assert len(headers) == 2 and len(set(headers)) == 2


def test_sweep_steps_are_named_with_their_variant_and_keep_their_keys(swept):
    folder, store = swept
    compiled = compile_spec(load_spec(folder / "sweep.yaml"))
    names = [(s.kind, s.name) for s in compiled.graph]
    assert len(names) == len(set(names))  # no `cycle t1-c001` twice
    cycles = sorted(s.name for s in compiled.graph if s.kind == "cycle")
    assert cycles == sorted(f"{label}-t1-c00{c}" for label in LABELS for c in (1, 2))
    corpus = [s.name for s in compiled.graph if s.kind == "corpus"]
    assert corpus == ["synthetic-bytes"]  # a step every variant shares keeps its plain name
    # names are display only: the sweep's keys are exactly those of its variants compiled alone
    alone = set()
    for e in ("1", "0.5"):
        alone |= set(compile_spec(load_spec(folder / "base.yaml", [f"population.epochs_per_cycle={e}"])).graph.steps)
    assert set(compiled.graph.steps) == alone
    # what the run recorded (progress, leases and records use the same names): every cycle once
    (run,) = executed(store)
    assert sorted(n for n in run if n.startswith("cycle:")) == [f"cycle:{n}" for n in cycles]
    plan = hepc("plan", str(folder / "sweep.yaml"), store=store).stdout
    assert "cycle  epochs_per_cycle=0.5-t1-c002" in plan


# ------------------------------------------------------------------ the curve `hepc results` promises


def test_results_prints_the_loss_curve(swept):
    folder, store = swept
    res = json.loads(hepc("results", str(folder / "base.yaml"), "--json", store=store).stdout)
    out = hepc("results", str(folder / "base.yaml"), store=store).stdout
    assert "loss vs budget" in out and "K=all (headline)" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 4}
    budgets = sorted({p["budget_epochs"] for p in res["curve"]})
    assert budgets == [1, 2]
    for p in res["curve"]:
        row = rows[f"{p['budget_epochs']:g}"]  # one row per budget, every K's val loss in it
        assert f"{p['val_loss']:.4f}" in row and f" {p['members']} " in row


# ------------------------------------------------------------------ cut messages


def test_shorten_cuts_at_a_word_with_an_ellipsis():
    text = "RuntimeError: loss became nan at step 1234 after 5678.901234 tokens of training"
    short = shorten(text, 50)
    assert len(short) <= 50 and short.endswith("…")
    assert text.startswith(short[:-1]) and text[len(short) - 1] == " "  # cut where a word ends
    assert shorten("short message", 50) == "short message"
    assert shorten("x" * 80, 10) == "x" * 9 + "…"


def test_plan_shows_a_failure_cut_at_a_word(swept, tmp_path):
    folder, _ = swept
    store = Store(tmp_path / "store")
    store.open_for_writing()
    compiled = compile_spec(load_spec(folder / "base.yaml"))
    cycle = next(s for s in compiled.graph if s.kind == "cycle")
    message = "RuntimeError: " + " ".join(f"value {i * 1234.56789:.5f} out of range" for i in range(12))
    store.mark_failed(cycle, message)
    out = hepc("plan", str(folder / "base.yaml"), store=tmp_path / "store").stdout
    (line,) = [line for line in out.splitlines() if line.startswith("! failed")]
    detail = line[line.index("(RuntimeError") + 1 : -1]
    assert detail.endswith("…") and message.startswith(detail[:-1]) and message[len(detail) - 1] == " "


# ------------------------------------------------------------------ one sign convention, overrides per spec


def test_compare_gap_is_candidate_minus_baseline_and_says_so(swept):
    folder, store = swept
    base = str(folder / "base.yaml")
    args = ("compare", base, base, "population.epochs_per_cycle=0.5")
    result = json.loads(hepc(*args, "--json", store=store).stdout)
    assert [f["spec"] for f in result["finals"]] == ["tiny", "tiny (population.epochs_per_cycle=0.5)"]
    assert result["comparisons"][0]["candidate"] == "tiny (population.epochs_per_cycle=0.5)"
    gap = result["comparisons"][0]["loss_gap_at_equal_budget"]["at_largest_common_budget"]
    assert gap["gap"] == pytest.approx(gap["candidate_loss"] - gap["reference_loss"])
    assert gap["budget"] == 1 and gap["candidate_loss"] != gap["reference_loss"]
    table = hepc(*args, store=store).stdout
    assert "negative = better" in table and "candidate loss − baseline loss" in table
    assert f"{gap['gap']:+.4f} @ 1" in table
    # the same override written onto the spec, and the results table's caption
    assert json.loads(hepc("compare", base, f"{base}::population.epochs_per_cycle=0.5", "--json", store=store).stdout) == result
    assert "negative = better" in hepc("results", base, store=store).stdout


def test_report_takes_overrides_and_states_the_sign(swept, tmp_path):
    folder, store = swept
    base = str(folder / "base.yaml")
    hepc("report", base, base, "population.epochs_per_cycle=0.5", "--out", str(tmp_path / "r"), store=store)
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Gap = candidate loss − reference loss" in html and "negative = better" in html
    assert "tiny (population.epochs_per_cycle=0.5)" in html
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    gap = summary["comparisons"][0]["loss_gap_at_equal_budget"]["at_largest_common_budget"]
    assert gap["gap"] == pytest.approx(gap["candidate_loss"] - gap["reference_loss"])


def test_diff_takes_overrides_per_spec(swept):
    folder, store = swept
    base = str(folder / "base.yaml")
    out = hepc("diff", base, base, "population.cycles=3", store=store).stdout
    assert out.splitlines()[0] == "~ population.cycles: 2 → 3"
    assert "B needs 1 epoch of training A does not have; A has 0 epochs B does not use" in out
    same = hepc("diff", f"{base}::population.cycles=3", base, "--json", store=store).stdout
    assert json.loads(same)["changed"] == [{"field": "population.cycles", "old": 3, "new": 2}]
    bad = hepc("diff", "population.cycles=3", base, base, store=store, check=False)
    assert bad.returncode == 2 and "follows the spec it applies to" in bad.stderr and not bad.stdout
    bad = hepc("diff", base, store=store, check=False)
    assert bad.returncode == 2 and "two specs" in bad.stderr


# ------------------------------------------------------------------ --help and plurals


@pytest.mark.parametrize("command", [c.name or c.callback.__name__ for c in app.registered_commands])
def test_help_shows_flags_as_flags(command):
    out = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert out.exit_code == 0 and "--help" in out.output
    assert "<bool>" not in out.output


def test_count_is_singular_exactly_for_one():
    assert count(1, "epoch") == "1 epoch" and count(1.0, "epoch") == "1 epoch"
    assert count(0.5, "epoch") == "0.5 epochs" and count(2.0, "epoch") == "2 epochs"
    assert count(12800, "token") == "12,800 tokens" and count(0, "step") == "0 steps"


def test_no_count_of_one_with_a_plural_noun(swept, tmp_path):
    folder, store = swept
    one = folder / "one.yaml"
    one.write_text(TINY.replace("cycles: 2", "cycles: 1").replace("budgets: [1, 2, all]", "budgets: [1, all]"))
    outs = [
        hepc("validate", str(one), store=store).stdout,
        hepc("plan", str(folder / "base.yaml"), store=store).stdout,
        hepc("results", str(folder / "sweep.yaml"), store=store).stdout,  # E = 0.5: a budget of 1 epoch
        hepc("diff", str(folder / "base.yaml"), str(one), store=store).stdout,
    ]
    assert "1 snapshot, 1 epoch," in outs[0]
    assert "  1 epoch" in outs[1] and "budget 1 epoch:" in outs[2]
    for out in outs:
        assert not ONE_PLURAL.search(out), ONE_PLURAL.search(out)


# ------------------------------------------------------------------ hepc new --data, and the header's S


def _text_spec(folder: Path) -> Path:
    data = folder / "corpus"
    data.mkdir()
    for i in range(3):
        (data / f"f{i}.txt").write_text("\n%\n".join(f"entry {i}.{j}: " + "words " * 20 for j in range(60)))
    spec = folder / "text.yaml"
    spec.write_text(
        "version: 1\nname: text\ndata:\n"
        "  source: {kind: text, paths: ['corpus/*.txt'], documents: {separator: '%'}}\n"
        "  train_tokens: 20000\n  val_tokens: 4000\n  heldout_tokens: 2000\n  seq_len: 64\n"
        "model: {n_layer: 1, d_model: 32, n_head: 2}\noptimizer: {lr: 0.003, batch_tokens: 512}\n"
        "population: {trajectories: 1, cycles: 2, epochs_per_cycle: 1, schedule: {kind: cyclic}}\n"
        "prior: {kind: learned, budgets: [1, all]}\n"
    )
    return spec


def _corpus_key(path: Path) -> str:
    compiled = compile_spec(load_spec(path), strict_data=True)
    return compiled.graph[compiled.populations[0].corpus_key].key


def test_new_copies_the_data_section_of_a_spec(tmp_path):
    spec = _text_spec(tmp_path)
    runner = CliRunner()
    here = tmp_path / "new.yaml"
    res = runner.invoke(app, ["new", "--budget", "8", "--saturation", "4", "--data", str(spec), "--out", str(here)])
    assert res.exit_code == 0, res.output
    assert load_spec(here).spec.data == load_spec(spec).spec.data
    assert _corpus_key(here) == _corpus_key(spec)  # the same corpus: it reuses the stored one
    # written elsewhere, relative paths are rebased so that the same files are read
    (tmp_path / "elsewhere").mkdir()
    there = tmp_path / "elsewhere" / "new.yaml"
    res = runner.invoke(app, ["new", "--budget", "8", "--saturation", "4", "--data", str(spec), "--out", str(there)])
    assert res.exit_code == 0, res.output
    assert load_spec(there).spec.data.source.paths == ["../corpus/*.txt"]
    assert hepc("validate", str(there), store=tmp_path / "s").returncode == 0
    text = there.read_text()
    assert "S = 4 epochs, as given by --saturation" in text and f"copied from {spec}" in text
    assert "2.088" not in text and "S = 16" not in text  # no measurement of other data quoted


def test_new_header_states_the_saturation_it_was_given():
    runner = CliRunner()
    default = runner.invoke(app, ["new", "--budget", "64"]).output
    assert "Here S = 16 epochs: the single-model saturation point measured" in default
    given = runner.invoke(app, ["new", "--budget", "64", "--saturation", "8"]).output
    assert "Here S = 8 epochs, as given by --saturation" in given and "Here S = 16" not in given
    assert "P·C·E = 1·64·1 = 64 epochs" in given  # E = S/8 follows the S it states


def test_new_writes_nothing_on_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\n")
    out = tmp_path / "new.yaml"
    res = hepc("new", "--budget", "8", "--data", str(bad), "--out", str(out), store=tmp_path / "s", check=False)
    assert res.returncode == 2 and "bad.yaml" in res.stderr and "data" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_schema_carries_every_field_docstring():
    """`hepc schema` describes each field with its docstring (read from the models' source by
    hepc/spec/schema.py, since the models themselves no longer parse it on import)."""
    import ast
    import inspect

    from hepc.spec import models
    from hepc.spec.schema import spec_schema

    schema = spec_schema()
    definitions = {"Spec": schema, **schema["$defs"]}
    documented = 0
    for node in ast.parse(inspect.getsource(models)).body:
        if not isinstance(node, ast.ClassDef) or node.name not in definitions:
            continue
        for stmt, after in zip(node.body, node.body[1:]):
            if isinstance(stmt, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                field = definitions[node.name]["properties"][stmt.target.id]
                assert field["description"] == inspect.cleandoc(after.value.value), (node.name, stmt.target.id)
                documented += 1
    assert documented > 50
    assert "use_attribute_docstrings" not in str(models.Strict.model_config)


def test_results_from_another_folder_name_the_store_read_and_the_one_that_holds_them(tmp_path):
    """`hepc results sub/spec.yaml` from elsewhere reads ./runs of the folder it runs in: say which store
    that was, and name the store beside the spec that holds the results, rather than invite a retrain."""
    import shutil as _shutil

    from cli_helpers import TINY, tiny_store

    store, _ = tiny_store(tmp_path)
    (tmp_path / "sub").mkdir()
    _shutil.move(str(store), tmp_path / "sub" / "runs")
    _shutil.copy(TINY, tmp_path / "sub" / "spec.yaml")
    env_store = tmp_path / "elsewhere" / "runs"
    out = hepc("results", "sub/spec.yaml", "--store", str(env_store), store=env_store, check=False, cwd=tmp_path)
    assert out.returncode == 2
    assert f"in store {env_store} (no store there)" in out.stderr
    assert f"store {tmp_path / 'sub' / 'runs'} holds them: add `--store {tmp_path / 'sub' / 'runs'}`" in out.stderr
    assert hepc("results", "sub/spec.yaml", "--store", str(tmp_path / "sub" / "runs"), store=env_store, cwd=tmp_path).returncode == 0
