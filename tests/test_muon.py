"""optimizer.kind muon: the orthogonalised update, the parameter split, training, exact resume, keys."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from cli_helpers import TINY, executed, hepc
from torch import nn
from train_helpers import counting_corpus, read_metrics

from hepc.compile.compiler import compile_spec
from hepc.errors import SpecError
from hepc.spec.load import load_spec
from hepc.train.checkpoint import load_state, load_weights
from hepc.train.loop import train_cycle
from hepc.train.model import GPT, GPTConfig
from hepc.train.muon import Muon, muon_class, orthogonalize
from hepc.train.optim import MuonAdamW, hidden_matrices, optimizer_from_params, set_lr_wd
from hepc.train.setup import CycleInterrupted

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------- the orthogonalised update


def spread_matrix(rows: int, cols: int, condition: float = 100.0, seed: int = 0) -> torch.Tensor:
    """A random rows × cols matrix whose singular values run log-evenly from 1 down to 1/condition."""
    g = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=g))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=g))
    return u @ torch.diag(torch.logspace(0, -math.log10(condition), k)) @ v.T


def muon_step_direction(cls: type[torch.optim.Optimizer], grad: torch.Tensor) -> torch.Tensor:
    """The update one Muon step (lr 1, no decay) applies to a zero matrix with gradient `grad`,
    divided by the √max(1, rows/cols) factor it should carry."""
    p = nn.Parameter(torch.zeros_like(grad))
    opt = cls([p], lr=1.0, weight_decay=0.0, momentum=0.95, nesterov=True, ns_steps=5)
    p.grad = grad.clone()
    opt.step()
    rows, cols = grad.shape
    return -p.detach() / math.sqrt(max(1.0, rows / cols))


def singular_values(m: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(m.float())


IMPLEMENTATIONS = [pytest.param(muon_class(), id="used")]
if muon_class() is not Muon:
    IMPLEMENTATIONS.append(pytest.param(Muon, id="hepc-fallback"))


@pytest.mark.parametrize("cls", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", [(64, 32), (32, 64)])
def test_update_is_orthogonalised(cls, shape):
    """NS5 maps every singular value into a band around 1 (measured 0.68 to 1.14), keeping the singular
    vectors: a gradient with singular values spread over 100× becomes one with max/min < 1.75."""
    grad = spread_matrix(*shape)
    raw = singular_values(grad)
    assert raw.max() / raw.min() > 90  # the test input is far from orthogonal
    update = muon_step_direction(cls, grad)
    s = singular_values(update)
    assert s.min() > 0.6 and s.max() < 1.2, s
    assert s.max() / s.min() < 1.75 and ((s / s.mean() - 1).abs() < 0.4).all(), s
    assert not (raw.min() > 0.6 and raw.max() < 1.2)  # the same bounds reject the raw gradient
    # same singular vectors as the gradient: Uᵀ·update·V is (nearly) diagonal
    u, _, vh = torch.linalg.svd(grad, full_matrices=False)
    core = u.T @ update.float() @ vh.T
    off_diagonal = core - torch.diag(torch.diagonal(core))
    assert off_diagonal.norm() < 0.05 * core.norm()


def test_gaussian_gradient_and_the_rectangular_scale():
    """A Gaussian matrix's singular values spread ~5× (Marchenko–Pastur); after NS5 within ±40 % of
    their mean. A tall matrix's step is √(rows/cols) larger, a wide one's is not."""
    g = torch.Generator().manual_seed(1)
    for rows, cols in [(64, 32), (32, 64)]:
        grad = torch.randn(rows, cols, generator=g)
        raw = singular_values(grad)
        assert raw.max() / raw.min() > 3 and not ((raw / raw.mean() - 1).abs() < 0.4).all()
        s = singular_values(orthogonalize(grad))
        assert ((s / s.mean() - 1).abs() < 0.4).all() and 0.6 < s.min() and s.max() < 1.2, s
        p = nn.Parameter(torch.zeros(rows, cols))
        opt = muon_class()([p], lr=0.1, weight_decay=0.0)
        p.grad = grad
        opt.step()
        rms = p.detach().pow(2).mean().sqrt().item() / 0.1  # plain floats: pytest.approx never sees a tensor
        expected = singular_values(orthogonalize(grad)).pow(2).sum().div(rows * cols).sqrt().item()
        assert rms == pytest.approx(expected * math.sqrt(max(1.0, rows / cols)), rel=0.02)


@pytest.mark.skipif(muon_class() is Muon, reason="this torch has no torch.optim.Muon to compare with")
def test_fallback_matches_torch_muon():
    """hepc's Muon (for torch < 2.9) takes the same steps as torch.optim.Muon, with the same state and
    group settings, so either loads the other's state_dict."""
    torch.manual_seed(0)
    start = torch.randn(48, 16)
    params = [nn.Parameter(start.clone()), nn.Parameter(start.clone())]
    ours = Muon([params[0]], lr=0.02, weight_decay=0.5, momentum=0.9, nesterov=True, ns_steps=5)
    theirs = torch.optim.Muon([params[1]], lr=0.02, weight_decay=0.5, momentum=0.9, nesterov=True, ns_steps=5)
    for _ in range(4):
        grad = torch.randn(48, 16)
        for p, opt in zip(params, (ours, theirs)):
            p.grad = grad.clone()
            opt.step()
    torch.testing.assert_close(params[0].detach(), params[1].detach(), rtol=1e-3, atol=1e-4)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a["param_groups"] == b["param_groups"]
    torch.testing.assert_close(a["state"][0]["momentum_buffer"], b["state"][0]["momentum_buffer"])
    theirs.load_state_dict(a)  # and back


