"""The GPU path's switches, checked where the CPU can check them: fused AdamW only on CUDA, pinned
asynchronous batches only on CUDA, bf16 only on CUDA (a bfloat16 runtime on the CPU is float32, bit
for bit), scoring under inference mode equal to a plain reference, torch.compile equal to eager."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from train_helpers import assert_same_outputs, counting_corpus, read_metrics

from hepc.train.batches import to_device
from hepc.train.checkpoint import load_state, load_weights, save_weights
from hepc.train.loop import train_cycle
from hepc.train.model import GPT, GPTConfig, precision_context
from hepc.train.optim import optimizer_from_params
from hepc.train.score import load_net, logit_ensemble_losses, score_tokens

VOCAB, SEQ_LEN = 17, 16
MODEL = {"n_layer": 1, "d_model": 32, "n_head": 2, "dropout": 0.1}
OPTIMIZER = {"kind": "adamw", "lr": 1e-2, "weight_decay": 0.1, "batch_tokens": 128, "grad_clip": 1.0,
             "betas": [0.9, 0.95], "eps": 1e-8}  # fmt: skip
CYCLIC = {"kind": "cyclic", "lr_floor": 0.08, "wd_floor": 0.7}
RUNTIME = {"device": "cpu", "dtype": "float32", "threads": 2, "compile": False, "checkpoint_every_steps": 0,
           "log_every_steps": 1}  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return counting_corpus(tmp_path_factory.mktemp("corpus"), VOCAB)


def run(corpus, out: Path, *, model=MODEL, optimizer=OPTIMIZER, epochs=2.0, **runtime) -> dict:
    return train_cycle(
        model=model, optimizer=optimizer, schedule=CYCLIC, distill=None, perturb_scale=0.0, cycle_index=1,
        trajectory_seed=1, epochs_per_cycle=epochs, seq_len=SEQ_LEN, corpus_dir=corpus, prev_dir=None, out_dir=out,
        work_dir=out.parent / (out.name + "-work"), runtime={**RUNTIME, **runtime},
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_fused_adamw_is_never_selected_on_cpu(kind):
    torch.manual_seed(0)
    net = GPT(GPTConfig(VOCAB, 1, 32, 2, seq_len=SEQ_LEN))
    opt = optimizer_from_params(net, {**OPTIMIZER, "kind": kind})
    adamw = opt if kind == "adamw" else opt.adamw
    assert all(not g["fused"] for g in adamw.param_groups)
    net(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    # a state saved by a fused (CUDA) optimizer does not turn a CPU optimizer fused when loaded
    state = adamw.state_dict()
    for group in state["param_groups"]:
        group["fused"] = True
    adamw.load_state_dict(state)
    assert all(not g["fused"] for g in adamw.param_groups)
    assert all(s["step"].device.type == "cpu" for s in adamw.state.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_adamw_on_cuda():
    net = GPT(GPTConfig(VOCAB, 1, 32, 2, seq_len=SEQ_LEN)).cuda()
    opt = optimizer_from_params(net, OPTIMIZER)
    assert all(g["fused"] for g in opt.param_groups)
    cpu_net = GPT(GPTConfig(VOCAB, 1, 32, 2, seq_len=SEQ_LEN))
    cpu_opt = optimizer_from_params(cpu_net, OPTIMIZER)
    cpu_net(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    cpu_opt.step()
    opt.load_state_dict(cpu_opt.state_dict())  # a state saved on the CPU keeps the CUDA optimizer fused
    assert all(g["fused"] for g in opt.param_groups)
    assert all(s["step"].device.type == "cuda" for s in opt.state.values())
    batch = to_device(np.arange(8, dtype=np.int64).reshape(2, 4), torch.device("cuda"))
    assert batch.device.type == "cuda" and batch.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_cpu_batches_are_the_arrays_themselves():
    array = np.arange(12, dtype=np.int64).reshape(3, 4)
    tensor = to_device(array, torch.device("cpu"))
    assert tensor.dtype == torch.int64 and not tensor.is_pinned()
    assert tensor.data_ptr() == array.ctypes.data  # no copy, as before


def test_bfloat16_runtime_on_cpu_is_float32(corpus, tmp_path):
    with precision_context(torch.device("cpu"), "bfloat16"):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    run(corpus, tmp_path / "fp32")
    run(corpus, tmp_path / "bf16", dtype="bfloat16")
    assert_same_outputs(tmp_path / "fp32", tmp_path / "bf16")


def test_trained_state_is_not_fused_on_cpu(corpus, tmp_path):
    run(corpus, tmp_path / "out", epochs=0.5)
    groups = load_state(tmp_path / "out" / "state.pt")["optimizer"]["param_groups"]
    assert groups and all(not g["fused"] for g in groups)


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """Two differently initialised snapshots of the scoring model and a token stream with a short last window."""
    path = tmp_path_factory.mktemp("snapshots")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = GPT(GPTConfig(VOCAB, 1, 32, 2, seq_len=SEQ_LEN))
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.3 * torch.randn_like(p))  # non-trivial predictions (the init's head is ~0)
        save_weights(net.state_dict(), path / f"m{seed}.safetensors")
        paths.append(path / f"m{seed}.safetensors")
    tokens = np.random.default_rng(0).integers(0, VOCAB, 16 * 21 + 6)  # 21 full windows and a short one
    return paths, tokens


def reference_logits(paths, tokens):
    """Each window on its own, in training mode's no_grad: the straightforward computation."""
    nets = [load_net(MODEL, p, VOCAB, SEQ_LEN, torch.device("cpu")) for p in paths]
    tokens = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    for start in range(0, len(tokens) - 1, SEQ_LEN):
        w = tokens[start : start + SEQ_LEN + 1][None]
        with torch.no_grad():
            yield w[:, 1:], [net(w[:, :-1]).float() for net in nets]


