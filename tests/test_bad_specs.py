"""A corpus of malformed specs: each gives one located `error:` line per problem, exit 2, no traceback,
and nothing in the store.

Every file in tests/bad_specs/ is a small variation of tests/fixtures/tiny.yaml and declares what it
expects in its leading comments:

    # expect: <dotted.path>[@LINE|@file] | <substring of the message>     (one line per problem)
    # command: run                                                         (optional; default validate)

`@LINE` pins the reported line (the line where the offending key or value is); `@file` says the
problem concerns the whole file, so the location is the bare file name with no line:col. Without a
suffix any `file:LINE:COL` location is accepted. An empty path means the message carries no dotted
path (YAML syntax errors, a non-mapping document).

`validate` cases run in-process through Typer's CliRunner (fast); `run` and `plan` cases, and a
sample of `validate` cases, run in a real subprocess (`python -m hepc.cli`) so that exit codes,
stderr and tracebacks are the real thing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BAD = ROOT / "tests" / "bad_specs"
TINY = "tests/fixtures/tiny.yaml"
SPECS = sorted(BAD.glob("*.yaml"))
COMMANDS = ("validate", "plan", "run")
# validate cases that also run through a real subprocess (one per kind of location).
SUBPROCESS_SAMPLE = {"yaml_tab_indent", "empty_file", "multi_three_problems", "size_heldout_ge_train", "bad_encoding"}

EXPECT_RE = re.compile(r"^#\s*expect:\s*(?P<path>[^@|]*?)\s*(?:@(?P<at>\d+|file))?\s*\|\s*(?P<substr>.+?)\s*$")
COMMAND_RE = re.compile(r"^#\s*command:\s*(?P<command>\S+)\s*$")


@dataclass(frozen=True)
class Expect:
    path: str
    at: int | str | None  # line number, "file", or None (any file:line:col)
    substr: str


@dataclass(frozen=True)
class Case:
    file: Path
    command: str
    expects: tuple[Expect, ...]

    @property
    def rel(self) -> str:
        return self.file.relative_to(ROOT).as_posix()


def parse_case(file: Path) -> Case:
    # Read bytes: one corpus file is deliberately not UTF-8.
    text = file.read_bytes().decode("utf-8", "replace")
    expects, command = [], "validate"
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if m := EXPECT_RE.match(line):
            at = m["at"]
            expects.append(Expect(m["path"].strip(), int(at) if at and at.isdigit() else at, m["substr"]))
        elif line.lstrip("# ").startswith("expect"):
            raise ValueError(f"{file.name}: malformed expect line {line!r}")
        elif m := COMMAND_RE.match(line):
            command = m["command"]
    return Case(file, command, tuple(expects))


CASES = [parse_case(f) for f in SPECS]


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    def show(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


def run_subprocess(args: list[str], store: Path) -> Outcome:
    env = {**os.environ, "HEPC_STORE": str(store), "PYTHONDONTWRITEBYTECODE": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "hepc.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    return Outcome(p.returncode, p.stdout, p.stderr)


def run_in_process(args: list[str], store: Path, monkeypatch) -> Outcome:
    from typer.testing import CliRunner

    from hepc.cli.main import app

    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, args, env={"HEPC_STORE": str(store)})
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        stderr += "Traceback (in process):\n" + "".join(traceback.format_exception(result.exception))
    return Outcome(result.exit_code, result.stdout, stderr)


def invoke(command: str, spec: str, store: Path, monkeypatch, *, subprocess_: bool, extra=()) -> Outcome:
    args = [command, spec, *extra]
    if command in ("plan", "run"):
        args += ["--store", str(store)]
    if subprocess_:
        return run_subprocess(args, store)
    return run_in_process(args, store, monkeypatch)


def assert_store_untouched(store: Path) -> None:
    written = sorted(str(p.relative_to(store)) for p in store.rglob("*")) if store.exists() else []
    assert not written, f"the store was written to: {written}"


def location_re(rel: str, at) -> str:
    if at == "file":
        return re.escape(rel)
    line = str(at) if isinstance(at, int) else r"\d+"
    return rf"{re.escape(rel)}:{line}:\d+"


def matches(line: str, case: Case, e: Expect) -> bool:
    head = rf"^error: {location_re(case.rel, e.at)}: "
    if e.path:
        head += rf"{re.escape(e.path)}: "
    m = re.match(head, line)
    return bool(m) and e.substr in line[m.end():]


# --------------------------------------------------------------------------- the corpus


def test_corpus_is_big_enough_and_well_formed():
    assert len(CASES) >= 25, f"only {len(CASES)} bad specs"
    for case in CASES:
        assert case.expects, f"{case.file.name}: no '# expect:' line"
        assert case.command in COMMANDS, f"{case.file.name}: unknown command {case.command!r}"
    # The corpus covers every command that reads a spec and several problems in one file.
    assert {c.command for c in CASES} == set(COMMANDS)
    assert any(len(c.expects) >= 3 for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.file.stem for c in CASES])
def test_bad_spec(case: Case, tmp_path, monkeypatch):
    store = tmp_path / "store"
    use_subprocess = case.command != "validate" or case.file.stem in SUBPROCESS_SAMPLE
    out = invoke(case.command, case.rel, store, monkeypatch, subprocess_=use_subprocess)
    shown = out.show()

    assert "Traceback" not in out.stdout + out.stderr, shown
    assert out.code == 2, shown
    assert out.stdout.strip() == "", "a failing command must print nothing on stdout\n" + shown
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert all(ln.startswith("error: ") for ln in lines), "stderr holds only error lines\n" + shown
    assert len(lines) == len(case.expects), f"expected {len(case.expects)} error line(s)\n" + shown

    unmatched = list(lines)
    for e in case.expects:
        hit = next((ln for ln in unmatched if matches(ln, case, e)), None)
        assert hit is not None, (
            f"no error line at {location_re(case.rel, e.at)} for path {e.path!r} containing {e.substr!r}\n" + shown
        )
        unmatched.remove(hit)

    assert_store_untouched(store)


# --------------------------------------------------------------------------- overrides


def test_override_out_of_range_names_the_override(tmp_path):
    out = run_subprocess(["validate", TINY, "population.cycles=0"], tmp_path / "store")
    assert out.code == 2 and "Traceback" not in out.stderr, out.show()
    lines = out.stderr.strip().splitlines()
    assert lines == ["error: override 'population.cycles=0': population.cycles: must be >= 1 (got 0)"], out.show()


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["population.cycles"], ["override 'population.cycles'", "expected key=value"]),
        (["population.cyclez=3"], ["override 'population.cyclez=3'", "population.cyclez: unknown key"]),
        (["name.first=x"], ["override 'name.first=x'", "name: is not a mapping"]),
        (["prior.budgets=[1,"], ["override 'prior.budgets=[1,'", "YAML syntax error"]),
        (["=3"], ["override '=3'", "invalid key"]),
        (["prior.budgets=[5]"], ["override 'prior.budgets=[5]'", "prior.budgets[0]: K = 5 is larger than the population"]),
        (["model.n_head=3"], ["override 'model.n_head=3'", "model.n_head: must divide model.d_model"]),
    ],
    ids=["no-equals", "unknown-key", "into-scalar", "bad-yaml", "empty-key", "budget-too-large", "inconsistent"],
)
def test_bad_override(overrides, expected, tmp_path, monkeypatch):
    store = tmp_path / "store"
    out = invoke("validate", TINY, store, monkeypatch, subprocess_=False, extra=overrides)
    assert out.code == 2 and "Traceback" not in out.stdout + out.stderr, out.show()
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.show()
    for part in expected:
        assert part in lines[0], out.show()
    assert_store_untouched(store)


def test_two_bad_overrides_give_two_messages(tmp_path, monkeypatch):
    out = invoke(
        "validate", TINY, tmp_path / "store", monkeypatch, subprocess_=False, extra=["population.cycles", "seed"]
    )
    assert out.code == 2, out.show()
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2, out.show()
    assert "override 'population.cycles'" in lines[0] and "override 'seed'" in lines[1], out.show()


def test_valid_budget_override(tmp_path, monkeypatch):
    out = invoke("validate", TINY, tmp_path / "store", monkeypatch, subprocess_=False, extra=["prior.budgets=[1,4,all]"])
    assert out.code == 0, out.show()
    assert f"{TINY}: ok" in out.stdout, out.show()


def test_bad_override_through_run_writes_nothing(tmp_path):
    store = tmp_path / "store"
    out = run_subprocess(["run", TINY, "population.cycles=0", "--store", str(store)], store)
    assert out.code == 2 and "Traceback" not in out.stderr, out.show()
    assert out.stderr.strip() == "error: override 'population.cycles=0': population.cycles: must be >= 1 (got 0)"
    assert_store_untouched(store)


# --------------------------------------------------------------------------- other paths into the loader


@pytest.mark.parametrize(
    "spec, message",
    [("tests/bad_specs/no_such_spec.yaml", "spec file not found"), ("tests/bad_specs", "is a directory")],
    ids=["missing", "directory"],
)
def test_unreadable_spec_path(spec, message, tmp_path):
    store = tmp_path / "store"
    out = run_subprocess(["run", spec, "--store", str(store)], store)
    assert out.code == 2 and "Traceback" not in out.stderr, out.show()
    assert out.stderr.strip().startswith(f"error: {spec}: {message}"), out.show()
    assert len(out.stderr.strip().splitlines()) == 1, out.show()
    assert_store_untouched(store)


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_missing_data_is_an_error_unless_it_lives_elsewhere(command, tmp_path, monkeypatch):
    """validate/plan check the data like run does (exit 2, located); with --data-elsewhere (the data lives
    on another machine) they only warn and exit 0, so such specs can still be planned."""
    spec = "tests/bad_specs/data_missing_file.yaml"
    out = invoke(command, spec, tmp_path / "store", monkeypatch, subprocess_=False)
    assert out.code == 2, out.show()
    assert re.match(rf"error: {re.escape(spec)}:8:\d+: data.source.paths\[0\]: file not found", out.stderr), out.show()
    out = invoke(command, spec, tmp_path / "store", monkeypatch, subprocess_=False, extra=["--data-elsewhere"])
    assert out.code == 0, out.show()
    assert "warning: data not available here" in out.stderr and "file not found" in out.stderr, out.show()


def test_a_spec_can_say_its_data_lives_elsewhere(tmp_path, monkeypatch):
    """runtime.data_elsewhere (specs/paper-1.8b.yaml's shards live on the GPU machines): validate and
    plan warn where the data is missing, as --data-elsewhere does; run still refuses, writing nothing."""
    paper = "specs/paper-1.8b.yaml"
    for command in ("validate", "plan"):
        out = invoke(command, paper, tmp_path / "store", monkeypatch, subprocess_=False)
        assert out.code == 0, out.show()
        assert "warning: data not available here: data.source.paths[0]" in out.stderr, out.show()
    spec = tmp_path / "elsewhere.yaml"
    text = (BAD / "data_missing_file.yaml").read_text().replace("no_such_file.txt", str(tmp_path / "no_such_file.txt"))
    spec.write_text(text.replace("runtime: {", "runtime: {data_elsewhere: true, "))
    out = invoke("validate", str(spec), tmp_path / "store", monkeypatch, subprocess_=False)
    assert out.code == 0 and "warning: data not available here" in out.stderr, out.show()
    out = invoke("run", str(spec), tmp_path / "store", monkeypatch, subprocess_=False)
    assert out.code == 2 and re.match(rf"error: {re.escape(str(spec))}:\d+:\d+: data.source.paths\[0\]: file not found",
                                      out.stderr), out.show()
    assert_store_untouched(tmp_path / "store")


@pytest.mark.parametrize("variant", ["top-level", "anchor"])
def test_yaml_merge_keys_never_crash(variant, tmp_path):
    """`<<` merge keys are either supported (exit 0) or a located error (exit 2), never a traceback."""
    tiny = (ROOT / TINY).read_text()
    if variant == "top-level":
        text = tiny.replace("seed: 0\n", "<<: {seed: 1}\n", 1)
    else:
        text = tiny.replace(
            "model: {n_layer: 1, d_model: 32, n_head: 2, dropout: 0.1}",
            "model: &m {n_layer: 1, d_model: 32, n_head: 2, dropout: 0.1}",
        ).replace("runtime: {", "runtime: {<<: *m, ")
    spec = tmp_path / "merge.yaml"
    spec.write_text(text)
    store = tmp_path / "store"
    out = run_subprocess(["validate", str(spec)], store)
    assert "Traceback" not in out.stderr, out.show()
    assert out.code in (0, 2), out.show()
    if out.code == 2:
        assert all(ln.startswith(f"error: {spec}") for ln in out.stderr.strip().splitlines()), out.show()
    assert_store_untouched(store)


# --------------------------------------------------------------------------- no torch for validate


def test_validate_never_imports_torch():
    code = textwrap.dedent(
        f"""
        import sys
        from hepc.compile.compiler import compile_spec
        from hepc.errors import SpecError
        from hepc.spec.load import load_spec
        compiled = compile_spec(load_spec({TINY!r}))
        assert compiled.populations[0].totals["members"] == 4
        try:
            load_spec("tests/bad_specs/multi_three_problems.yaml")
        except SpecError as e:
            assert len(e.problems) == 3
        else:
            raise AssertionError("multi_three_problems.yaml validated")
        from hepc.cli.main import app
        try:
            app(["validate", {TINY!r}])
        except SystemExit as e:
            assert e.code in (0, None), e.code
        try:
            app(["validate", "tests/bad_specs/range_cycles_zero.yaml"])
        except SystemExit as e:
            assert e.code == 2, e.code
        loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        print("TORCH", loaded)
        """
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "TORCH []" in p.stdout, p.stdout + p.stderr
