"""Data-parallel cycles (runtime.gpus_per_step: 2, gloo ranks on the CPU): the same science as one process,
exact resumes (also after Ctrl-C, also across a change of N), clear errors, and never a process left over."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from train_helpers import assert_same_outputs, counting_corpus, read_metrics

from hepc.store.ckpt_digest import SIDECAR
from hepc.train import ddp
from hepc.train.checkpoint import load_state, load_weights
from hepc.train.loop import train_cycle
from hepc.train.setup import CycleInterrupted

ROOT = Path(__file__).resolve().parents[1]
LINUX = sys.platform.startswith("linux")  # /proc
VOCAB, SEQ_LEN = 17, 32
MODEL = {"n_layer": 1, "d_model": 32, "n_head": 2, "dropout": 0.0}
OPTIMIZER = {"kind": "adamw", "lr": 1e-2, "weight_decay": 0.1, "batch_tokens": 256,  # 8 sequences: 4 per rank
             "grad_clip": 1.0, "betas": [0.9, 0.95], "eps": 1e-8}  # fmt: skip
CYCLIC = {"kind": "cyclic", "lr_floor": 0.08, "wd_floor": 0.7}
DISTILL = {"alpha": 0.45, "temperature": 1.2}
RUNTIME = {"device": "cpu", "dtype": "float32", "threads": 1, "compile": False, "checkpoint_every_steps": 0,
           "log_every_steps": 1}  # fmt: skip
STEPS = 8  # 2048 tokens, one epoch, 256 tokens a step
LOSS_TOL = {"rtol": 1e-5, "atol": 1e-6}
WEIGHT_TOL = {"rtol": 1e-5, "atol": 1e-5}


def cycle(corpus, out, *, gpus, cycle_index=1, prev=None, model=MODEL, work=None, progress=None, **runtime):
    """Cycle 1 trains plain CE; cycle 2 distills from `prev` and perturbs it."""
    chained = cycle_index > 1
    return train_cycle(
        model=model, optimizer=OPTIMIZER, schedule=CYCLIC, distill=DISTILL if chained else None,
        perturb_scale=0.1 if chained else 0.0, cycle_index=cycle_index, trajectory_seed=1, epochs_per_cycle=1.0,
        seq_len=SEQ_LEN, corpus_dir=corpus, prev_dir=prev, out_dir=out,
        work_dir=work if work is not None else out.parent / (out.name + "-work"),
        runtime={**RUNTIME, "gpus_per_step": gpus, **runtime}, progress=progress,
    )  # fmt: skip


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def _children(parent: int | None = None) -> set[int]:
    """Live child processes of `parent` (default: this process) by a /proc scan, so also those that
    multiprocessing does not track; less multiprocessing's resource tracker, which `spawn` starts once
    and keeps for the session."""
    parent = os.getpid() if parent is None else parent
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is None or stat[1] != parent:
            continue
        try:
            if b"resource_tracker" not in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
        except OSError:
            pass  # gone meanwhile
    return found


@pytest.fixture(autouse=True)
def no_process_left():
    before = _children() if LINUX else set()
    yield
    assert multiprocessing.active_children() == []
    if LINUX:
        assert _children() - before == set()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return counting_corpus(tmp_path_factory.mktemp("corpus"), VOCAB)


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """The single-process references: cycle 1, and a distilled cycle 2 from it (dropout 0)."""
    root = tmp_path_factory.mktemp("runs")
    cycle(corpus, root / "c1-n1", gpus=1)
    cycle(corpus, root / "c2-n1", gpus=1, cycle_index=2, prev=root / "c1-n1")
    return root


def assert_equivalent(a: Path, b: Path, keys=("loss", "ce")) -> None:
    """Same steps, losses and weights to fp32 tolerance (the ranks reduce in another order)."""
    ma, mb = read_metrics(a), read_metrics(b)
    assert [m["step"] for m in ma] == [m["step"] for m in mb] == list(range(1, STEPS + 1))
    assert [m["lr"] for m in ma] == [m["lr"] for m in mb]
    for key in keys:
        np.testing.assert_allclose([m[key] for m in mb], [m[key] for m in ma], **LOSS_TOL, err_msg=key)
    wa, wb = load_weights(a / "model.safetensors"), load_weights(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], **WEIGHT_TOL)
    sa, sb = load_state(a / "state.pt"), load_state(b / "state.pt")
    assert sa["global_step"] == sb["global_step"]
    for p, moments in sa["optimizer"]["state"].items():
        torch.testing.assert_close(sb["optimizer"]["state"][p]["exp_avg"], moments["exp_avg"], **WEIGHT_TOL)


def test_two_ranks_train_like_one_process(corpus, runs, tmp_path):
    torch.set_num_threads(2)
    summary = cycle(corpus, tmp_path / "c1-n2", gpus=2, threads=None)  # the ranks share this process's 2 threads
    assert torch.get_num_threads() == 2  # and give them back
    assert_equivalent(runs / "c1-n1", tmp_path / "c1-n2")
    single = json.loads((runs / "c1-n1" / "summary.json").read_text())
    assert summary["final_loss"] == pytest.approx(single["final_loss"], rel=LOSS_TOL["rtol"], abs=LOSS_TOL["atol"])
    assert {k: v for k, v in summary.items() if k not in ("final_loss", "wall_s")} == {
        k: v for k, v in single.items() if k not in ("final_loss", "wall_s")
    }  # fmt: skip
    assert {p.name for p in (tmp_path / "c1-n2").iterdir()} == {
        "model.safetensors", "state.pt", "metrics.jsonl", "summary.json"
    }  # fmt: skip


def test_two_ranks_distill_like_one_process(corpus, runs, tmp_path):
    cycle(corpus, tmp_path / "c2-n2", gpus=2, cycle_index=2, prev=runs / "c1-n1")
    assert_equivalent(runs / "c2-n1", tmp_path / "c2-n2", keys=("loss", "ce", "kd"))
    assert all(m["kd"] > 0 for m in read_metrics(tmp_path / "c2-n2"))  # the perturbed student is not the teacher


def test_two_ranks_in_micro_batches_train_like_one_process(corpus, runs, tmp_path):
    """Each rank's 4 rows in micro-batches of 2 (gradients exchanged once a step, under no_sync before), and
    a distilled cycle in micro-batches of 3 + 1 with the chunked loss: the single process's full batch."""
    cycle(corpus, tmp_path / "c1", gpus=2, micro_batch=2)
    assert_equivalent(runs / "c1-n1", tmp_path / "c1")
    cycle(corpus, tmp_path / "c2", gpus=2, cycle_index=2, prev=runs / "c1-n1", micro_batch=3, loss_chunk_tokens=40)
    assert_equivalent(runs / "c2-n1", tmp_path / "c2", keys=("loss", "ce", "kd"))


