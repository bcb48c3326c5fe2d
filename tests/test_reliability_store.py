"""Reliability v2, the store: gc never deletes outside the store, a folder that is not a store is
never written to, tampered objects are never shown, stuck states clear themselves, leases never
hang a run, and the gc/run races are closed. Each test is one attack turned into a fixture."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import ROOT, TINY, executed, hepc

from hepc.store import gc as gc_mod
from hepc.store.layout import MARKER
from hepc.store.objects import Store

STORE_DIRS = ("work", "tmp", "quarantine", "verified", "trash", "leases")


@pytest.fixture
def pristine(tiny_pristine):
    return tiny_pristine


@pytest.fixture
def store(tiny_copy):
    return tiny_copy[0]


def plant(folder: Path) -> dict[str, bytes]:
    """Files a user keeps elsewhere: they must survive anything gc does."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"keep.txt": b"precious", "sub/deep.bin": os.urandom(64), "0123456789abcdef": b"looks like a key"}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return files


def survived(folder: Path, files: dict[str, bytes]) -> bool:
    return all((folder / rel).is_file() and (folder / rel).read_bytes() == data for rel, data in files.items())


# --------------------------------------------------------------------------- 1. gc stays inside the store


@pytest.mark.parametrize("sub", (*STORE_DIRS, "objects", "records"))
def test_gc_never_follows_a_symlinked_store_folder(store, tmp_path, sub):
    outside = tmp_path / f"outside-{sub}"
    files = plant(outside)
    shutil.rmtree(store / sub, ignore_errors=True)
    (store / sub).symlink_to(outside, target_is_directory=True)

    out = hepc("gc", "--yes", store=store, check=False)
    assert out.returncode in (0, 2), out.stderr
    assert survived(outside, files), f"gc deleted files behind {sub}/"
    assert "symbolic link" in out.stderr or (sub == "records" and "no run records" in out.stderr)
    # and `hepc run` refuses to write through it (nothing to run still must not touch it)
    run = hepc("run", TINY, "--quiet", store=store, check=False)
    assert run.returncode == 2 and "symbolic link" in run.stderr
    assert survived(outside, files)


def test_gc_with_every_store_folder_symlinked_elsewhere_deletes_nothing_outside(store, tmp_path):
    planted = {}
    for sub in STORE_DIRS:
        outside = tmp_path / f"elsewhere-{sub}"
        planted[outside] = plant(outside)
        shutil.rmtree(store / sub, ignore_errors=True)
        (store / sub).symlink_to(outside, target_is_directory=True)
    hepc("gc", "--yes", store=store, check=False)
    hepc("gc", "--yes", TINY, store=store, check=False)
    for outside, files in planted.items():
        assert survived(outside, files), outside


