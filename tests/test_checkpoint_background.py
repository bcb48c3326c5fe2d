"""Mid-cycle checkpoints that do not stall training: a snapshot in host memory written by a background
thread (digested as it is written), the wall-time cadence, and the exact resume from such a checkpoint."""

from __future__ import annotations

import errno
import threading

import pytest
import torch
from train_helpers import assert_same_outputs, counting_corpus

from hepc.store.ckpt_digest import SIDECAR, check_digest, file_digest
from hepc.train.checkpoint import BackgroundWriter, load_state, save_state_hashed, snapshot
from hepc.train.loop import train_cycle

VOCAB, SEQ_LEN = 17, 16
MODEL = {"n_layer": 1, "d_model": 32, "n_head": 2, "dropout": 0.1}
OPTIMIZER = {"kind": "adamw", "lr": 1e-2, "weight_decay": 0.1, "batch_tokens": 128, "grad_clip": 1.0,
             "betas": [0.9, 0.95], "eps": 1e-8}  # fmt: skip
RUNTIME = {"device": "cpu", "dtype": "float32", "threads": 2, "compile": False, "checkpoint_every_steps": 0,
           "log_every_steps": 5}  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return counting_corpus(tmp_path_factory.mktemp("corpus"), VOCAB)


def run(corpus, out, work, guard=None, **runtime):
    return train_cycle(
        model=MODEL, optimizer=OPTIMIZER, schedule={"kind": "cyclic", "lr_floor": 0.08, "wd_floor": 0.7},
        distill=None, perturb_scale=0.0, cycle_index=1, trajectory_seed=1, epochs_per_cycle=2.0, seq_len=SEQ_LEN,
        corpus_dir=corpus, prev_dir=None, out_dir=out, work_dir=work, runtime={**RUNTIME, **runtime}, guard=guard,
    )  # fmt: skip


def test_the_writer_runs_in_the_background_one_write_at_a_time():
    writer, started, release, order = BackgroundWriter(), threading.Event(), threading.Event(), []

    def slow():
        started.set()
        release.wait(10)
        order.append("first")

    writer.submit(slow)
    assert started.wait(10) and writer.busy  # submit returned while the write is still going on
    threading.Timer(0.2, release.set).start()
    writer.submit(lambda: order.append("second"))  # waits for the first write before it starts
    writer.wait()
    assert order == ["first", "second"] and not writer.busy

    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "/x/ckpt.pt")

    writer.submit(full_disk)
    with pytest.raises(OSError) as e:  # the error reaches the training thread, with its type
        writer.wait()
    assert e.value.errno == errno.ENOSPC
    writer.wait()  # raised once


def test_a_snapshot_does_not_follow_the_live_tensors_and_the_digest_is_taken_while_writing(tmp_path):
    live = {"w": torch.ones(1000), "nested": [torch.zeros(3)], "step": 4}
    copy = snapshot(live)
    live["w"].add_(1.0)
    live["nested"][0].fill_(7.0)
    assert torch.equal(copy["w"], torch.ones(1000)) and torch.equal(copy["nested"][0], torch.zeros(3))
    size, digest = save_state_hashed(copy, tmp_path / "ckpt.pt")
    assert (size, digest) == file_digest(tmp_path / "ckpt.pt")
    assert torch.equal(load_state(tmp_path / "ckpt.pt")["w"], torch.ones(1000))


def test_wall_time_cadence_checkpoints_at_logged_steps(corpus, tmp_path):
    """A cadence of (almost) no time: a checkpoint at every logged step but the last (5, 10, ..., 30 of 32),
    each complete before the next, and results equal to a cycle without them."""
    run(corpus, tmp_path / "plain", tmp_path / "plain-work")
    calls = []

    def guard():
        work = tmp_path / "work"
        calls.append(load_state(work / "ckpt.pt")["step"] if (work / "ckpt.pt").exists() else None)

    run(corpus, tmp_path / "timed", tmp_path / "work", guard=guard, checkpoint_every_minutes=1e-9)
    assert calls == [None, 5, 10, 15, 20, 25, 30]  # one guard per checkpoint (it sees the previous one), then outputs
    assert check_digest(tmp_path / "work" / "ckpt.pt") is None and (tmp_path / "work" / SIDECAR).exists()
    assert_same_outputs(tmp_path / "plain", tmp_path / "timed")


def test_a_checkpoint_written_in_the_background_resumes_exactly(corpus, tmp_path):
    """Checkpoints every 5 steps, each written while training goes on: the last one (step 30 of 32) holds
    step 30's state, not a later one, so a cycle resumed from it ends bit-identical to the first."""
    run(corpus, tmp_path / "first", tmp_path / "work", checkpoint_every_steps=5)
    assert load_state(tmp_path / "work" / "ckpt.pt")["step"] == 30
    seen = []
    train_cycle(
        model=MODEL, optimizer=OPTIMIZER, schedule={"kind": "cyclic", "lr_floor": 0.08, "wd_floor": 0.7},
        distill=None, perturb_scale=0.0, cycle_index=1, trajectory_seed=1, epochs_per_cycle=2.0, seq_len=SEQ_LEN,
        corpus_dir=corpus, prev_dir=None, out_dir=tmp_path / "again", work_dir=tmp_path / "work",
        runtime={**RUNTIME, "checkpoint_every_steps": 5}, progress=seen.append,
    )  # fmt: skip
    assert [p["step"] for p in seen if p["step"] > 30] and min(p["start_step"] for p in seen) == 30  # resumed
    assert_same_outputs(tmp_path / "first", tmp_path / "again")