def _count_gradient_exchanges(rank: ddp.Rank, payload: dict) -> list[int]:
    """In every rank (rank 0 in the test's process, rank 1 spawned): one step in 4 micro-batches through the
    loop's own DDP wrapper and `accumulate`, counting DDP's gradient all-reduces with a communication hook
    (the default all-reduce behind it). Returns the bucket indices exchanged."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    from hepc.train.model import GPT, GPTConfig
    from hepc.train.objective import Objective, accumulate

    torch.manual_seed(0)
    ranked = rank.wrap(Objective(GPT(GPTConfig(VOCAB, 1, 32, 2, 0.0, SEQ_LEN))))
    exchanged: list[int] = []

    def hook(state, bucket):
        exchanged.append(bucket.index())
        return default_hooks.allreduce_hook(None, bucket)

    ranked.register_comm_hook(None, hook)
    x = torch.randint(0, VOCAB, (4, SEQ_LEN), generator=torch.Generator().manual_seed(rank.rank))
    accumulate(ranked, x, x.roll(-1, 1), 1, ranked.no_sync if payload["no_sync"] else None)
    return exchanged


def _exchanges_in_rank_1(rank: ddp.Rank, payload: dict) -> None:
    _count_gradient_exchanges(rank, payload)


@pytest.mark.parametrize("no_sync", [True, False])
def test_micro_batches_exchange_gradients_once_per_step(no_sync):
    with ddp.launch(2, "cpu", _exchanges_in_rank_1, {"no_sync": no_sync}) as rank:
        exchanged = _count_gradient_exchanges(rank, {"no_sync": no_sync})
    buckets = sorted(set(exchanged))
    assert buckets and len(exchanged) == len(buckets) * (1 if no_sync else 4)


def test_wall_time_checkpoints_are_taken_by_every_rank_together(corpus, tmp_path):
    """runtime.checkpoint_every_minutes: rank 0's clock decides, at a logged step, for every rank (each
    rank's RNG state is gathered: a rank that disagreed would hang the gather)."""
    cycle(corpus, tmp_path / "out", gpus=2, work=tmp_path / "work", checkpoint_every_minutes=1e-9, log_every_steps=3)
    ckpt = load_state(tmp_path / "work" / "ckpt.pt")
    assert ckpt["step"] == 6 and len(ckpt["rng_ranks"]) == 2  # steps 3 and 6 of 8 (the last step needs none)


