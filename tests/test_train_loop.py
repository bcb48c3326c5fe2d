"""One cycle end to end on a tiny corpus: outputs, learning, chaining, determinism, exact resume."""

import json
import math

import pytest
import torch
from train_helpers import assert_same_outputs, counting_corpus, read_metrics

from hepc.train.checkpoint import load_state, load_weights
from hepc.train.loop import train_cycle
from hepc.train.model import GPT, GPTConfig
from hepc.train.setup import CycleInterrupted, perturb_weights

VOCAB, SEQ_LEN = 17, 16
MODEL = {"n_layer": 1, "d_model": 32, "n_head": 2, "dropout": 0.1}
OPTIMIZER = {
    "kind": "adamw",
    "lr": 1e-2,
    "weight_decay": 0.1,
    "batch_tokens": 128,  # 8 sequences of 16
    "grad_clip": 1.0,
    "betas": [0.9, 0.95],
    "eps": 1e-8,
}
CYCLIC = {"kind": "cyclic", "lr_floor": 0.08, "wd_floor": 0.7}
DISTILL = {"alpha": 0.45, "temperature": 1.2}
RUNTIME = {
    "device": "cpu",
    "dtype": "float32",
    "threads": 2,
    "compile": False,
    "checkpoint_every_steps": 0,
    "log_every_steps": 1,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return counting_corpus(tmp_path_factory.mktemp("corpus"), VOCAB)


def run(corpus, out, *, cycle_index=1, prev=None, distill=None, perturb=0.0, seed=1, work=None, model=MODEL,
        **runtime):  # fmt: skip
    return train_cycle(
        model=model,
        optimizer=OPTIMIZER,
        schedule=runtime.pop("schedule", CYCLIC),
        distill=distill,
        perturb_scale=perturb,
        cycle_index=cycle_index,
        trajectory_seed=seed,
        epochs_per_cycle=2.0,
        seq_len=SEQ_LEN,
        corpus_dir=corpus,
        prev_dir=prev,
        out_dir=out,
        work_dir=work if work is not None else out.parent / (out.name + "-work"),
        runtime={**RUNTIME, **runtime},
    )


@pytest.fixture(scope="module")
def cycle1(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("c1") / "out"
    return out, run(corpus, out)


def test_first_cycle_outputs_and_learning(cycle1):
    out, summary = cycle1
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "state.pt", "metrics.jsonl", "summary.json"}
    assert summary["steps"] == 32 and summary["tokens"] == 32 * 128 and summary["epochs"] == 2.0
    assert summary["global_step_end"] == 32 and summary["distilled"] is False
    assert json.loads((out / "summary.json").read_text()) == summary
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, 33))
    assert all(math.isfinite(m["loss"]) and m["kd"] is None for m in metrics)
    # cyclic schedule: peak LR / WD floor at the first step, near LR floor / WD peak at the last
    assert metrics[0]["lr"] == pytest.approx(1e-2) and metrics[0]["wd"] == pytest.approx(0.07)
    assert metrics[-1]["lr"] < 0.11 * 1e-2 and metrics[-1]["wd"] > 0.099
    # the +1 pattern is learnable: loss falls well below the uniform ln 17
    assert metrics[0]["loss"] == pytest.approx(math.log(VOCAB), abs=0.05)
    assert summary["final_loss"] < 0.6 * math.log(VOCAB)
    state = load_state(out / "state.pt")
    assert state["global_step"] == 32


def test_second_cycle_chains_distills_and_perturbs(corpus, cycle1, tmp_path):
    prev, _ = cycle1
    out = tmp_path / "c2"
    seen = []
    summary = train_cycle(
        model=MODEL, optimizer=OPTIMIZER, schedule=CYCLIC, distill=DISTILL, perturb_scale=0.25, cycle_index=2,
        trajectory_seed=1, epochs_per_cycle=2.0, seq_len=SEQ_LEN, corpus_dir=corpus, prev_dir=prev,
        out_dir=out, work_dir=tmp_path / "w", runtime={**RUNTIME, "log_every_steps": 10}, progress=seen.append,
    )  # fmt: skip
    assert summary["global_step_end"] == 64 and summary["distilled"] and summary["perturb_scale"] == 0.25
    metrics = read_metrics(out)
    # progress: the first step at once (a rate and an ETA early), losses at the logged steps, CE and KD apart
    assert seen[0]["step"] == 1 and "loss" not in seen[0]
    assert [m["step"] for m in metrics] == [10, 20, 30, 32] == [p["step"] for p in seen if "loss" in p]
    assert all(p["steps"] == 32 and p["start_step"] == 0 for p in seen)
    assert [(p["ce"], p["kd"]) for p in seen if "loss" in p] == [(m["ce"], m["kd"]) for m in metrics]
    tail = [m for m in metrics if m["step"] > 32 - 3]  # the last tenth, as final_loss: logged steps 30 and 32
    assert summary["final_ce"] == pytest.approx(sum(m["ce"] for m in tail) / 2)
    assert summary["final_kd"] == pytest.approx(sum(m["kd"] for m in tail) / 2)
    assert all(m["kd"] is not None and m["kd"] >= 0 and math.isfinite(m["loss"]) for m in metrics)
    assert metrics[-1]["loss"] == pytest.approx(0.55 * metrics[-1]["ce"] + 0.45 * metrics[-1]["kd"], rel=1e-5)
    # the optimizer state was carried over, not reset: Adam's step counter keeps running
    opt_state = load_state(out / "state.pt")["optimizer"]["state"]
    assert all(int(s["step"]) == 64 for s in opt_state.values())
    assert summary["final_loss"] < 0.6 * math.log(VOCAB)


