"""One convention on the command line: every command that takes a spec takes `key=value` overrides
right after it (`score` tells its files apart: an override reads key=value and names no file), and
every command treats a missing or empty store folder as a store nothing has run into yet."""

from __future__ import annotations

import shutil

import pytest
from cli_helpers import ROOT, TINY, tiny_store
from typer.testing import CliRunner

from hepc.cli.main import app

SAME = "population.cycles=2"  # the fixture's own value: the same keys, so everything is cached
MORE = "population.cycles=3"  # new keys: nothing trained, and the commands say so with the override


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("ov"))[0]


def call(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output and not isinstance(result.exception, (TypeError, AttributeError)), result.output
    return result.exit_code, result.output


@pytest.mark.parametrize("command", ["plan", "results", "data", "verify", "status", "gc", "run", "report", "compare"])
def test_commands_that_read_a_store_take_overrides_after_the_spec(store, tmp_path, command):
    extra = ["--out", str(tmp_path / "rep")] if command == "report" else []
    code, out = call(command, TINY, SAME, "--store", str(store), *extra)
    assert code == 0, out


def test_validate_and_diff_take_overrides_after_each_spec():
    assert call("validate", TINY, SAME)[0] == 0
    code, out = call("diff", TINY, TINY, MORE)
    assert code == 0 and "population.cycles" in out


@pytest.mark.parametrize("command", [["sample", "--prompt", "ab"], ["export", "--out", "unused"], ["eval", "--tasks", "x"],
                                     ["score", str(ROOT / "README.md")]])
def test_commands_that_use_the_ensemble_take_overrides_after_the_spec(store, command):
    code, out = call(command[0], TINY, MORE, *command[1:], "--store", str(store))
    assert code == 2 and "not trained yet" in out and f"hepc run {TINY} {MORE}" in out  # the override was read


def test_score_tells_files_from_overrides_and_other_commands_refuse_a_stray_argument(store, tmp_path):
    odd = tmp_path / "a=b.txt"  # a file whose name reads like an override is a file
    odd.write_text("some text to score\n")
    code, out = call("score", TINY, SAME, str(odd), "--store", str(store), "--json")
    assert code == 0 and "a=b.txt" in out
    code, out = call("sample", TINY, "bogus", "--prompt", "a", "--store", str(store))
    assert code == 2 and "unexpected argument 'bogus'" in out


def test_a_missing_or_empty_store_is_a_store_holding_nothing(tmp_path):
    for folder in (tmp_path / "missing", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        for command in (["status"], ["verify"], ["gc"], ["gc", "--yes"]):
            code, out = call(*command, "--store", str(folder))
            assert code == 0 and "empty (nothing has run into it yet" in out, (command, out)
    assert not (tmp_path / "missing").exists() and not any((tmp_path / "empty").iterdir())
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert call("gc", "--yes", "--store", str(other))[0] == 2 and (other / "notes.txt").exists()
    shutil.rmtree(other)