def test_scoring_equals_reference(snapshots):
    paths, tokens = snapshots
    got = score_tokens(model=MODEL, weights_path=paths[0], tokens=tokens, vocab_size=VOCAB, seq_len=SEQ_LEN,
                       runtime=RUNTIME)  # fmt: skip
    # the old batched computation (16 windows per batch under no_grad), bit for bit
    net = load_net(MODEL, paths[0], VOCAB, SEQ_LEN, torch.device("cpu"))
    want = []
    t = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    n_full = (len(t) - 1) // SEQ_LEN
    windows = [t[i * SEQ_LEN : i * SEQ_LEN + SEQ_LEN + 1] for i in range(n_full)]
    with torch.no_grad():
        for b in range(0, n_full, 16):
            w = torch.stack(windows[b : b + 16])
            p = torch.softmax(net(w[:, :-1]).float(), -1).gather(-1, w[:, 1:, None]).squeeze(-1)
            want.append(p.clamp_min(torch.finfo(torch.float32).tiny).reshape(-1))
        w = t[None, n_full * SEQ_LEN :]
        want.append(torch.softmax(net(w[:, :-1]).float(), -1).gather(-1, w[:, 1:, None]).reshape(-1))
    assert got.dtype == np.float32 and got.shape == (len(tokens) - 1,)
    assert np.array_equal(got, torch.cat(want).numpy())
    # one window at a time: the same up to float32 noise (the scores do not depend on the batch size)
    single = torch.cat([torch.softmax(z[0], -1).gather(-1, y[..., None]).reshape(-1)
                        for y, z in reference_logits(paths[:1], tokens)])  # fmt: skip
    np.testing.assert_allclose(got, single.numpy(), rtol=1e-5, atol=1e-7)
    other = score_tokens(model=MODEL, weights_path=paths[0], tokens=tokens, vocab_size=VOCAB, seq_len=SEQ_LEN,
                         runtime=RUNTIME, batch_seqs=5)  # fmt: skip
    np.testing.assert_allclose(got, other, rtol=1e-5, atol=1e-7)


def test_logit_ensemble_losses_equal_reference(snapshots):
    paths, tokens = snapshots
    ensembles = [[(0, 1.0)], [(0, 0.25), (1, 0.75)]]
    got = logit_ensemble_losses(model=MODEL, weights_paths=paths, ensembles=ensembles, tokens=tokens,
                                vocab_size=VOCAB, seq_len=SEQ_LEN, runtime=RUNTIME, batch_seqs=1)  # fmt: skip
    totals, count = [0.0, 0.0], 0
    for y, logits in reference_logits(paths, tokens):
        for j, ens in enumerate(ensembles):
            mixed = sum(weight * logits[i] for i, weight in ens)
            totals[j] += float(F.cross_entropy(mixed.flatten(0, 1), y.flatten(), reduction="sum").double())
        count += y.numel()
    assert got == [t / count for t in totals]  # same order of sums: bit for bit
    batched = logit_ensemble_losses(model=MODEL, weights_paths=paths, ensembles=ensembles, tokens=tokens,
                                    vocab_size=VOCAB, seq_len=SEQ_LEN, runtime=RUNTIME)  # fmt: skip
    assert batched == pytest.approx(got, rel=1e-6)
    assert got[0] != got[1]


