"""An exported ensemble folder is closed and self-verifying: SHA256SUMS covers every file (manifest
and card included) and is checked before anything is built; names are plain files inside the folder;
sizes are checked before memory is allocated; every malformed manifest is one line, exit 2."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import ROOT, TINY, hepc, tiny_store

from hepc.errors import HepcError
from hepc.use.export_check import SUMS


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exp")
    store, _ = tiny_store(folder)
    hepc("export", TINY, "--k", "all", "--out", str(folder / "ens"), store=store)
    return folder / "ens"


@pytest.fixture
def ens(exported, tmp_path):
    dst = tmp_path / "ens"
    shutil.copytree(exported, dst, symlinks=True)
    return dst


def sums(folder: Path) -> dict[str, str]:
    return {line[66:]: line[:64] for line in (folder / SUMS).read_text().splitlines()}


def relist(folder: Path, name: str) -> None:
    """Rewrite `name`'s line in SHA256SUMS to its current digest (a consistent edit of both)."""
    listed = sums(folder)
    listed[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / SUMS).write_text("".join(f"{d}  {n}\n" for n, d in sorted(listed.items())))


def edit_manifest(folder: Path, edit) -> None:
    manifest = json.loads((folder / "hepc-ensemble.json").read_text())
    edit(manifest)
    (folder / "hepc-ensemble.json").write_text(json.dumps(manifest))
    relist(folder, "hepc-ensemble.json")


def refused(folder: Path, match: str) -> str:
    from hepc import load_ensemble

    with pytest.raises(HepcError) as e:
        load_ensemble(folder).log_prob("ab")
    text = str(e.value)
    assert match in text and "\n" not in text, text
    return text


def test_the_checksum_list_covers_every_file_and_sha256sum_accepts_it(ens):
    files = {p.relative_to(ens).as_posix() for p in ens.rglob("*") if p.is_file()}
    assert set(sums(ens)) == files - {SUMS}
    assert {"hepc-ensemble.json", "README.md", "tokenizer.json"} <= files
    for name, digest in sums(ens).items():
        assert hashlib.sha256((ens / name).read_bytes()).hexdigest() == digest
    if shutil.which("sha256sum"):
        assert subprocess.run(["sha256sum", "--quiet", "-c", SUMS], cwd=ens).returncode == 0
    assert "sha256sum -c SHA256SUMS" in (ens / "README.md").read_text()


def test_an_edited_manifest_or_card_is_refused(ens):
    manifest = json.loads((ens / "hepc-ensemble.json").read_text())
    manifest["members"][0]["weight"] = 0.99
    (ens / "hepc-ensemble.json").write_text(json.dumps(manifest))
    refused(ens, "hepc-ensemble.json: sha256 does not match SHA256SUMS")
    relist(ens, "hepc-ensemble.json")
    (ens / "README.md").write_text("edited card")
    refused(ens, "README.md: sha256 does not match SHA256SUMS")


@pytest.mark.parametrize("name", ["/etc/hostname", "../outside.safetensors", "members/../../outside.safetensors"])
def test_member_names_outside_the_folder_are_refused(ens, name):
    (ens.parent / "outside.safetensors").write_bytes((next((ens / "members").iterdir())).read_bytes())

    def edit(m):
        m["members"][0]["file"] = name

    edit_manifest(ens, edit)
    refused(ens, "not a plain file name inside the folder")


def test_a_member_the_checksum_list_leaves_out_is_refused(ens):
    member = json.loads((ens / "hepc-ensemble.json").read_text())["members"][0]["file"]
    listed = sums(ens)
    del listed[member]
    (ens / SUMS).write_text("".join(f"{d}  {n}\n" for n, d in sorted(listed.items())))
    refused(ens, f"{member} is not covered by SHA256SUMS")

    def drop(m):  # and one left out of the manifest's own file list
        del m["files"][member]

    shutil.copy(ens / SUMS, ens / "x")
    edit_manifest(ens, drop)
    refused(ens, f"{member} is not covered by SHA256SUMS")


