"""Reliability v2, disks and odd store contents: a full disk or a read-only store gives one clear
line and exit 2 with nothing half-written (and a later run resumes), odd files where the store
expects folders (or the reverse) are named, two SIGTERMs still exit 130, and gc's memory is bounded
whatever a record holds. Full and read-only disks are real: a small tmpfs (root only; skipped where
mounting is not allowed)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from cli_helpers import ROOT, TINY, hepc, tiny_store


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("pristine"))


@contextlib.contextmanager
def tmpfs(size: str):
    """A fresh tmpfs of `size` (e.g. '400k'); yields its path and unmounts it even on failure."""
    where = Path(f"/tmp/hepc-tmpfs-{uuid.uuid4().hex[:8]}")
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             check=False, capture_output=True, text=True)
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)
        with contextlib.suppress(OSError):
            where.rmdir()


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True, capture_output=True)


def assert_nothing_half_written(store: Path) -> None:
    assert not list((store / "tmp").iterdir()) if (store / "tmp").is_dir() else True, "staging left behind"
    for kind in (store / "objects").iterdir() if (store / "objects").is_dir() else []:
        for obj in kind.iterdir():
            assert (obj / "manifest.json").is_file(), f"{obj} has no manifest"
    assert not list(store.glob("work/*/failed.json")), "a full disk is not a step failure"
    assert not list(store.glob("work/*/.*tmp*")), "half-written checkpoint left behind"
    for record in store.glob("records/*/*"):
        assert (record / "spec.json").is_file() and (record / "plan.json").is_file(), record


@pytest.mark.parametrize("size", ["60k", "300k", pytest.param("1200k", marks=pytest.mark.slow)])  # the corpus arrays, a checkpoint, a later cycle (slow run)
def test_a_full_disk_stops_with_one_line_and_the_next_run_resumes(pristine, size):
    with tmpfs(size) as fs:
        store = fs / "store"
        out = hepc("run", TINY, "population.epochs_per_cycle=2", "runtime.checkpoint_every_steps=3", "--quiet",
                   store=store, check=False)
        if out.returncode == 0:
            pytest.skip(f"{size} was enough for the whole run")
        assert out.returncode == 2, out.stderr
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "disk full at" in errors[0], out.stderr
        assert "unexpected pos" not in out.stderr and "PytorchStream" not in out.stderr
        assert_nothing_half_written(store)
        remount(fs, "size=40m")
        again = hepc("run", TINY, "population.epochs_per_cycle=2", "runtime.checkpoint_every_steps=3", "--json",
                     "--quiet", store=store)
        assert json.loads(again.stdout)["members"]
        assert hepc("verify", store=store).returncode == 0


def test_an_export_onto_a_full_disk_names_the_export_not_the_store(pristine):
    """The copy fails writing the export; its error names the source (the store's intact snapshot): the
    message must name the export, and nothing of it may be left behind."""
    with tmpfs("100k") as fs:
        out = hepc("export", TINY, "--k", "2", "--out", str(fs / "ens"), store=pristine[0], check=False)
        assert out.returncode == 2 and out.stderr.strip() == f"error: disk full at {fs / 'ens'}", out.stderr
        assert list(fs.iterdir()) == []


def test_hepc_data_on_a_full_scratch_disk_names_the_folder(tmp_path):
    """`hepc data` previews a corpus that is not built yet by building it in a scratch folder ($TMPDIR)."""
    with tmpfs("12k") as fs:
        env = {**os.environ, "TMPDIR": str(fs), "HEPC_STORE": str(tmp_path / "store")}
        out = subprocess.run([sys.executable, "-m", "hepc.cli", "data", TINY], capture_output=True, text=True,
                             env=env, cwd=ROOT)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        (line,) = [x for x in out.stderr.splitlines() if x.startswith("error:")]
        assert f"disk full at {fs}/hepc-data-" in line and "TMPDIR" in line and "?" not in line, line


def test_a_full_disk_when_opening_the_run_record(pristine):
    with tmpfs("2m") as fs:
        store = fs / "store"
        shutil.copytree(pristine[0], store)
        filler = fs / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        out = hepc("run", TINY, "--quiet", store=store, check=False)
        assert out.returncode == 2 and "disk full at" in out.stderr and "run record" in out.stderr, out.stderr
        assert_nothing_half_written(store)


def test_a_read_only_store_is_said_to_be_read_only(pristine):
    with tmpfs("8m") as fs:
        store = fs / "store"
        shutil.copytree(pristine[0], store)
        remount(fs, "ro")
        cached = hepc("run", TINY, "--quiet", store=store, check=False)
        assert cached.returncode == 2 and "store is read-only" in cached.stderr
        assert "nothing to run" in cached.stderr and "hepc results" in cached.stderr
        gc = hepc("gc", "--yes", store=store, check=False)
        assert gc.returncode == 2 and "store is read-only" in gc.stderr
        assert json.loads(hepc("results", TINY, "--json", store=store).stdout) == pristine[1]
        assert hepc("verify", store=store).returncode == 0
        more = hepc("run", TINY, "population.cycles=3", "--quiet", store=store, check=False)
        assert more.returncode == 2 and "read-only" in more.stderr


# --------------------------------------------------------------------------- odd store contents


@pytest.fixture
def store(pristine, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(pristine[0], dst)
    return dst


def test_non_utf8_records_do_not_break_gc(store):
    run = next((store / "records" / "tiny").iterdir())
    bad = store / "records" / "tiny" / "20260101-000000-1-dead"
    bad.mkdir()
    (bad / "plan.json").write_bytes(b'{"steps": [\xff\xfe]}')
    (bad / "spec.json").write_bytes(b"name: \xff\xfe\n")
    odd = store.joinpath("records").joinpath(os.fsdecode(b"spec-\xff"))
    shutil.copytree(run, odd / "run")
    out = hepc("gc", store=store)
    assert "keeping every object" in out.stderr  # the unreadable record keeps everything, and says so
    out = hepc("gc", "--yes", "--json", store=store)
    assert json.loads(out.stdout)["keep_all"] is True


def test_a_file_where_the_records_folder_of_a_spec_belongs(store):
    shutil.rmtree(store / "records" / "tiny")
    (store / "records" / "tiny").write_text("oops")
    out = hepc("run", TINY, "--quiet", store=store, check=False)
    assert out.returncode == 2 and "records/tiny" in out.stderr and "not a folder" in out.stderr


def _gc_peak_rss_kb(store: Path) -> tuple[int, subprocess.CompletedProcess]:
    code = (
        "import sys\n"
        "from hepc.cli.main import app\n"
        f"try:\n    app(['gc', '--json', '--store', {str(store)!r}])\nexcept SystemExit as e:\n    rc = e.code\n"
        # VmHWM is this process's own peak; ru_maxrss can carry the forking parent's peak over exec
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print('MAXRSS', hwm, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "Traceback" not in out.stderr, out.stderr
    return int(out.stderr.split("MAXRSS")[1].split()[0]), out


def test_a_huge_recorded_plan_does_not_blow_up_gc_memory(store):
    # The bound is relative to the same gc on the same store with a normal plan, so it measures
    # what the 2 GB plan adds (reading it whole would add >= 2 GB), not the import footprint.
    baseline_kb, _ = _gc_peak_rss_kb(store)
    run = next((store / "records" / "tiny").iterdir())
    with open(run / "plan.json", "r+b") as f:
        f.truncate(2 << 30)  # 2 GB, sparse: costs no disk
    maxrss_kb, out = _gc_peak_rss_kb(store)
    assert maxrss_kb - baseline_kb < 200_000, f"gc used {(maxrss_kb - baseline_kb) / 1024:.0f} MB more with a 2 GB plan"
    assert "no readable plan; recompiled" in out.stderr  # the record still protects its objects
    assert json.loads(out.stdout[: out.stdout.rindex("}") + 1])["items"] == []


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize("delay", [0.15, 0.4])
def test_a_sigterm_in_the_first_moments_exits_130(tmp_path, delay):
    """While hepc is still importing or planning (nothing leased or written yet), SIGTERM exits 130 with
    one line, as Ctrl-C does, not by the default action (143)."""
    env = {**os.environ, "HEPC_STORE": str(tmp_path / "store")}
    proc = subprocess.Popen([sys.executable, "-m", "hepc.cli", "run", TINY, "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.startswith("interrupted"), err


@pytest.mark.parametrize("gap", [0.0, 0.05, pytest.param(0.3, marks=pytest.mark.slow)])
def test_two_sigterms_exit_130(tmp_path, gap):
    env = {**os.environ, "HEPC_STORE": str(tmp_path / "store")}
    proc = subprocess.Popen([sys.executable, "-m", "hepc.cli", "run", TINY, "population.epochs_per_cycle=6",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "store").glob("work/*")):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    time.sleep(gap)
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
