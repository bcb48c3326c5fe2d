"""Hostile input: malformed and adversarial specs and overrides (property-based, hypothesis).

Whatever the input, hepc never prints a traceback, exits 0 (a valid spec) or 2 with one located
`error: <file>:<line>:<col>: …` (or `error: override '…': …`) line per problem, and writes nothing.
YAML tags construct nothing, alias bombs and deep nesting are refused quickly, no name taken from a
spec can lead outside the store, checkpoints load without unpickling code, templates are sandboxed.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from ruamel.yaml import YAML
from typer.testing import CliRunner

from hepc.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny.yaml"
TINY_DATA = YAML(typ="safe").load(TINY.read_text())
# Examples per property: 50 in the default run (fresh random ones on every run, so commits add up to
# thousands); HEPC_HOSTILE_EXAMPLES=1000 for a thorough pass before a release.
EXAMPLES = int(os.environ.get("HEPC_HOSTILE_EXAMPLES", "50"))
# A failure prints the `@reproduce_failure(...)` line that replays it, and the failing examples are kept in
# .hypothesis/ (git-ignored), so the next run on the same machine tries them first.
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=DirectoryBasedExampleDatabase(str(ROOT / ".hypothesis" / "examples")),
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FEWER = settings(SETTINGS, max_examples=max(1, EXAMPLES // 2))

# --------------------------------------------------------------------------- the oracle


def check_cli(workdir: Path, spec_text: str | bytes, overrides=(), commands=("validate", "plan", "run")) -> int:
    """Write the spec into an empty folder, run hepc commands on it in-process, check the contract."""
    for old in workdir.iterdir():
        if old.is_dir():
            import shutil

            shutil.rmtree(old)
        else:
            old.unlink()
    spec = workdir / "spec.yaml"
    spec.write_bytes(spec_text if isinstance(spec_text, bytes) else spec_text.encode("utf-8", "surrogatepass"))
    store = workdir / "store"
    runner = CliRunner()
    codes = []
    for command in commands:
        if command == "run" and codes and codes[0] == 0:
            continue  # a valid spec would train; `validate` already accepted it
        cwd = os.getcwd()
        os.chdir(workdir)
        try:
            args = [command, str(spec), *(["--", *overrides] if overrides else [])]  # `--`: "-x" is an override too
            result = runner.invoke(app, args, env={"HEPC_STORE": str(store)})
        finally:
            os.chdir(cwd)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"{command} raised {type(result.exception).__name__}: {result.exception}\n{spec_text!r}"
        )
        assert "Traceback" not in result.stdout + result.stderr
        assert result.exit_code in (0, 2), (command, result.exit_code, result.stderr, spec_text)
        if result.exit_code == 2:
            # One message per problem; a message may carry a raw control character or newline that
            # came from a key in the input, so split only where the next message starts.
            messages = re.split(r"\n(?=error: |warning: )", result.stderr.strip("\n"))
            lines = [m for m in messages if m and not m.startswith("warning:")]
            assert lines, f"{command}: exit 2 without a message"
            for line in lines:
                located = line.startswith(f"error: {spec}") or line.startswith("error: override '")
                assert located, f"{command}: unlocated message {line!r}"
        assert sorted(p.name for p in workdir.iterdir()) == ["spec.yaml"], f"{command} wrote something"
        codes.append(result.exit_code)
    return codes[0]


def dump(data) -> str:
    return json.dumps(data, ensure_ascii=False)  # JSON is YAML (1.2)


# --------------------------------------------------------------------------- strategies

huge = st.sampled_from([10**30, -(10**30), 2**63, 2**64 + 1, 1e308, -1e308, 1e-320, 0, -1, 2**31])
weird_text = st.sampled_from(
    ["", " ", "../../etc/passwd", "/etc/passwd", "a/b", "..", ".", "x" * 500, "\u202e\u0000", "名前", "😀",
     "${HOME}", "$(touch pwned)", "`id`", "C:\\Windows", "~root", "%s%n", "{{ 7*7 }}", "\\\\server\\share"]
)
scalars = st.none() | st.booleans() | st.integers() | huge | st.floats(allow_nan=False) | st.text(max_size=40) | weird_text
structures = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12) | weird_text, inner, max_size=4),
    max_leaves=25,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))


TINY_PATHS = [p for p in _paths(TINY_DATA) if p]


@st.composite
def mutated_tiny(draw):
    data = copy.deepcopy(TINY_DATA)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(TINY_PATHS))
        parent = data
        for part in path[:-1]:
            if not isinstance(parent, dict) or part not in parent:
                break
            parent = parent[part]
        else:
            if not isinstance(parent, dict):
                continue
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                parent[path[-1]] = draw(structures)
            elif action == "delete":
                parent.pop(path[-1], None)
            else:
                parent[draw(st.text(min_size=1, max_size=10) | weird_text)] = draw(scalars)
    if draw(st.booleans()):  # a sweep: its values end up in step names (prior/curve labels)
        key = ".".join(draw(st.sampled_from(TINY_PATHS)))
        data["sweep"] = {key: draw(st.lists(scalars | weird_text, min_size=1, max_size=3))}
    return dump(data)


def _bomb(depth: int, width: int) -> str:
    lines = ["version: 1", "name: bomb", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, depth):
        refs = ", ".join([f"*a{i - 1}"] * width)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


YAML_ATTACKS = st.one_of(
    st.builds(lambda d, w: _bomb(d, w), st.integers(2, 12), st.integers(2, 12)),
    st.builds(lambda n: "a: " + "[" * n + "]" * n + "\n", st.integers(1, 3000)),
    st.builds(lambda n: "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, n)) + "  " * n + "v\n", st.integers(1, 300)),
    st.sampled_from([
        "version: 1\nname: !!python/object/apply:os.system ['touch pwned']\n",
        "!!python/object/new:os.system ['touch pwned']\n",
        "version: 1\nname: !!binary aGVsbG8=\n",
        "version: 1\nname: !!set {a, b}\n",
        "version: 1\nname: !!omap [a: 1]\n",
        "version: 1\nname: !custom x\n",
        "%YAML 1.1\n---\nversion: 1\nname: yes\n",
        "%TAG !e! tag:example.com,2000:\n---\nversion: !e!int 1\n",
        "version: 1\n---\nversion: 2\n",
        "version: 1\nname: x\n<<: {seed: 3}\n",
        "base: &b {n_layer: 1}\nmodel: {<<: *b, d_model: 8}\n",
        "? [complex, key]\n: 1\n",
        "version: 1\nversion: 1\n",
        "version: 1\nname: 2001-12-14t21:59:43.10-05:00\n",
        "version: 1\nseed: 0x7fffffffffffffffffffffff\n",
        "version: 1\nseed: " + "9" * 5000 + "\n",
        "version: 1\nseed: .inf\n",
        "version: 1\nseed: .nan\n",
        "\ufeffversion: 1\n",
        "version: 1\n\tname: tab\n",
        "*undefined_alias\n",
        "&a [*a]\n",
        "name: \"\\ud800\"\n",
    ]),
)

override_keys = st.sampled_from([".".join(p) for p in TINY_PATHS]) | st.text(max_size=20) | weird_text
overrides = st.lists(
    st.builds(lambda k, v: f"{k}={v}", override_keys, st.text(max_size=30) | st.sampled_from(
        ["[", "{a: 1}", "!!python/name:os.system", "*a", "&a [*a, *a]", "1e999", "null", "[1, all]", "9" * 5000]
    )) | st.text(max_size=30),
    max_size=3,
)


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(text=st.text(max_size=300))
def test_arbitrary_text(tmp_path, text):
    check_cli(tmp_path, text, commands=("validate", "run"))


@SETTINGS
@given(data=structures)
def test_arbitrary_structures(tmp_path, data):
    check_cli(tmp_path, dump(data), commands=("validate", "run"))


@SETTINGS
@given(text=mutated_tiny())
def test_mutated_specs(tmp_path, text):
    check_cli(tmp_path, text)


@FEWER
@given(text=YAML_ATTACKS)
def test_yaml_attacks(tmp_path, text):
    t0 = time.monotonic()
    assert check_cli(tmp_path, text, commands=("validate", "run")) == 2
    assert time.monotonic() - t0 < 10  # bounded: no alias or nesting blow-up


@FEWER
@given(ovr=overrides)
def test_arbitrary_overrides(tmp_path, ovr):
    check_cli(tmp_path, TINY.read_text(), overrides=ovr, commands=("validate", "plan"))


def test_undecodable_bytes(tmp_path):
    assert check_cli(tmp_path, b"version: 1\nname: \xff\xfe\x00bad\n") == 2


# --------------------------------------------------------------------------- the real entry point


@pytest.mark.parametrize(
    "text",
    [
        _bomb(10, 10),
        "a: " + "[" * 20000 + "]" * 20000 + "\n",
        "version: 1\nname: !!python/object/apply:os.system ['touch pwned']\n",
        "version: 1\nseed: " + "9" * 5000 + "\n",
        TINY.read_text().replace("name: tiny", "name: ../../escape"),
    ],
    ids=["billion-laughs", "deep-nesting", "python-tag", "huge-int", "name-traversal"],
)
def test_real_cli_never_tracebacks(tmp_path, text):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    env = {**os.environ, "HEPC_STORE": str(tmp_path / "store")}
    out = subprocess.run([sys.executable, "-m", "hepc.cli", "run", str(spec)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.startswith(f"error: {spec}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


# --------------------------------------------------------------------------- names and paths


@pytest.mark.parametrize("name", ["../x", "..", ".", "a/b", "/abs", "a\\b", ".hidden", "x" * 65, "", "a\x00b", "é"])
def test_spec_names_cannot_leave_the_records_folder(tmp_path, name):
    text = TINY.read_text().replace("name: tiny", f"name: {json.dumps(name)}")
    assert check_cli(tmp_path, text, commands=("validate",)) == 2


@SETTINGS
@given(text=mutated_tiny())
def test_every_store_path_derived_from_a_spec_stays_in_the_store(tmp_path, text):
    from hepc.compile.compiler import compile_spec
    from hepc.errors import HepcError
    from hepc.spec.load import load_spec
    from hepc.store.layout import safe_component
    from hepc.store.objects import Store

    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    try:
        loaded = load_spec(spec)
        compiled = compile_spec(loaded)
    except HepcError:
        return
    store = Store(tmp_path / "store")
    root = store.root.resolve()
    for step in compiled.graph:
        for path in (store.objects / step.kind / safe_component(step.dirname), store.work_dir(step.key),
                     store.lease_path(step.key)):
            assert path.resolve().is_relative_to(root) and path.resolve() != root
    record = (store.root / "records" / safe_component(loaded.spec.name)).resolve()
    assert record.parent == (root / "records")


def test_store_refuses_unsafe_names(tmp_path):
    from hepc.errors import StoreError
    from hepc.store.layout import safe_component
    from hepc.store.objects import Store

    for bad in ("..", ".", "a/b", "../x", "", ".x", "a\x00"):
        with pytest.raises(StoreError):
            safe_component(bad)
    with pytest.raises(StoreError):
        Store(tmp_path).open_record("../evil", {}, {})
    assert not (tmp_path / "evil").exists()


# --------------------------------------------------------------------------- code is never data


def test_checkpoints_never_unpickle_code(tmp_path):
    import torch

    from hepc.train.checkpoint import load_state

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "state.pt"
    torch.save({"optimizer": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_state(path)
    assert not marker.exists()


def test_templates_render_sandboxed():
    """Every jinja2 environment in hepc is a SandboxedEnvironment (templates can be user-supplied)."""
    offenders = []
    for py in (ROOT / "hepc").rglob("*.py"):
        text = py.read_text()
        if "jinja2" in text and ("Environment(" in text) and "SandboxedEnvironment" not in text:
            offenders.append(str(py.relative_to(ROOT)))
    assert offenders == []