def test_decay_is_decoupled():
    """With zero gradient Muon's update is only the decay: W ← W·(1 − lr·wd)."""
    p = nn.Parameter(torch.full((4, 4), 2.0))
    opt = muon_class()([p], lr=0.02, weight_decay=0.5)
    p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((4, 4), 2.0 * (1 - 0.02 * 0.5)), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- which optimizer trains what


class Wrapped(nn.Module):
    """Stands in for DDP: the model is `.module`, its parameter names gain a `module.` prefix."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


MUON_SPEC = {"kind": "muon", "lr": 1e-3, "weight_decay": 0.1, "batch_tokens": 64, "betas": [0.9, 0.95], "eps": 1e-8}


@pytest.mark.parametrize("wrap", [False, True], ids=["model", "ddp-like-wrapper"])
def test_parameter_split(wrap):
    model = GPT(GPTConfig(17, 2, 32, 2, seq_len=16))
    # extras a block might have: a Linear with a bias and a norm gain (1-D)
    model.blocks[0].extra = nn.Linear(32, 32, bias=True)
    model.blocks[1].gain = nn.Parameter(torch.ones(32))
    opt = optimizer_from_params(Wrapped(model) if wrap else model, MUON_SPEC)
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    hidden = {
        f"blocks.{i}.{m}.weight" for i in (0, 1) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    assert in_muon == hidden | {"blocks.0.extra.weight"}
    assert in_adamw == {"wte.weight", "lm_head.weight", "blocks.0.extra.bias", "blocks.1.gain"}
    assert not (in_muon & in_adamw) and (in_muon | in_adamw) == set(names.values())  # each exactly once
    # AdamW keeps make_optimizer's groups: matrices decayed, vectors not
    decayed, plain = opt.adamw.param_groups
    assert {names[id(p)] for p in plain["params"]} == {"blocks.0.extra.bias", "blocks.1.gain"}
    assert decayed["decay"] and not plain["decay"] and plain["weight_decay"] == 0.0
    assert [n for n, _ in hidden_matrices(Wrapped(model))] == [n for n, _ in hidden_matrices(model)]


def test_schedule_sets_both_optimizers():
    model = GPT(GPTConfig(17, 1, 32, 2, seq_len=16))
    model.gain = nn.Parameter(torch.ones(32))
    opt = optimizer_from_params(model, {**MUON_SPEC, "muon_lr": 0.05})
    set_lr_wd(opt, 1e-3 * 0.25, 0.1 * 0.7, 0.25)
    assert [g["lr"] for g in opt.adamw.param_groups] == [1e-3 * 0.25] * 2
    assert [g["weight_decay"] for g in opt.adamw.param_groups] == [0.1 * 0.7, 0.0]
    assert [(g["lr"], g["weight_decay"]) for g in opt.muon.param_groups] == [(0.05 * 0.25, 0.1 * 0.7)]
    assert len(opt.param_groups) == 3  # AdamW's two, then Muon's
    with pytest.raises(ValueError, match="lr_mult"):
        set_lr_wd(opt, 1e-3, 0.1)  # without the multiplier Muon's LR would be left unscheduled
    with pytest.raises(ValueError, match="Muon"):
        opt.load_state_dict(optimizer_from_params(model, {**MUON_SPEC, "kind": "adamw"}).state_dict())


# ---------------------------------------------------------------------------- a cycle: carried state, exact resume

VOCAB, SEQ_LEN = 17, 16
MODEL = {"n_layer": 1, "d_model": 32, "n_head": 2, "dropout": 0.1}
OPTIMIZER = {
    "kind": "muon", "lr": 1e-2, "weight_decay": 0.1, "batch_tokens": 128, "grad_clip": 1.0, "betas": [0.9, 0.95],
    "eps": 1e-8, "muon_lr": 0.02, "muon_momentum": 0.95, "nesterov": True, "ns_steps": 5,
}  # fmt: skip
RUNTIME = {"device": "cpu", "dtype": "float32", "threads": 2, "compile": False, "checkpoint_every_steps": 0,
           "log_every_steps": 1}  # fmt: skip
DISTILL = {"alpha": 0.45, "temperature": 1.2}
HIDDEN = 4  # matrices Muon trains in a 1-layer GPT


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return counting_corpus(tmp_path_factory.mktemp("corpus"), VOCAB)


def run(corpus, out, *, cycle_index=1, prev=None, distill=None, perturb=0.0, work=None, **runtime):
    return train_cycle(
        model=MODEL, optimizer=OPTIMIZER, schedule={"kind": "cyclic", "lr_floor": 0.08, "wd_floor": 0.7},
        distill=distill, perturb_scale=perturb, cycle_index=cycle_index, trajectory_seed=1, epochs_per_cycle=2.0,
        seq_len=SEQ_LEN, corpus_dir=corpus, prev_dir=prev, out_dir=out,
        work_dir=work if work is not None else out.parent / (out.name + "-work"), runtime={**RUNTIME, **runtime},
    )  # fmt: skip


@pytest.fixture(scope="module")
def cycle1(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("c1") / "out"
    return out, run(corpus, out)


def assert_equal_tree(a, b, where="state"):
    """Bit-for-bit equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_equal_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_cycle_learns_and_carries_muon_state(corpus, cycle1, tmp_path):
    out, summary = cycle1
    metrics = read_metrics(out)
    assert metrics[0]["loss"] == pytest.approx(math.log(VOCAB), abs=0.05)
    assert summary["final_loss"] < 0.6 * math.log(VOCAB)
    state = load_state(out / "state.pt")["optimizer"]
    assert state["kind"] == "muon"
    buffers = [s["momentum_buffer"] for s in state["muon"]["state"].values()]
    assert len(buffers) == HIDDEN and all(b.abs().sum() > 0 for b in buffers)
    assert all(int(s["step"]) == 32 for s in state["adamw"]["state"].values())  # wte, lm_head
    assert len(state["adamw"]["state"]) == 2
    # cycle 2 starts from cycle 1's optimizer state, never a fresh one
    run(corpus, tmp_path / "c2", cycle_index=2, prev=out, distill=DISTILL, perturb=0.25)
    state2 = load_state(tmp_path / "c2" / "state.pt")["optimizer"]
    assert all(int(s["step"]) == 64 for s in state2["adamw"]["state"].values())
    assert state2["muon"]["param_groups"][0]["lr"] == pytest.approx(
        0.02 * read_metrics(tmp_path / "c2")[-1]["lr"] / 1e-2
    )


