"""The ensemble as an lm-evaluation-harness model (`hepc eval`, model `hepc`), on a local task.

No download: the task (tests/fixtures/lm_eval/hepc_mc.yaml) reads a local JSON Lines file through the
`json` builder of `datasets`, with the Hugging Face caches in a temporary folder and offline mode on.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("lm_eval")

from cli_helpers import ROOT
from use_helpers import cli, trained_population

TASKS = ROOT / "tests" / "fixtures" / "lm_eval"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def pop(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm_eval")
    saved = {k: os.environ.get(k) for k in [*OFFLINE, "HF_HOME"]}
    os.environ.update({**OFFLINE, "HF_HOME": str(folder / "hf")})
    try:
        yield trained_population(folder)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _items() -> list[dict]:
    return [json.loads(line) for line in (TASKS / "hepc_mc.jsonl").read_text().splitlines() if line.strip()]


def test_local_task_end_to_end_matches_a_hand_computation(pop, monkeypatch):
    import hepc

    spec, store, _ = pop
    monkeypatch.chdir(ROOT)  # the task's data_files path is relative to the repository root
    out = cli("eval", spec, "--k", "2", "--tasks", "hepc_mc", "--include-path", TASKS, "--json", store=store)
    res = json.loads(out.stdout)
    acc = res["results"]["hepc_mc"]["acc,none"]
    assert 0.0 <= acc <= 1.0
    assert res["n-samples"]["hepc_mc"]["effective"] == len(_items())
    assert res["model"]["hepc"]["k"] == 2

    # by hand, from the ensemble's document scores: log p(choice | context) = log p(context + choice) − log p(context)
    ens = hepc.load_ensemble(spec, k=2, store=store)
    correct = []
    for item in _items():
        base = ens.log_prob(item["context"])["nats"]
        lls = [-(ens.log_prob(item["context"] + c)["nats"] - base) for c in item["choices"]]
        correct.append(int(np.argmax(lls)) == item["label"])
        # the model's own loglikelihood of each choice agrees with the hand computation
        for c, ll in zip(item["choices"], lls):
            assert ens.continuation_logprob(item["context"], c)[0] == pytest.approx(ll, rel=1e-5, abs=1e-5)
    assert acc == pytest.approx(sum(correct) / len(correct), abs=1e-12)


def test_rolling_and_generation_requests(pop):
    from lm_eval.api.instance import Instance

    import hepc
    from hepc.use.lm_eval_model import HepcLM

    spec, store, _ = pop
    ens = hepc.load_ensemble(spec, k=2, store=store)
    lm = HepcLM(ensemble=ens)
    text = "import sys\n"
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert rolling[0] == pytest.approx(-ens.log_prob(text)["nats"], rel=1e-9)  # one window: the same forward
    req = Instance("generate_until", {}, ("def ", {"until": ["\n"], "max_gen_toks": 20}), 0)
    first, again = lm.generate_until([req]), lm.generate_until([req])
    assert first == again and isinstance(first[0], str) and "\n" not in first[0] and len(first[0]) <= 20


def test_model_is_registered_and_built_from_model_args(pop):
    from lm_eval.api.registry import get_model

    import hepc.use.lm_eval_model  # noqa: F401  (registers "hepc")

    spec, store, _ = pop
    cls = get_model("hepc")
    lm = cls.create_from_arg_string(f"spec={spec},k=2,store={store},device=cuda:0")
    assert lm.ensemble.k == 2 and lm.ensemble.provenance["spec_name"] == "tinypy"


@pytest.mark.slow  # lm-eval indexes its thousands of tasks to tell (~20 s): kept out of the default run
def test_unknown_task_is_one_clear_error(pop):
    spec, store, _ = pop
    r = cli("eval", spec, "--k", "2", "--tasks", "no_such_task_xyz", "--include-path", TASKS, store=store, check=False)
    assert r.returncode == 2 and "no_such_task_xyz" in r.stderr


def test_the_harness_never_runs_git_in_the_users_folder(monkeypatch):
    """lm-eval's `git describe` printed "fatal: not a git repository" outside a repository."""
    import subprocess

    from lm_eval import evaluator

    from hepc.use.lm_eval_model import _quiet_git_lookup

    def no_git(*args, **kwargs):
        raise AssertionError(f"ran {args}")

    monkeypatch.setattr(subprocess, "check_output", no_git)
    monkeypatch.setattr(evaluator, "get_git_commit_hash", evaluator.get_git_commit_hash)  # restored after the test
    _quiet_git_lookup()
    assert evaluator.get_git_commit_hash() is None


def test_the_stock_harness_on_an_exported_member_gives_hepcs_accuracy(pop, tmp_path, monkeypatch):
    """`lm_eval --model hf` (no hepc code) on a member exported with `--format hf`, against `hepc eval`
    of the same member at K = 1: the same accuracy on the local task."""
    pytest.importorskip("transformers")
    import lm_eval
    from lm_eval.tasks import TaskManager

    spec, store, _ = pop
    monkeypatch.chdir(ROOT)  # the task's data_files path is relative to the repository root
    out = tmp_path / "exp"
    cli("export", spec, "--k", "1", "--format", "hf", "--out", str(out), store=store)
    ours = json.loads(cli("eval", spec, "--k", "1", "--tasks", "hepc_mc", "--include-path", TASKS, "--json",
                          store=store).stdout)["results"]["hepc_mc"]["acc,none"]
    (member,) = (out / "hf").iterdir()
    res = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={member},dtype=float32,add_bos_token=True", tasks=["hepc_mc"],
        task_manager=TaskManager(include_path=str(TASKS), include_defaults=False), device="cpu", log_samples=False,
    )
    assert res["results"]["hepc_mc"]["acc,none"] == ours