def test_teacher_is_the_unperturbed_predecessor(corpus, cycle1, tmp_path):
    prev, _ = cycle1
    no_dropout = {**MODEL, "dropout": 0.0}
    chained = dict(cycle_index=2, prev=prev, distill=DISTILL, model=no_dropout)
    run(corpus, tmp_path / "clean", **chained)
    run(corpus, tmp_path / "noisy", perturb=0.25, **chained)
    clean, noisy = read_metrics(tmp_path / "clean"), read_metrics(tmp_path / "noisy")
    assert clean[0]["kd"] < 1e-6  # student starts as an exact copy of the teacher
    assert noisy[0]["kd"] > 1e-4  # only the student was perturbed


def test_same_inputs_give_identical_weights(corpus, cycle1, tmp_path):
    out, _ = cycle1
    run(corpus, tmp_path / "again")
    assert_same_outputs(out, tmp_path / "again")
    run(corpus, tmp_path / "other-seed", seed=2)
    a, b = load_weights(out / "model.safetensors"), load_weights(tmp_path / "other-seed" / "model.safetensors")
    assert not torch.equal(a["wte.weight"], b["wte.weight"])


@pytest.mark.parametrize("checkpoint_every,stop_after", [(0, 13), (5, 17)])
def test_resumed_cycle_equals_uninterrupted(corpus, cycle1, tmp_path, checkpoint_every, stop_after):
    prev, _ = cycle1
    chained = dict(cycle_index=2, prev=prev, distill=DISTILL, perturb=0.25)  # dropout, noise and teacher all on
    run(corpus, tmp_path / "straight", **chained)

    work = tmp_path / "work"
    with pytest.raises(CycleInterrupted):
        run(corpus, tmp_path / "resumed", work=work, checkpoint_every_steps=checkpoint_every,
            stop_after_steps=stop_after, **chained)  # fmt: skip
    assert (work / "ckpt.pt").exists() and not (tmp_path / "resumed").exists()
    assert load_state(work / "ckpt.pt")["step"] == stop_after
    torch.manual_seed(12345)  # whatever the process RNG is now, the resume restores its own
    run(corpus, tmp_path / "resumed", work=work, checkpoint_every_steps=checkpoint_every, **chained)
    assert_same_outputs(tmp_path / "straight", tmp_path / "resumed")


def test_constant_schedule(corpus, tmp_path):
    summary = run(corpus, tmp_path / "const", schedule={"kind": "constant", "warmdown": 0.25})
    lrs = [m["lr"] for m in read_metrics(tmp_path / "const")]
    assert lrs[:25] == [1e-2] * 25 and lrs[-1] == pytest.approx(1e-2 / 8)
    assert summary["final_loss"] < 0.6 * math.log(VOCAB)


def test_perturbation_noise_scale_and_determinism():
    def perturbed(seed):
        torch.manual_seed(0)
        model = GPT(GPTConfig(VOCAB, 1, 32, 2, seq_len=SEQ_LEN))
        perturb_weights(model, 0.25, seed)
        return model

    torch.manual_seed(0)
    base = GPT(GPTConfig(VOCAB, 1, 32, 2, seq_len=SEQ_LEN)).state_dict()
    a, b, c = perturbed(7).state_dict(), perturbed(7).state_dict(), perturbed(8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["wte.weight"], c["wte.weight"])
    noise = a["wte.weight"] - base["wte.weight"]
    assert noise.std().item() == pytest.approx(0.25 * base["wte.weight"].std().item(), rel=0.1)
    assert torch.equal(a["blocks.0.attn.c_proj.weight"], base["blocks.0.attn.c_proj.weight"])  # std 0 → no noise


def test_missing_predecessor_is_an_error(corpus, tmp_path):
    with pytest.raises(ValueError, match="prev_dir"):
        run(corpus, tmp_path / "x", cycle_index=2, distill=DISTILL)