@pytest.mark.parametrize("checkpoint_every,stop_after", [(0, 13), (5, 17)])
def test_resumed_muon_cycle_equals_uninterrupted(corpus, cycle1, tmp_path, checkpoint_every, stop_after):
    prev, _ = cycle1
    chained = {"cycle_index": 2, "prev": prev, "distill": DISTILL, "perturb": 0.25}  # dropout, noise, teacher on
    run(corpus, tmp_path / "straight", **chained)
    work = tmp_path / "work"
    with pytest.raises(CycleInterrupted):
        run(corpus, tmp_path / "resumed", work=work, checkpoint_every_steps=checkpoint_every,
            stop_after_steps=stop_after, **chained)  # fmt: skip
    ckpt = load_state(work / "ckpt.pt")
    assert ckpt["step"] == stop_after and len(ckpt["optimizer"]["muon"]["state"]) == HIDDEN
    torch.manual_seed(12345)  # whatever the process RNG is now, the resume restores its own
    run(corpus, tmp_path / "resumed", work=work, checkpoint_every_steps=checkpoint_every, **chained)
    a, b = tmp_path / "straight", tmp_path / "resumed"
    assert_equal_tree(load_weights(a / "model.safetensors"), load_weights(b / "model.safetensors"), "weights")
    assert_equal_tree(load_state(a / "state.pt"), load_state(b / "state.pt"))

    def exact(records):  # timing legitimately differs
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]

    assert exact(read_metrics(a)) == exact(read_metrics(b))


# ---------------------------------------------------------------------------- the CLI, keys and spec errors