def test_ctrl_c_stops_every_rank_and_resumes_with_another_n(corpus, runs, tmp_path):
    """Ctrl-C reaches rank 0 (this process) after step 4: both ranks stop there, a checkpoint is written
    (with both ranks' RNG states), and since it does not depend on N, one process finishes the cycle."""
    work = tmp_path / "work"

    def ctrl_c_after_4(report):
        if report["step"] == 4:
            os.kill(os.getpid(), signal.SIGINT)  # rank 0 only: it must tell rank 1 to stop

    with pytest.raises(KeyboardInterrupt, match="after step 4 of 8"):
        cycle(
            corpus, tmp_path / "mixed", gpus=2, cycle_index=2, prev=runs / "c1-n1", work=work, progress=ctrl_c_after_4
        )
    assert {p.name for p in work.iterdir()} == {"ckpt.pt", SIDECAR, "progress.json"}
    ckpt = load_state(work / "ckpt.pt")
    assert ckpt["step"] == 4 and len(ckpt["rng_ranks"]) == 2  # rank 1 took part in the stop at step 4
    assert not torch.equal(ckpt["rng_ranks"][0][0], ckpt["rng_ranks"][1][0])  # each rank its own dropout stream
    seen = []
    cycle(corpus, tmp_path / "mixed", gpus=1, cycle_index=2, prev=runs / "c1-n1", work=work, progress=seen.append)
    assert [p["step"] for p in seen] == [5, 6, 7, 8]  # resumed, not restarted
    assert_equivalent(runs / "c2-n1", tmp_path / "mixed", keys=("loss", "ce", "kd"))


def test_stopped_cycle_resumes_exactly(corpus, runs, tmp_path):
    """With dropout on (each rank its own masks), a two-rank cycle stopped by stop_after_steps after its
    mid-cycle checkpoint and resumed is bit-identical to an uninterrupted one: every rank's dropout
    stream is in the checkpoint. The resume also shrugs off a Ctrl-C and a SIGTERM that reach rank 1."""
    chained = {"gpus": 2, "cycle_index": 2, "prev": runs / "c1-n1", "model": {**MODEL, "dropout": 0.1}}
    cycle(corpus, tmp_path / "straight", **chained)
    work = tmp_path / "work"
    with pytest.raises(CycleInterrupted):
        cycle(corpus, tmp_path / "resumed", work=work, stop_after_steps=3, **chained)
    assert load_state(work / "ckpt.pt")["step"] == 3 and not (tmp_path / "resumed").exists()

    seen = []

    def ctrl_c_to_rank_1(report):
        seen.append(report["step"])
        if report["step"] == 5:  # a terminal's Ctrl-C or a scheduler's SIGTERM: rank 1 leaves them to rank 0
            (child,) = multiprocessing.active_children()
            os.kill(child.pid, signal.SIGINT)
            os.kill(child.pid, signal.SIGTERM)

    torch.manual_seed(12345)  # whatever the process RNG is now, the resume restores its own
    cycle(corpus, tmp_path / "resumed", work=work, progress=ctrl_c_to_rank_1, **chained)
    assert seen == [4, 5, 6, 7, 8]
    assert_same_outputs(tmp_path / "straight", tmp_path / "resumed")