@pytest.mark.slow  # torch.compile of a cycle on the CPU (~20 s); the GPU benchmark (bench/gpu.sh) compiles on the device
def test_compile_gives_eager_losses(corpus, tmp_path):
    """runtime.compile: torch.compile builds C++ kernels on the CPU (~20 s here, cold cache, 2 cores)."""
    no_dropout = {**MODEL, "dropout": 0.0}  # compiled dropout draws other masks than eager
    eager = run(corpus, tmp_path / "eager", model=no_dropout)
    compiled = run(corpus, tmp_path / "compiled", model=no_dropout, compile=True)
    a, b = read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "compiled")
    assert [m["step"] for m in a] == [m["step"] for m in b] == list(range(1, 33))
    np.testing.assert_allclose([m["loss"] for m in b], [m["loss"] for m in a], rtol=1e-4, atol=1e-5)
    assert compiled["final_loss"] == pytest.approx(eager["final_loss"], rel=1e-4)
    wa, wb = (load_weights(tmp_path / name / "model.safetensors") for name in ("eager", "compiled"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-3, atol=1e-4)
    assert json.loads((tmp_path / "compiled" / "summary.json").read_text())["steps"] == 32


def test_scoring_in_chunks_through_cross_entropy_equals_the_full_softmax(snapshots):
    """runtime.loss_chunk_tokens > 0 (the CUDA default): exp(−cross_entropy(reduction='none')) over chunks of
    tokens from the hidden states, never a (B, t, V) softmax: the same probabilities to float32 rounding."""
    paths, tokens = snapshots
    exact = score_tokens(model=MODEL, weights_path=paths[0], tokens=tokens, vocab_size=VOCAB, seq_len=SEQ_LEN,
                         runtime=RUNTIME)  # fmt: skip
    for chunk in (7, 16, 1000):
        chunked = score_tokens(model=MODEL, weights_path=paths[0], tokens=tokens, vocab_size=VOCAB, seq_len=SEQ_LEN,
                               runtime={**RUNTIME, "loss_chunk_tokens": chunk})  # fmt: skip
        assert chunked.dtype == np.float32 and chunked.shape == exact.shape
        np.testing.assert_allclose(chunked, exact, rtol=2e-6, atol=1e-8)


def test_logit_ensembles_stream_their_members(snapshots):
    """Snapshots reloaded for every batch of windows (no room to keep them) give the resident result bit for
    bit: each ensemble sums one member's logits at a time, in its own order."""
    paths, tokens = snapshots
    ensembles = [[(1, 0.6), (0, 0.4)], [(1, 1.0)]]
    args = {"model": MODEL, "weights_paths": paths, "ensembles": ensembles, "tokens": tokens, "vocab_size": VOCAB,
            "seq_len": SEQ_LEN, "runtime": RUNTIME, "batch_seqs": 4}
    resident = logit_ensemble_losses(**args)
    streamed = logit_ensemble_losses(**args, resident_bytes=0)
    assert streamed == resident and resident[0] != resident[1]


def test_deterministic_mode_is_exact_on_cpu_and_restored_after(corpus, tmp_path):
    """runtime.deterministic asks torch for deterministic kernels during the cycle only (steps may share a
    process); CPU results are bit-exact either way."""
    assert not torch.are_deterministic_algorithms_enabled()
    run(corpus, tmp_path / "plain", epochs=0.5)
    run(corpus, tmp_path / "deterministic", epochs=0.5, deterministic=True)
    assert not torch.are_deterministic_algorithms_enabled()
    assert_same_outputs(tmp_path / "plain", tmp_path / "deterministic")


def test_model_flops_count_attention_and_the_teacher_but_not_the_input_embedding():
    from hepc.sizes import model_flops_per_token, param_count

    V, L, d, T = 50257, 30, 2048, 2048
    matmuls = param_count(V, L, d) - V * d  # blocks and the output head
    assert model_flops_per_token(V, L, d, T) == 6 * matmuls + 12 * L * d * T
    assert model_flops_per_token(V, L, d, T, teacher=True) == pytest.approx(4 / 3 * model_flops_per_token(V, L, d, T))
    assert 0.12 < 12 * L * d * T / model_flops_per_token(V, L, d, T) < 0.2  # attention: 13-18 % of the FLOPs


def test_gpu_benchmarks_refuse_to_run_without_a_gpu_and_the_paper_bench_runs_its_smoke_shape():
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    if shutil.which("nvidia-smi") is None:
        out = subprocess.run(["bash", "bench/gpu.sh"], cwd=root, capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 2 and "nothing was run" in out.stderr
    if not torch.cuda.is_available():
        out = subprocess.run([sys.executable, "bench/gpu_paper.py"], cwd=root, capture_output=True, text=True,
                             timeout=120, check=False)  # fmt: skip
        assert out.returncode == 2 and "needs a CUDA GPU" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "bench/gpu_paper.py", "--smoke", "--layers", "1", "--steps", "3"], cwd=root,
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    ce, distilled = result["cycles"]
    assert (ce["kind"], distilled["kind"]) == ("ce", "distilled") and ce["steps"] == distilled["steps"] == 3
    assert distilled["model_flops_per_token"] == pytest.approx(4 / 3 * ce["model_flops_per_token"])
    assert ce["tokens_per_s"] > 0 and ce["estimated_bytes"] > 0 and ce["micro_batch"] == ce["rows_per_gpu"] == 32