@pytest.mark.parametrize("how", ["--store", "runtime.store", "HEPC_STORE"])
def test_a_folder_that_is_not_a_store_is_refused_by_every_writer(tmp_path, how):
    folder = tmp_path / "my-project"
    files = plant(folder / "work")
    files_tmp = plant(folder / "tmp")
    (folder / "notes.txt").write_text("not a store")
    before = sorted(str(p) for p in folder.rglob("*"))

    def call(*args):
        env = {**os.environ}
        env.pop("HEPC_STORE", None)
        extra = []
        if how == "--store":
            extra = ["--store", str(folder)]
        elif how == "HEPC_STORE":
            env["HEPC_STORE"] = str(folder)
        elif args[0] in ("run", "verify"):
            extra = [f"runtime.store={folder}"]
        elif args[0] == "gc":
            spec = tmp_path / "tiny-elsewhere.yaml"
            spec.write_text(Path(TINY).read_text().replace("runtime: {", f"runtime: {{store: '{folder}', "))
            args = (*args, str(spec))
        out = subprocess.run([sys.executable, "-m", "hepc.cli", *args, *extra], check=False, capture_output=True, text=True,
                             env=env, cwd=ROOT)
        assert "Traceback" not in out.stderr, out.stderr
        return out

    for args in (("gc", "--yes"), ("gc",), ("run", TINY, "--quiet"), ("verify",)):
        if how == "runtime.store" and args == ("verify",):
            args = ("verify", TINY)
        out = call(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "not an hepc store" in out.stderr, out.stderr
    assert survived(folder / "work", files) and survived(folder / "tmp", files_tmp)
    assert sorted(str(p) for p in folder.rglob("*")) == before  # nothing written either


def test_a_new_or_empty_folder_becomes_a_store_with_a_marker(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    hepc("run", TINY, "--quiet", store=empty)
    marker = json.loads((empty / MARKER).read_text())
    assert marker["format"] == 1
    assert hepc("gc", store=empty).returncode == 0


def test_a_store_of_an_older_hepc_is_adopted_only_by_verify_adopt(store, tmp_path):
    (store / MARKER).unlink()
    refused = hepc("run", TINY, "--quiet", store=store, check=False)
    assert refused.returncode == 2 and "--adopt" in refused.stderr
    hepc("verify", "--adopt", store=store)
    assert (store / MARKER).is_file()
    hepc("run", TINY, "--quiet", store=store)
    stranger = tmp_path / "stranger"
    plant(stranger)
    (stranger / "objects").mkdir()
    out = hepc("verify", "--adopt", store=stranger, check=False)
    assert out.returncode == 2 and "does not look like an hepc store" in out.stderr
    assert not (stranger / MARKER).exists()


def test_a_store_of_a_newer_format_is_refused(store):
    (store / MARKER).write_text(json.dumps({"format": 99}))
    out = hepc("gc", "--yes", store=store, check=False)
    assert out.returncode == 2 and "newer hepc" in out.stderr


# --------------------------------------------------------------------------- 3. nothing tampered is shown


def _obj(store: Path, kind: str) -> Path:
    (found,) = list((store / "objects" / kind).iterdir())
    return found


def test_results_compare_report_refuse_a_tampered_prior(store, pristine, tmp_path):
    prior = _obj(store, "prior") / "prior.json"
    data = json.loads(prior.read_text())
    true_loss = data["ensembles"][0]["val_loss"]
    data["ensembles"][0]["val_loss"] = 0.123456
    prior.write_text(json.dumps(data))
    for args in (("results", TINY), ("results", TINY, "--json"), ("compare", TINY, TINY),
                 ("report", TINY, "--out", str(tmp_path / "rep"))):
        out = hepc(*args, store=store, check=False)
        assert out.returncode == 2, (args, out.stdout)
        assert "damaged object prior/" in out.stderr and "0.1234" not in out.stdout
    assert not (tmp_path / "rep" / "report.html").exists()
    # `hepc run` quarantines and recomputes it; then the true value is shown again
    fixed = json.loads(hepc("run", TINY, "--json", "--quiet", store=store).stdout)
    assert fixed == pristine[1] and fixed["ensembles"][0]["val_loss"] == true_loss


def test_results_refuse_a_tampered_curve(store):
    """A curve edited in place (its size and mtime change, so its stat signature does too) is refused.
    Corruption that keeps the whole stat signature (size, mtime, ctime, inode) is not caught by this check."""
    curve = _obj(store, "curve") / "curve.json"
    text = curve.read_text()
    curve.write_text(text.replace("1", "2", 1))
    out = hepc("results", TINY, store=store, check=False)
    assert out.returncode == 2 and "damaged object curve/" in out.stderr


# --------------------------------------------------------------------------- 4. stuck states clear themselves


def test_an_object_folder_without_manifest_is_quarantined_and_recomputed(store, pristine):
    victim = min((store / "objects" / "cycle").iterdir())
    (victim / "manifest.json").unlink()
    out = hepc("run", TINY, "--json", store=store)
    assert json.loads(out.stdout) == pristine[1]
    assert "has no manifest.json" in out.stderr
    assert (victim / "manifest.json").is_file()
    assert any(p.name == victim.name for p in (store / "quarantine").rglob(victim.name))
    assert hepc("verify", store=store).returncode == 0


def test_a_commit_onto_a_manifestless_folder_replaces_it(store):
    """The commit itself copes when the folder appears after the pre-run check."""
    from hepc.compile.compiler import compile_spec
    from hepc.spec.load import load_spec

    compiled = compile_spec(load_spec(TINY))
    step = next(s for s in compiled.graph.order() if s.kind == "curve")
    s = Store(store)
    dest = s.find(step)
    shutil.rmtree(dest)
    dest.mkdir()
    (dest / "junk").write_text("left over")
    staged = s.stage(step)
    (staged / "curve.json").write_text("{}")
    committed = s.commit(step, staged, {}, {})
    assert committed == dest and (dest / "manifest.json").is_file() and not (dest / "junk").exists()


# --------------------------------------------------------------------------- 5. leases never hang a run


def _lease_of_a_step(store: Path, name: str = "curve") -> Path:
    from hepc.compile.compiler import compile_spec
    from hepc.spec.load import load_spec

    compiled = compile_spec(load_spec(TINY))
    step = next(s for s in compiled.graph.order() if s.kind == name)
    shutil.rmtree(Store(store).find(step))  # the step must run again, so its lease matters
    return store / "leases" / step.key


def _run_bounded(store: Path, *args, timeout: float = 60, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HEPC_STORE": str(store), "HEPC_LEASE_TIMEOUT_S": "3", **(env_extra or {})}
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "hepc.cli", "run", TINY, "--quiet", *args], check=False, capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=timeout)
    out.elapsed = time.time() - t0
    assert "Traceback" not in out.stderr, out.stderr
    return out


@pytest.mark.parametrize("junk", [b"", b"not json at all", b'{"pid": 1}', b"[1, 2]", b"\xff\xfe\x00garbage"])
def test_a_junk_lease_is_stale(store, junk):
    lease = _lease_of_a_step(store)
    lease.write_bytes(junk)
    future = time.time() + 3600
    os.utime(lease, (future, future))  # even with a heartbeat in the future
    out = _run_bounded(store)
    assert out.returncode == 0, out.stderr
    assert not lease.exists()


def test_a_directory_or_fifo_where_a_lease_belongs_is_moved_aside(store):
    lease = _lease_of_a_step(store)
    lease.mkdir()
    (lease / "inside").write_text("x")
    old = time.time() - 10
    os.utime(lease, (old, old))
    out = _run_bounded(store)
    assert out.returncode == 0, out.stderr
    assert not lease.exists()
    assert list((store / "quarantine").rglob("inside"))
    lease2 = _lease_of_a_step(store)
    os.mkfifo(lease2)
    os.utime(lease2, (old, old))
    out = _run_bounded(store, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("holder", ["pid1-here", "other-host"])
def test_a_lease_with_a_heartbeat_in_the_future_is_reported_with_the_command_that_clears_it(store, holder):
    lease = _lease_of_a_step(store)
    host = socket.gethostname() if holder == "pid1-here" else "elsewhere.example"
    lease.write_text(json.dumps({"pid": 1, "host": host, "token": "f" * 32, "step": "curve", "started": 0}))
    future = time.time() + 3600
    os.utime(lease, (future, future))
    out = _run_bounded(store)
    assert out.returncode == 2 and out.elapsed < 50
    assert "suspect" in out.stderr and "hepc unlock" in out.stderr
    gc = hepc("gc", store=store)
    assert "suspect" in gc.stderr and "hepc unlock" in gc.stderr
    key12 = lease.name[:12]
    hepc("unlock", key12, store=store)
    assert not lease.exists()
    assert _run_bounded(store).returncode == 0


def test_unlock_refuses_what_is_not_a_key(store):
    out = hepc("unlock", "zz", store=store, check=False)
    assert out.returncode == 2
    out = hepc("unlock", "abcdef12", store=store, check=False)
    assert out.returncode == 2 and "no lease" in out.stderr


def test_unlock_removes_one_named_lease_and_never_a_running_steps(store):
    """A prefix that names two leases is refused (nothing removed); a lease whose holder is alive here with
    a current heartbeat is a running step and is refused; a lease naming no holder is described as such."""
    leases = store / "leases"
    leases.mkdir(exist_ok=True)
    a, b = leases / ("abc123" + "0" * 58), leases / ("abc123" + "1" * 58)
    for path in (a, b):
        path.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "token": "f" * 32, "step": "x"}))
    out = hepc("unlock", "abc123", store=store, check=False)
    assert out.returncode == 2 and "matches 2 leases" in out.stderr and a.exists() and b.exists()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        a.write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "token": "e" * 32, "step": "x"}))
        out = hepc("unlock", a.name[:12], store=store, check=False)
        assert out.returncode == 2 and "held by a running process" in out.stderr and a.exists(), out.stderr
    finally:
        live.kill()
        live.wait()
    b.write_text(json.dumps({"token": "d" * 32}))
    removed = hepc("unlock", b.name[:12], store=store)
    assert "a lease that names no holder" in removed.stdout and "None" not in removed.stdout
    assert not b.exists()
    hepc("unlock", a.name[:12], store=store)  # its holder is gone now: removed
    assert not a.exists()


