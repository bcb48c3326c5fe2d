"""Files hepc writes outside its store (`hepc report --out DIR`, `hepc new --out FILE`): an existing
target is refused unless --force, --force replaces only what the command writes, a symbolic link at a
target name is replaced and never written through, and a relative --out works."""

from __future__ import annotations

import os

import pytest
from cli_helpers import TINY, hepc, tiny_store
from typer.testing import CliRunner

from hepc.cli.main import app

REPORT = ("report.html", "summary.json", "curves.png")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("user-files"))[0]


def report(store, out, *extra, cwd=None, check=True):
    return hepc("report", TINY, "--out", str(out), *extra, store=store, check=check, cwd=cwd)


def test_a_relative_out_folder_holds_the_report(store, tmp_path):
    report(store, "rep", cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == sorted(REPORT)
    assert (tmp_path / "rep" / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_an_existing_report_is_refused_and_force_replaces_only_the_reports_files(store, tmp_path):
    out = tmp_path / "rep"
    report(store, out)
    before = {name: (out / name).read_bytes() for name in REPORT}
    (out / "notes.txt").write_text("mine")
    (out / "summary.json").write_text("{}")  # an edit the refusal must keep
    again = report(store, out, check=False)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert "exists" in again.stderr and "--force" in again.stderr
    assert (out / "summary.json").read_text() == "{}"  # nothing written
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left
    report(store, out, "--force")
    assert (out / "notes.txt").read_text() == "mine"
    assert {name: (out / name).read_bytes() for name in ("report.html",)} == {"report.html": before["report.html"]}
    assert (out / "summary.json").read_text() != "{}"
    assert sorted(p.name for p in out.iterdir()) == sorted([*REPORT, "notes.txt"])


def test_a_link_at_a_report_name_is_replaced_not_written_through(store, tmp_path):
    outside = tmp_path / "outside.html"
    outside.write_text("not hepc's")
    out = tmp_path / "rep"
    out.mkdir()
    os.symlink(outside, out / "report.html")
    refused = report(store, out, check=False)
    assert refused.returncode == 2 and "report.html exists" in refused.stderr
    report(store, out, "--force")
    assert outside.read_text() == "not hepc's"
    assert not (out / "report.html").is_symlink() and (out / "report.html").stat().st_size > 1000


def test_a_folder_at_a_report_name_is_one_clear_error(store, tmp_path):
    (tmp_path / "rep" / "curves.png").mkdir(parents=True)
    out = report(store, tmp_path / "rep", "--force", check=False)
    assert out.returncode == 2 and "curves.png is a folder" in out.stderr, out.stderr
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["curves.png"]


def test_new_refuses_an_existing_file_unless_forced(tmp_path):
    target = tmp_path / "spec.yaml"
    target.write_text("mine\n")
    runner = CliRunner()
    res = runner.invoke(app, ["new", "--budget", "8", "--out", str(target)])
    assert res.exit_code == 2 and "exists" in res.output and "--force" in res.output
    assert target.read_text() == "mine\n"
    outside = tmp_path / "outside.yaml"
    outside.write_text("not hepc's\n")
    link = tmp_path / "link.yaml"
    os.symlink(outside, link)
    res = runner.invoke(app, ["new", "--budget", "8", "--out", str(link), "--force"])
    assert res.exit_code == 0, res.output
    assert outside.read_text() == "not hepc's\n" and not link.is_symlink()
    assert link.read_text().startswith("# q0 population for a budget of")
    res = runner.invoke(app, ["new", "--budget", "8", "--out", str(target), "--force"])
    assert res.exit_code == 0 and target.read_text().startswith("# q0 population")