def test_rank_streams_resume_or_restart_deterministically():
    """A rank restores its own saved RNG state; from a checkpoint of another N it gets a seeded new stream."""
    rank1 = ddp.Rank(rank=1, world=2, device=torch.device("cpu"))
    assert ddp.rank_seed(7, 0) == 7 and len({ddp.rank_seed(7, 0), ddp.rank_seed(7, 1), ddp.rank_seed(7, 1, 3)}) == 3
    torch.manual_seed(1)
    saved = [[torch.get_rng_state(), None], [torch.manual_seed(2).get_state(), None]]
    expected = torch.rand(4)  # rank 1's saved stream
    torch.manual_seed(99)
    rank1.restore_rng(saved, seed=7, resumed_at=3)
    assert torch.equal(torch.rand(4), expected)
    rank1.restore_rng(saved[:1], seed=7, resumed_at=3)  # written by one process: no state for rank 1
    torch.manual_seed(ddp.rank_seed(7, 1, 3))
    reseeded = torch.rand(4)
    rank1.restore_rng(saved[:1], seed=7, resumed_at=3)
    assert torch.equal(torch.rand(4), reseeded) and not torch.equal(reseeded, expected)


def test_indivisible_batch_is_a_clear_error(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"batch of 3 sequences .* gpus_per_step = 2"):
        train_cycle(
            model=MODEL, optimizer={**OPTIMIZER, "batch_tokens": 96}, schedule=CYCLIC, distill=None, perturb_scale=0.0,
            cycle_index=1, trajectory_seed=1, epochs_per_cycle=1.0, seq_len=SEQ_LEN, corpus_dir=corpus, prev_dir=None,
            out_dir=tmp_path / "out", work_dir=tmp_path / "work", runtime={**RUNTIME, "gpus_per_step": 2},
        )  # fmt: skip
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_a_rank_that_dies_fails_the_cycle_at_once(corpus, tmp_path):
    def kill_rank_1(report):
        if report["step"] == 2:
            (child,) = multiprocessing.active_children()
            os.kill(child.pid, signal.SIGKILL)

    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"data-parallel rank 1 of 2 \(pid \d+\) was killed by SIGKILL"):
        cycle(corpus, tmp_path / "out", gpus=2, progress=kill_rank_1)
    assert time.monotonic() - started < 60  # not the collective timeout
    assert not (tmp_path / "out").exists()


def _fail_in_rank_1(rank: ddp.Rank, payload: dict) -> None:
    """A child target (module level: `spawn` imports it by name) that fails after joining the group."""
    raise ValueError(payload["message"])


def test_a_rank_that_raises_is_reported_by_name(tmp_path):
    with (
        pytest.raises(RuntimeError, match=r"data-parallel rank 1 of 2 failed: ValueError: no data here \(at "),
        ddp.launch(2, "cpu", _fail_in_rank_1, {"message": "no data here"}) as rank,
    ):
        assert rank.lead and rank.world == 2
        rank.mean(torch.ones(()))  # waits for rank 1, which is gone
    assert not dist.is_initialized()


def _sleep_in_rank_1(rank: ddp.Rank, payload: dict) -> None:
    """A child target busy outside any collective: only its parent's death can end it early."""
    time.sleep(payload["seconds"])


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_ranks_die_with_a_killed_rank_0(tmp_path):
    """kill -9 of the process that holds rank 0 (a worker, say) takes the other ranks with it, even one
    that is not waiting in a collective (which would fail anyway as rank 0's connection closes)."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests")!r}]
        from hepc.train import ddp
        from test_ddp import _sleep_in_rank_1

        if __name__ == "__main__":
            with ddp.launch(2, "cpu", _sleep_in_rank_1, {{"seconds": 60}}):
                print("up", flush=True)
                time.sleep(60)
    """)
    (tmp_path / "rank0.py").write_text(script)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "rank0.py")], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == b"up"
        (rank1,) = _children(proc.pid)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while (stat := _stat(rank1)) is not None and stat[0] != "Z":  # an orphan's zombie may stay unreaped
            assert time.monotonic() < deadline, "rank 1 outlived rank 0"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
