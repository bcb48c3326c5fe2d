"""Micro-batches with gradient accumulation (runtime.micro_batch): the optimizer step of the full batch (AdamW
and Muon, plain and distilled, to float32 rounding), exact resumes in micro-batches, activation
checkpointing and the chunked loss inside a real cycle, and the runtime settings never in a key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_helpers import assert_same_outputs, counting_corpus, read_metrics

from hepc.train.checkpoint import load_state, load_weights
from hepc.train.loop import train_cycle
from hepc.train.model import GPT, GPTConfig
from hepc.train.objective import Objective, accumulate, micro_batches, teacher_outputs
from hepc.train.optim import optimizer_from_params, set_lr_wd
from hepc.train.setup import CycleInterrupted

VOCAB, SEQ_LEN = 17, 16
MODEL = {"n_layer": 2, "d_model": 32, "n_head": 2, "dropout": 0.0}  # dropout off: masks depend on the micro-batch
OPTIMIZER = {"kind": "adamw", "lr": 1e-2, "weight_decay": 0.1, "batch_tokens": 128,  # 8 sequences a step
             "grad_clip": 1.0, "betas": [0.9, 0.95], "eps": 1e-8}  # fmt: skip
CYCLIC = {"kind": "cyclic", "lr_floor": 0.08, "wd_floor": 0.7}
DISTILL = {"alpha": 0.45, "temperature": 1.2}
RUNTIME = {"device": "cpu", "dtype": "float32", "threads": 2, "compile": False, "checkpoint_every_steps": 0,
           "log_every_steps": 1}  # fmt: skip
# float32 rounding: the micro-batches sum their gradients in another order. One optimizer step is then the
# same to float32 rounding for AdamW and Muon alike (test_one_step_...). Over a cycle Muon amplifies those
# last bits: it orthogonalises in bfloat16, and directions of small singular value turn with tiny changes
# of the gradient, so after a few steps its weights differ by ~1e-3 while the losses stay within 2e-4.
LOSS_TOL = {"adamw": {"rtol": 2e-5, "atol": 2e-6}, "muon": {"rtol": 2e-4, "atol": 2e-5}}
WEIGHT_TOL = {"rtol": 1e-4, "atol": 2e-5}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return counting_corpus(tmp_path_factory.mktemp("corpus"), VOCAB)


def run(corpus, out, *, kind="adamw", cycle_index=1, prev=None, model=MODEL, work=None, **runtime):
    chained = cycle_index > 1
    return train_cycle(
        model=model, optimizer={**OPTIMIZER, "kind": kind}, schedule=CYCLIC, distill=DISTILL if chained else None,
        perturb_scale=0.1 if chained else 0.0, cycle_index=cycle_index, trajectory_seed=1, epochs_per_cycle=1.0,
        seq_len=SEQ_LEN, corpus_dir=corpus, prev_dir=prev, out_dir=out,
        work_dir=work if work is not None else out.parent / (out.name + "-work"), runtime={**RUNTIME, **runtime},
    )  # fmt: skip


def assert_equivalent(a, b, keys=("loss", "ce"), kind="adamw"):
    """Same steps and losses; for AdamW also the weights and the optimizer state (its moments scale with the
    gradient: a missing 1/n would show there even where the update is scale-free), to float32 rounding."""
    ma, mb = read_metrics(a), read_metrics(b)
    assert [m["step"] for m in ma] == [m["step"] for m in mb] and len(ma) == 16
    for key in keys:
        np.testing.assert_allclose([m[key] for m in mb], [m[key] for m in ma], **LOSS_TOL[kind], err_msg=key)
    if kind == "muon":
        return
    weight_tol = WEIGHT_TOL
    wa, wb = load_weights(a / "model.safetensors"), load_weights(b / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], **weight_tol)
    sa, sb = load_state(a / "state.pt")["optimizer"], load_state(b / "state.pt")["optimizer"]
    for p, moments in sa["state"].items():
        for name, value in moments.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                torch.testing.assert_close(sb["state"][p][name], value, **weight_tol)


def test_accumulated_gradients_are_the_full_batch_gradients():
    """The optimizer step is a function of the gradients: micro-batches of 3, 3 and 2 rows (and of 1) give
    the full batch's, to float32 rounding, with full logits and with the chunked, distilled loss."""
    torch.manual_seed(0)
    config = GPTConfig(VOCAB, 2, 32, 2, 0.0, SEQ_LEN)
    net, teacher = GPT(config), GPT(config).eval().requires_grad_(False)
    x = torch.randint(0, VOCAB, (8, SEQ_LEN))
    y = torch.randint(0, VOCAB, (8, SEQ_LEN))
    for chunk in (0, 24):
        objective = Objective(net, chunk_tokens=chunk, alpha=0.45, temperature=1.2)
        fwd = teacher.hidden if chunk else teacher

        def forward(xm, ym, objective=objective, fwd=fwd, chunk=chunk):
            return objective(xm, ym, teacher_outputs(fwd, xm, bool(chunk), teacher.lm_head.weight))

        results = {}
        for micro in (8, 3, 1):
            net.zero_grad(set_to_none=True)
            losses = accumulate(forward, x, y, micro)
            results[micro] = (losses, {n: p.grad.clone() for n, p in net.named_parameters()})
        (full_losses, full), *_ = results.values()
        for micro in (3, 1):
            losses, grads = results[micro]
            for a, b in zip(losses, full_losses):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
            for name in full:
                torch.testing.assert_close(grads[name], full[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_one_step_in_micro_batches_is_the_full_batch_step(kind):
    """From the same weights and optimizer state, one optimizer step on gradients accumulated over 3 + 3 + 2
    rows gives the weights and optimizer state of the full-batch step, to float32 rounding."""
    torch.manual_seed(0)
    base = GPT(GPTConfig(VOCAB, 2, 32, 2, 0.0, SEQ_LEN))
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))  # non-trivial gradients into every matrix
    x, y = torch.randint(0, VOCAB, (8, SEQ_LEN)), torch.randint(0, VOCAB, (8, SEQ_LEN))
    after = {}
    for micro in (8, 3):
        net = GPT(base.config)
        net.load_state_dict(base.state_dict())
        opt = optimizer_from_params(net, {**OPTIMIZER, "kind": kind})
        objective = Objective(net)
        set_lr_wd(opt, 1e-2, 0.1, 1.0)
        accumulate(objective, x, y, micro)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        state = opt.state_dict()
        after[micro] = ({k: v.clone() for k, v in net.state_dict().items()}, state)
    (w_full, s_full), (w_micro, s_micro) = after[8], after[3]
    for k in w_full:
        torch.testing.assert_close(w_micro[k], w_full[k], rtol=1e-5, atol=1e-6, msg=k)
    moments = [(s_full, s_micro)] if kind == "adamw" else [(s_full["adamw"], s_micro["adamw"]),
                                                            (s_full["muon"], s_micro["muon"])]  # fmt: skip
    for full, micro in moments:
        for p, values in full["state"].items():
            for name, value in values.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    torch.testing.assert_close(micro["state"][p][name], value, rtol=1e-5, atol=1e-8, msg=name)