def test_links_fifos_and_devices_are_refused_without_blocking(ens):
    tok = ens / "tokenizer.json"
    tok.unlink()
    tok.symlink_to("/dev/zero")
    refused(ens, "tokenizer.json: a symbolic link")
    tok.unlink()
    os.mkfifo(tok)
    t0 = time.time()
    refused(ens, "tokenizer.json: is a FIFO, not a regular file")
    member = next((ens / "members").iterdir())
    member.unlink()
    os.mkfifo(member)
    assert time.time() - t0 < 5


def test_a_member_of_another_size_is_refused_before_it_is_read(ens):
    member = next((ens / "members").iterdir())
    with open(member, "ab") as f:
        f.write(b"\0" * 4096)
    refused(ens, "bytes, the manifest records")


def test_edited_model_sizes_are_refused_before_any_allocation(ens):
    import resource

    def grow(m):
        m["model"]["d_model"] = 65536
        m["model"]["vocab_size"] = 65536

    edit_manifest(ens, grow)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused(ens, "its tensors do not match the model")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing near 4 GiB


MALFORMED = {
    "not an object": lambda m: m.clear() or m.update({"format": "hepc-ensemble", "version": 2}),
    "no members": lambda m: m.pop("members"),
    "members not a list": lambda m: m.update(members={"a": 1}),
    "a member not an object": lambda m: m["members"].__setitem__(0, 7),
    "a member without a file": lambda m: m["members"][0].pop("file"),
    "weight is text": lambda m: m["members"][0].update(weight="0.5"),
    "weight is NaN": lambda m: m["members"][0].update(weight=float("nan")),
    "negative size": lambda m: m["members"][0].update(bytes=-1),
    "model missing": lambda m: m.pop("model"),
    "vocab size zero": lambda m: m["model"].update(vocab_size=0),
    "layers as text": lambda m: m["model"].update(n_layer="1"),
    "heads do not divide the width": lambda m: m["model"].update(n_head=3),
    "tokenizer missing": lambda m: m.pop("tokenizer"),
    "tokenizer file a number": lambda m: m["tokenizer"].update(file=3),
    "aggregate unknown": lambda m: m.update(aggregate="median"),
    "k mismatch": lambda m: m.update(k=1),
    "k is a bool": lambda m: m.update(k=True),
    "files not a map": lambda m: m.update(files=["a"]),
    "digest not hex": lambda m: m["files"].update({"tokenizer.json": "zz"}),
    "provenance missing": lambda m: m.pop("provenance"),
    "newer format": lambda m: m.update(version=99),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_malformed_manifest_is_one_line(ens, case):
    edit_manifest(ens, MALFORMED[case])
    with pytest.raises(HepcError) as e:
        from hepc import load_ensemble

        load_ensemble(ens)
    assert len(e.value.problems) == 1 and "\n" not in str(e.value) and "hepc-ensemble.json" in str(e.value) or (
        case == "newer format" and "newer hepc" in str(e.value)
    ), str(e.value)


def test_the_cli_says_one_line_and_exits_2(ens):
    edit_manifest(ens, MALFORMED["members not a list"])
    out = subprocess.run([sys.executable, "-m", "hepc.cli", "sample", str(ens), "--prompt", "a"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "members" in out.stderr


def test_a_context_length_no_spec_allows_is_refused(ens):
    edit_manifest(ens, lambda m: m["model"].update(seq_len=1 << 24))  # RoPE tables of gigabytes
    refused(ens, "model.seq_len")


def test_the_card_and_manifest_name_no_folder_of_this_machine(ens):
    manifest = json.loads((ens / "hepc-ensemble.json").read_text())
    prov = manifest["provenance"]
    assert "store" not in prov and not Path(prov["spec"]).is_absolute() and prov["spec"].endswith("tiny.yaml")
    text = (ens / "README.md").read_text() + (ens / "hepc-ensemble.json").read_text()
    assert str(ROOT) not in text and "/tmp/" not in text
    assert prov["spec_sha256"] in (ens / "README.md").read_text()