# --------------------------------------------------------------------------- 6. races


def _fake_run_starts(store: Path, key: str) -> dict:
    """What a run does right after taking a step's lease: its lease, staging and work folders."""
    lease = Store(store).lease_path(key)
    lease.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": "a" * 32,
                                 "step": "cycle", "started": time.time()}))
    staging = store / "tmp" / f"cycle-t9-c001-{key[:12]}.{os.getpid()}.abcd1234"
    staging.mkdir(parents=True)
    work = store / "work" / key
    work.mkdir(parents=True)
    (work / "ckpt.pt").write_bytes(b"resumable state")
    return {"lease": lease, "staging": staging, "work": work}


def test_gc_lists_folders_before_reading_leases(store, monkeypatch):
    """A run that starts between gc's listing and its lease reading loses nothing."""
    key = "ab" * 16
    started = {}
    real = gc_mod._leases

    def leases_then_a_run_starts(s):
        if not started:
            started.update(_fake_run_starts(store, key))
        return real(s)

    monkeypatch.setattr(gc_mod, "_leases", leases_then_a_run_starts)
    s = Store(store)
    items = gc_mod.garbage(s, gc_mod.reachable(s))
    gc_mod.collect(s, items)
    assert all(p.exists() for p in started.values()), started


def test_gc_never_moves_a_work_folder_whose_step_a_run_holds(store):
    key = "cd" * 16
    made = _fake_run_starts(store, key)
    made["lease"].unlink()  # listed while nobody held it ...
    s = Store(store)
    items = [gc_mod.Item("work", made["work"], 1, "test")]
    with s.lease(type("S", (), {"key": key, "kind": "cycle", "dirname": "x"})()):  # ... then a run takes it
        gc_mod.collect(s, items)
    assert made["work"].is_dir() and (made["work"] / "ckpt.pt").is_file()