def test_micro_batch_slices_cover_every_row_once():
    assert micro_batches(8, 3) == [slice(0, 3), slice(3, 6), slice(6, 8)]
    assert micro_batches(8, 8) == micro_batches(8, 100) == [slice(0, 8)]
    assert micro_batches(1, 1) == [slice(0, 1)]


@pytest.fixture(scope="module")
def full_batch(corpus, tmp_path_factory):
    """Whole-batch references per optimizer: cycle 1, and a distilled, perturbed cycle 2 from it."""
    root = tmp_path_factory.mktemp("full")
    for kind in ("adamw", "muon"):
        run(corpus, root / f"{kind}-c1", kind=kind)
        run(corpus, root / f"{kind}-c2", kind=kind, cycle_index=2, prev=root / f"{kind}-c1")
    return root


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_micro_batches_train_like_the_full_batch(corpus, full_batch, tmp_path, kind):
    """3 + 3 + 2 rows (an uneven last micro-batch): each loss weighted by its share of the rows."""
    run(corpus, tmp_path / "c1", kind=kind, micro_batch=3)
    assert_equivalent(full_batch / f"{kind}-c1", tmp_path / "c1", kind=kind)


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_distilled_micro_batches_train_like_the_full_batch(corpus, full_batch, tmp_path, kind):
    run(corpus, tmp_path / "c2", kind=kind, cycle_index=2, prev=full_batch / f"{kind}-c1", micro_batch=2)
    assert_equivalent(full_batch / f"{kind}-c2", tmp_path / "c2", keys=("loss", "ce", "kd"), kind=kind)


def test_micro_batches_resume_exactly(corpus, full_batch, tmp_path):
    """Dropout, perturbation, the teacher and micro-batches of 3 rows all on: stopped after its
    checkpoint and resumed, bit for bit the uninterrupted cycle."""
    chained = {"kind": "adamw", "cycle_index": 2, "prev": full_batch / "adamw-c1", "model": {**MODEL, "dropout": 0.1},
               "micro_batch": 3}
    run(corpus, tmp_path / "straight", **chained)
    work = tmp_path / "work"
    with pytest.raises(CycleInterrupted):
        run(corpus, tmp_path / "resumed", work=work, checkpoint_every_steps=4, stop_after_steps=6, **chained)
    assert load_state(work / "ckpt.pt")["step"] == 6
    torch.manual_seed(12345)
    run(corpus, tmp_path / "resumed", work=work, checkpoint_every_steps=4, **chained)
    assert_same_outputs(tmp_path / "straight", tmp_path / "resumed")


def test_activation_checkpointing_changes_nothing_but_memory(corpus, full_batch, tmp_path):
    """Recomputed blocks replay their dropout masks (torch.utils.checkpoint keeps the RNG state): bit for bit."""
    model = {**MODEL, "dropout": 0.1}
    run(corpus, tmp_path / "plain", model=model)
    run(corpus, tmp_path / "recomputed", model=model, activation_checkpointing=True)
    assert_same_outputs(tmp_path / "plain", tmp_path / "recomputed")


def test_chunked_loss_trains_like_full_logits(corpus, full_batch, tmp_path):
    """The loss in chunks of 24 tokens (not a divisor of the 64 tokens of a micro-batch), CE and KD together."""
    run(corpus, tmp_path / "c2", cycle_index=2, prev=full_batch / "adamw-c1", loss_chunk_tokens=24, micro_batch=4)
    assert_equivalent(full_batch / "adamw-c2", tmp_path / "c2", keys=("loss", "ce", "kd"))


def test_a_micro_batch_that_cannot_fit_the_device_fails_the_cycle(corpus, tmp_path):
    """The step itself checks the device it got (hepc validate / run check the planned one before)."""
    with pytest.raises(MemoryError, match=r"micro-batches of 8 sequences needs about .* usable of .* CPU memory"):
        run(corpus, tmp_path / "c1", device_memory_gb=1e-4, micro_batch=8, activation_checkpointing=False)
    assert not (tmp_path / "c1").exists() and not (tmp_path / "c1-work").exists()
