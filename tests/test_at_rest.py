"""Corruption below the filesystem: bytes change while every stat signature (size, mtime, ctime,
inode) stays the same, as a bit flip on the medium does. The signature caches still vouch for the
object, so only a digest check of the bytes themselves can see it. Nothing may show, load or train
from such bytes: `results`, `load_ensemble`, `sample`, `export` and the next cycle refuse or repair
them, and what `verify` finds is quarantined and recomputed by the next `run` (or `verify --repair`).

The flip is made through the filesystem (which changes ctime), then every cache that vouches for
the object is rewritten to the signatures the object has now: the state a flip on the medium leaves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import TINY, executed, hepc, obj

from hepc.errors import HepcError
from hepc.store.verify import _dir_sigs, _stat_sig, index_intact, index_label, read_index, write_index


def flip_keeping_signatures(store: Path, o: Path, rel: str, edit=None) -> None:
    """Change bytes of `o/rel` without changing its size, then make `verified-index.json` and
    `verified/` vouch for the object exactly as it is now."""
    f = o / rel
    data = bytearray(f.read_bytes())
    if edit is None:
        data[len(data) - 64] ^= 0x10  # inside the last tensor / array, one bit
    else:
        data = bytearray(edit(bytes(data)))
    assert len(data) == f.stat().st_size
    f.write_bytes(bytes(data))
    manifest = json.loads((o / "manifest.json").read_text())
    files = {name: _stat_sig(o / name) for name in [*manifest["files"], "manifest.json"]}
    write_index(store, {index_label(o): {"dirs": _dir_sigs(o), "files": files}})
    (store / "verified" / f"{o.parent.name}-{o.name}").write_text(json.dumps(files, sort_keys=True))
    assert index_intact(o, read_index(store)[index_label(o)])  # the caches now vouch for the damage


def _lower_digit(text: bytes) -> bytes:
    """A flipped digit in the first val loss of a prior: still valid JSON, plausible, wrong."""
    at = text.index(b'"val_loss": ') + len(b'"val_loss": ')
    digit = text[at]
    return text[:at] + bytes([digit - 1 if digit > ord("0") else digit + 1]) + text[at + 1:]


def test_results_never_show_a_flipped_prior_and_the_next_run_recomputes_it(tiny_copy):
    path, pristine, results = tiny_copy
    prior = obj(path, "prior", "p2xc2")
    flip_keeping_signatures(path, prior, "prior.json", _lower_digit)

    out = hepc("results", TINY, store=path, check=False)
    assert out.returncode == 2 and f"damaged object prior/{prior.name}" in out.stderr
    assert "prior.json does not match its recorded digest" in out.stderr and out.stdout == ""
    assert index_label(prior) not in read_index(path)  # the signature that vouched for it is gone

    run = hepc("run", TINY, "--json", store=path)
    assert prior.name in run.stderr and "damaged" in run.stderr
    assert executed(path)[-1] == ["prior:p2xc2"]
    assert json.loads(run.stdout) == results
    assert hepc("results", TINY, "--json", store=path).returncode == 0


def test_a_cached_run_repairs_a_flipped_result_before_showing_it(tiny_copy):
    path, _, results = tiny_copy
    curve = obj(path, "curve", "p2xc2")
    flip_keeping_signatures(path, curve, "curve.json", _lower_digit)
    run = hepc("run", TINY, "--json", store=path)
    assert f"damaged object curve/{curve.name}" in run.stderr and "recomputing it" in run.stderr
    assert ["curve:p2xc2"] in executed(path)[-2:]  # the run and its repair: two records of one second
    assert json.loads(run.stdout) == results


def test_load_ensemble_sample_and_export_refuse_a_flipped_snapshot(tiny_copy, tmp_path):
    from hepc import load_ensemble

    path, pristine, _ = tiny_copy
    cycle = obj(path, "cycle", "t1-c002")
    flip_keeping_signatures(path, cycle, "model.safetensors")

    ens = load_ensemble(TINY, k="all", store=path)
    with pytest.raises(HepcError, match=f"damaged object cycle/{cycle.name}: model.safetensors does not match"):
        ens.log_prob("abc")
    out = hepc("sample", TINY, "--prompt", "ab", "--max-tokens", "4", store=path, check=False)
    assert out.returncode == 2 and f"cycle/{cycle.name}" in out.stderr and out.stdout == ""
    out = hepc("export", TINY, "--k", "all", "--out", str(tmp_path / "exp"), store=path, check=False)
    assert out.returncode == 2 and f"cycle/{cycle.name}" in out.stderr and not (tmp_path / "exp").exists()

    run = hepc("run", TINY, store=path)  # the loader dropped its signatures: the run re-hashes and recomputes it
    assert cycle.name in run.stderr and executed(path)[-1] == ["cycle:t1-c002"]
    assert (cycle / "model.safetensors").read_bytes() == (obj(pristine, "cycle", "t1-c002") / "model.safetensors").read_bytes()
    assert load_ensemble(TINY, k="all", store=path).log_prob("abc")["tokens"] == 3


def test_the_next_cycle_never_trains_from_a_flipped_snapshot(tiny_copy):
    path, pristine, _ = tiny_copy
    prev = obj(path, "cycle", "t1-c002")
    flip_keeping_signatures(path, prev, "model.safetensors")

    run = hepc("run", TINY, "population.cycles=3", store=path)
    assert f"damaged object cycle/{prev.name}" in run.stderr
    ran = executed(path)[-1]
    assert ran.index("cycle:t1-c002") < ran.index("cycle:t1-c003")  # recomputed first, then trained from
    assert (prev / "model.safetensors").read_bytes() == (obj(pristine, "cycle", "t1-c002") / "model.safetensors").read_bytes()
    assert hepc("verify", store=path).returncode == 0


def test_verify_finds_it_and_the_next_run_recomputes_it(tiny_copy):
    path, pristine, results = tiny_copy
    score = obj(path, "score", "t2-c002-val")
    flip_keeping_signatures(path, score, "probs.npy")
    assert hepc("run", TINY, store=path).stderr.count("damaged") == 0  # a run alone trusts the signature: cached

    out = hepc("verify", store=path, check=False)
    assert out.returncode == 1 and f"damaged score/{score.name}: probs.npy does not match" in out.stdout
    assert "verify --repair" in out.stdout
    run = hepc("run", TINY, "--json", store=path)
    assert score.name in run.stderr and executed(path)[-1] == ["score:t2-c002-val"]
    assert json.loads(run.stdout) == results
    assert (score / "probs.npy").read_bytes() == (obj(pristine, "score", "t2-c002-val") / "probs.npy").read_bytes()


def test_verify_repair_with_a_spec_quarantines_and_recomputes(tiny_copy):
    path, pristine, results = tiny_copy
    cycle = obj(path, "cycle", "t2-c001")
    flip_keeping_signatures(path, cycle, "model.safetensors")

    out = hepc("verify", TINY, "--repair", store=path, check=False)
    assert out.returncode == 0, out.stderr
    assert f"damaged cycle/{cycle.name}" in out.stdout and "moved to quarantine/" in out.stdout
    assert list((path / "quarantine").rglob(cycle.name))
    assert executed(path)[-1] == ["cycle:t2-c001"]
    assert (cycle / "model.safetensors").read_bytes() == (obj(pristine, "cycle", "t2-c001") / "model.safetensors").read_bytes()
    assert json.loads(hepc("results", TINY, "--json", store=path).stdout) == results


def test_verify_scrub_rehashes_everything_rebuilds_the_index_and_says_how_long(tiny_copy):
    path, _, _ = tiny_copy
    index = json.loads((path / "verified-index.json").read_text())
    index["objects"]["cycle/gone-0123456789ab"] = next(iter(index["objects"].values()))  # an object gc never saw go
    (path / "verified-index.json").write_text(json.dumps(index))
    out = hepc("verify", "--scrub", "--json", store=path)
    report = json.loads(out.stdout)
    assert report["checked"] == 15 and report["damaged"] == [] and report["seconds"] > 0
    assert "cycle/gone-0123456789ab" not in read_index(path) and len(read_index(path)) <= 15
    text = hepc("verify", "--scrub", store=path).stdout
    assert text.startswith("scrubbed 15 objects") and "/s: all intact" in text


def test_a_manifest_forged_to_claim_a_huge_file_is_refused_before_anything_is_read(tiny_copy):
    """A manifest rewritten with its own digest recomputed (not a secret) claiming 10 TB: refused on the
    file's real size, never allocated."""
    from hepc.store.objects import Store
    from hepc.store.verify import Damaged, manifest_digest

    path, _, _ = tiny_copy
    prior = obj(path, "prior", "p2xc2")
    manifest = json.loads((prior / "manifest.json").read_text())
    manifest["files"]["prior.json"]["size"] = 10**13
    manifest["manifest_xxh3_128"] = manifest_digest(manifest)
    (prior / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Damaged, match="expected 10000000000000"):
        Store(path).read_object_json(prior, "prior.json")