def test_a_run_stopped_while_another_takes_over_reports_no_false_failure(tmp_path, pristine):
    """SIGSTOP a run mid-cycle until its lease goes stale, let a second run finish everything, then
    SIGCONT the first: it stops its step (lease lost), writes no failed.json, and exits 0."""
    store = tmp_path / "store"
    env = {**os.environ, "HEPC_STORE": str(store), "HEPC_LEASE_TIMEOUT_S": "2"}
    spec = (TINY, "population.epochs_per_cycle=4", "runtime.checkpoint_every_steps=5")
    first = subprocess.Popen([sys.executable, "-m", "hepc.cli", "run", *spec, "--quiet"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((store / "work").glob("*/ckpt.pt")):
            time.sleep(0.05)
        assert list((store / "work").glob("*/ckpt.pt")), "the first run never reached a checkpoint"
        os.kill(first.pid, 19)  # SIGSTOP
        time.sleep(3)
        second = subprocess.run([sys.executable, "-m", "hepc.cli", "run", *spec, "--json", "--quiet"],
                                check=False, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        assert second.returncode == 0, second.stderr
    finally:
        os.kill(first.pid, 18)  # SIGCONT
    _, err = first.communicate(timeout=120)
    assert "Traceback" not in err
    assert first.returncode == 0, err
    assert not list(store.glob("work/*/failed.json"))
    events = []
    for folder in (store / "records" / "tiny").iterdir():
        events += [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    assert not [e for e in events if e["event"] == "failed"]
    assert [e for e in events if e["event"] == "lost"], "no run lost its lease: the take-over never happened"
    assert hepc("verify", store=store).returncode == 0


def test_links_inside_store_folders_are_never_followed(store, tmp_path):
    """Links planted inside work/, tmp/, quarantine/, trash/ and objects/<kind>/: gc moves or drops the
    link itself, never what it points to; a run never trains (or deletes) through a work/<key> link."""
    planted = {}
    for sub in ("work", "tmp", "quarantine", "trash", "verified"):
        outside = tmp_path / f"target-{sub}"
        planted[outside] = plant(outside)
        (store / sub).mkdir(exist_ok=True)
        (store / sub / ("ef" * 16)).symlink_to(outside, target_is_directory=True)
    outside = tmp_path / "target-object"
    planted[outside] = plant(outside)
    (store / "objects" / "cycle" / "t9-c009-0123456789ab").symlink_to(outside, target_is_directory=True)
    hepc("gc", "--yes", store=store)
    hepc("gc", "--yes", TINY, store=store)
    for target, files in planted.items():
        assert survived(target, files), target

    # a work/<key> that is a link to elsewhere is set aside, not trained into
    from hepc.compile.compiler import compile_spec
    from hepc.spec.load import load_spec

    step = next(s for s in compile_spec(load_spec(TINY)).graph.order() if s.kind == "cycle")
    shutil.rmtree(Store(store).find(step))
    outside = tmp_path / "target-work"
    files = plant(outside)
    (outside / "failed.json").write_text("{}")
    (outside / ".ckpt.pt.tmp-1").write_text("not ours")
    (store / "work" / step.key).symlink_to(outside, target_is_directory=True)
    hepc("run", TINY, "--quiet", store=store)
    assert survived(outside, files) and (outside / "failed.json").exists() and (outside / ".ckpt.pt.tmp-1").exists()
    assert not list(outside.glob("ckpt*"))


def test_a_symlinked_kind_folder_is_refused_for_writing(store, tmp_path):
    outside = tmp_path / "kind"
    shutil.move(str(store / "objects" / "curve"), outside)
    (store / "objects" / "curve").symlink_to(outside, target_is_directory=True)
    out = hepc("run", TINY, "--quiet", store=store, check=False)
    assert out.returncode == 2 and "symbolic link" in out.stderr


def test_reading_commands_write_nothing_into_a_folder_that_is_not_a_store(store):
    (store / MARKER).unlink()
    shutil.rmtree(store / "verified")
    hepc("results", TINY, store=store)
    hepc("plan", TINY, store=store)
    assert not (store / "verified").exists() and not (store / MARKER).exists()


def test_verify_names_a_damaged_checkpoint(store):
    from hepc.store.ckpt_digest import write_digest

    work = store / "work" / ("12" * 16)
    work.mkdir(parents=True)
    (work / "ckpt.pt").write_bytes(b"x" * 100)
    write_digest(work / "ckpt.pt")
    assert hepc("verify", store=store).returncode == 0
    (work / "ckpt.pt").write_bytes(b"y" * 100)
    out = hepc("verify", store=store, check=False)
    assert out.returncode == 1 and "damaged checkpoint" in out.stdout and "altered" in out.stdout


def test_a_bogus_takeover_lock_does_not_block_forever(store):
    lease = _lease_of_a_step(store)
    lease.write_text("junk")
    lock = lease.parent / f".takeover-{lease.name}"
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "token": "b" * 32}))
    future = time.time() + 3600
    for p in (lease, lock):
        os.utime(p, (future, future))
    out = _run_bounded(store)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("where", ["tmp", "work", "leases", "objects/curve"])
def test_a_file_where_a_store_folder_belongs_is_set_aside(store, pristine, where):
    target = store / where
    shutil.rmtree(target, ignore_errors=True)
    target.write_text("junk")
    out = hepc("run", TINY, "--json", "--quiet", store=store)
    assert json.loads(out.stdout) == pristine[1]
    assert "a file where a folder belongs" in out.stderr and target.is_dir()


@pytest.mark.parametrize("junk", ["manifest-folder", "manifest-fifo", "manifest-device-link", "file", "link"])
def test_something_in_an_objects_place_is_set_aside_and_the_step_committed(store, tmp_path, junk):
    """Whatever sits where an object belongs without being one (a manifest that is a folder, a FIFO or a
    link to a device; a plain file or a link at the object's path): the next run sets it aside in
    quarantine/, recomputes and commits the step, and the run after finds everything cached."""
    from hepc.store.layout import is_committed

    (prior,) = [p for p in (store / "objects" / "prior").iterdir()]
    elsewhere = tmp_path / "elsewhere"
    shutil.move(prior, elsewhere)  # a real object, outside the store: what a planted link points at
    if junk.startswith("manifest"):
        prior.mkdir()
        target = prior / "manifest.json"
        if junk == "manifest-folder":
            target.mkdir()
        elif junk == "manifest-fifo":
            os.mkfifo(target)
        else:
            target.symlink_to("/dev/zero")
    elif junk == "file":
        prior.write_text("not an object")
    else:
        prior.symlink_to(elsewhere, target_is_directory=True)
    out = _run_bounded(store)
    assert out.returncode == 0, out.stderr
    assert is_committed(prior) and not prior.is_symlink()
    assert list((store / "quarantine").rglob(prior.name)), "the junk was not set aside"
    assert sorted(p.name for p in elsewhere.iterdir()) == sorted(p.name for p in prior.iterdir())
    again = hepc("run", TINY, "--quiet", store=store)
    assert again.returncode == 0
    assert executed(store)[-1] == []


def test_an_interrupted_gc_puts_back_only_what_it_moved_itself(store, tmp_path):
    """A gc killed after phase 1: the next gc puts back the reachable objects it logged as moved. A planted
    trash entry whose `object` folder is a link into another store (the issue's attack, under an old-looking
    name and under a gc-looking name with a forged log) moves nothing: the other store keeps its objects."""
    from hepc.store.gc import Item, _move

    other = tmp_path / "B"
    shutil.copytree(store, other, symlinks=True)
    cycles = sorted((store / "objects" / "cycle").iterdir())
    stamp = "20200101-000000~" + socket.gethostname() + "~999999999~abcdef"  # a gc that is gone
    trash = store / "trash" / stamp
    moved: list = []
    _move(Item("object", cycles[0], 0, "test"), trash, moved)  # what phase 1 does, then the gc died
    assert not cycles[0].exists() and (trash / "moved.txt").read_text() == f"object/cycle/{cycles[0].name}\n"
    for other_cycle in cycles[1:]:  # this store lost the rest of its snapshots
        shutil.rmtree(other_cycle)
    for name in ("20200101-000000", "20200101-000001~" + socket.gethostname() + "~999999998~abcdef"):
        (store / "trash" / name).mkdir()
        (store / "trash" / name / "object").symlink_to(other / "objects", target_is_directory=True)
        (store / "trash" / name / "moved.txt").write_text("".join(f"object/cycle/{c.name}\n" for c in cycles))
    before = sorted(p.relative_to(other).as_posix() for p in other.rglob("*"))
    out = hepc("gc", "--yes", store=store)
    assert sorted(p.relative_to(other).as_posix() for p in other.rglob("*")) == before, out.stderr
    assert sorted(p.name for p in (store / "objects" / "cycle").iterdir()) == [cycles[0].name]  # only its own
    assert not (store / "trash").exists() or not list((store / "trash").iterdir())
    assert hepc("verify", store=store, check=False).returncode == 0


def test_a_planted_trash_link_is_dropped_not_followed(store, tmp_path):
    """An old-looking trash entry that is a link: gc's restore must not move what it points to."""
    outside = tmp_path / "user-data"
    victim = sorted((store / "objects" / "cycle").iterdir())[0]
    shutil.rmtree(victim)  # so a restore would move the look-alike into its place
    lookalike = outside / "object" / "cycle" / victim.name
    lookalike.mkdir(parents=True)
    (lookalike / "mine.txt").write_text("user data")
    (store / "trash").mkdir(exist_ok=True)
    (store / "trash" / "20200101-000000~nohost~1~abcdef").symlink_to(outside, target_is_directory=True)
    hepc("gc", "--yes", store=store)
    assert (lookalike / "mine.txt").read_text() == "user data"
