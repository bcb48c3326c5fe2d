"""A step that really fails, through the command line (no failure injected into hepc): a pre-tokenized
shard holding an id outside the vocabulary, which `validate` (it reads only the files' heads) lets pass
and the corpus step finds. Exit 2 with one line naming the step, `failed.json` in its work folder,
nothing committed, `! failed` in the plan, a retry on the next run (one worker or two), and once the
data are fixed a run that finishes and leaves everything cached."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import ROOT, hepc

TINY = (ROOT / "tests" / "fixtures" / "tiny.yaml").read_text()
SOURCE = "  source: {kind: tokens, paths: [t.npy], vocab_size: 100, eot_id: 99}\n"


def shard(path, bad: bool) -> None:
    rng = np.random.default_rng(0)
    ids = np.concatenate([np.concatenate([[99], rng.integers(0, 99, size=60)]) for _ in range(400)])
    if bad:
        ids[5000] = 150  # outside [0, vocab_size)
    np.save(path, ids.astype(np.int32))


@pytest.fixture
def spec(tmp_path):
    lines = [SOURCE if line.startswith("  source:") else "  tokenizer: none\n" if line.startswith("  tokenizer:")
             else line for line in TINY.splitlines(keepends=True)]  # fmt: skip
    path = tmp_path / "spec.yaml"
    path.write_text("".join(lines))
    shard(tmp_path / "t.npy", bad=True)
    return path


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_failing_step_is_reported_recorded_retried_and_cleared_by_a_fix(spec, tmp_path, jobs):
    store = tmp_path / "store"
    assert hepc("validate", str(spec), store=store).returncode == 0  # only the heads are read there
    for attempt in range(2):  # the next run retries the step: the same one line, never a silent skip
        out = hepc("run", str(spec), "--jobs", jobs, "--quiet", store=store, check=False)
        assert out.returncode == 2, out.stderr
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, out.stderr
        # located at the spec field the data breaks (one line, with either backend), naming the failed step
        assert errors[0].startswith(f"error: {spec}:") and "data.source.vocab_size" in errors[0], errors[0]
        assert "holds id 150 at token 5,000" in errors[0] and "(step corpus tokens-none (" in errors[0]
        (failed,) = store.glob("work/*/failed.json")
        assert "holds id 150" in json.loads(failed.read_text())["error"]
        assert not list(store.glob("objects/*/*")), "a failed step committed something"
    plan = hepc("plan", str(spec), store=store).stdout.splitlines()
    assert plan[0].startswith("! failed") and "corpus tokens-none" in plan[0]
    shard(tmp_path / "t.npy", bad=False)  # the fix: the corpus has another identity (its file's digest)
    hepc("run", str(spec), "--jobs", jobs, "--quiet", store=store)
    plan = json.loads(hepc("plan", str(spec), "--json", store=store).stdout)
    assert {s["status"] for s in plan["steps"]} == {"cached"}