def test_tiny_population_trains_with_muon_and_is_cached(tmp_path):
    store = tmp_path / "store"
    res = json.loads(hepc("run", TINY, "optimizer.kind=muon", "--json", "--quiet", store=store).stdout)
    assert len(res["members"]) == 4
    by = {(m["trajectory"], m["cycle"]): m["val_loss"] for m in res["members"]}
    assert all(by[(t, 2)] < by[(t, 1)] < math.log(257) for t in (1, 2))  # below uniform, and falling
    cycles = {p.name.rsplit("-", 1)[0]: p for p in (store / "objects" / "cycle").iterdir()}
    for name in ("t1-c001", "t2-c001"):
        losses = [m["loss"] for m in read_metrics(cycles[name])]
        assert all(b < a for a, b in itertools.pairwise(losses)) and losses[-1] < losses[0] - 0.4, losses
    state = load_state(cycles["t1-c002"] / "state.pt")["optimizer"]
    assert state["kind"] == "muon" and len(state["muon"]["state"]) == HIDDEN  # really trained with Muon
    again = json.loads(hepc("run", TINY, "optimizer.kind=muon", "--json", "--quiet", store=store).stdout)
    assert again == res and executed(store)[-1] == []


def cycle_keys(*overrides) -> dict:
    return {f"{s.kind}:{s.name}": s.key for s in compile_spec(load_spec(TINY, list(overrides))).graph}


def test_adamw_keys_unchanged_and_muon_keys_differ():
    golden = json.loads((ROOT / "tests" / "fixtures" / "tiny.keys.json").read_text())
    assert cycle_keys() == golden and cycle_keys("optimizer.kind=adamw") == golden
    muon = cycle_keys("optimizer.kind=muon")
    differ = {n for n in golden if golden[n] != muon[n]}
    assert {n for n in golden if n.startswith(("cycle:", "score:"))} <= differ
    assert not any(n.startswith("corpus:") for n in differ)
    # Muon's settings are in its keys (defaults included)
    params = cycle_optimizer("optimizer.kind=muon")
    assert params == {**golden_optimizer(), "kind": "muon", "muon_lr": 0.02, "muon_momentum": 0.95,
                      "nesterov": True, "ns_steps": 5}  # fmt: skip
    assert cycle_keys("optimizer.kind=muon", "optimizer.muon_lr=0.02") == muon
    for setting in ("optimizer.muon_lr=0.03", "optimizer.muon_momentum=0.9", "optimizer.nesterov=false",
                    "optimizer.ns_steps=6"):  # fmt: skip
        other = cycle_keys("optimizer.kind=muon", setting)
        assert {n for n in muon if muon[n] != other[n] and n.startswith("cycle:")} == {
            f"cycle:t{t}-c00{c}" for t in (1, 2) for c in (1, 2)
        }


def cycle_optimizer(*overrides) -> dict:
    """The `optimizer` params of the first cycle step of the tiny fixture."""
    return next(
        s.params["optimizer"] for s in compile_spec(load_spec(TINY, list(overrides))).graph if s.kind == "cycle"
    )


def golden_optimizer() -> dict:
    """The cycle steps' optimizer params of the tiny fixture (AdamW): exactly the pre-Muon fields."""
    params = cycle_optimizer()
    assert set(params) == {"kind", "lr", "weight_decay", "batch_tokens", "grad_clip", "betas", "eps"}
    return params


def test_muon_fields_need_kind_muon(tmp_path):
    spec = (
        Path(TINY)
        .read_text()
        .replace(
            "optimizer: {lr: 0.003, weight_decay: 0.1, batch_tokens: 512, grad_clip: 1.0}",
            "optimizer:\n  lr: 0.003\n  weight_decay: 0.1\n  batch_tokens: 512\n  muon_lr: 0.05\n  ns_steps: 4\n",
        )
    )
    path = tmp_path / "s.yaml"
    path.write_text(spec)
    with pytest.raises(SpecError) as e:
        load_spec(path)
    problems = {p.path: p for p in e.value.problems}
    assert set(problems) == {"optimizer.muon_lr", "optimizer.ns_steps"}
    line = spec.splitlines().index("  muon_lr: 0.05") + 1
    assert problems["optimizer.muon_lr"].where.startswith(f"{path}:{line}:")
    assert "kind muon" in problems["optimizer.muon_lr"].message
    path.write_text(spec.replace("optimizer:\n", "optimizer:\n  kind: muon\n"))
    assert load_spec(path).spec.optimizer.ns_steps == 4  # valid with kind muon
    # a resolved spec (a run record's spec.json) repeats every default: not an error with kind adamw
    path.write_text(spec.replace("  muon_lr: 0.05\n  ns_steps: 4\n", "  muon_lr: 0.02\n  ns_steps: 5\n"))
    assert load_spec(path).spec.optimizer.kind == "adamw"
    with pytest.raises(SpecError, match="optimizer.nesterov"):
        load_spec(TINY, ["optimizer.nesterov=false"])


def test_paper_spec_uses_muon():
    spec = load_spec(ROOT / "specs" / "paper-1.8b.yaml").spec
    assert spec.optimizer.kind == "muon"
    # the reference run's effective Muon LR: 0.04 × its 0.25 multiplier
    assert spec.optimizer.muon_settings() == {"muon_lr": 0.01, "muon_momentum": 0.95, "nesterov": True, "ns_steps": 5}
