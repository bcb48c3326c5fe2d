"""The GPT: parameter count, shapes, causality, determinism; AdamW groups; atomic checkpoints."""

import pytest
import torch

from hepc.sizes import param_count, state_shapes
from hepc.train.checkpoint import load_state, load_weights, save_state, save_weights
from hepc.train.model import GPT, GPTConfig
from hepc.train.optim import make_optimizer, set_lr_wd


@pytest.mark.parametrize("vocab,layers,d,heads", [(17, 1, 32, 2), (256, 2, 48, 4), (50304, 1, 64, 4)])
def test_param_count_matches_sizes(vocab, layers, d, heads):
    model = GPT(GPTConfig(vocab, layers, d, heads, dropout=0.1, seq_len=16))
    assert model.num_params() == param_count(vocab, layers, d)
    # what a member snapshot is checked against before it is loaded (use/ensemble.py)
    assert state_shapes(vocab, layers, d) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert all(p.dim() == 2 for p in model.parameters())  # no biases, no gains
    assert set(model.state_dict()) == {n for n, _ in model.named_parameters()}  # RoPE tables not saved


def test_forward_shape_dtype_and_causality():
    torch.manual_seed(0)
    model = GPT(GPTConfig(17, 2, 32, 2, dropout=0.0, seq_len=16)).eval()
    idx = torch.randint(0, 17, (3, 16))
    logits = model(idx)
    assert logits.shape == (3, 16, 17) and logits.dtype == torch.float32
    # train a bit so blocks are not the identity, then check position t ignores tokens after t
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 17
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_init_is_deterministic_given_seed():
    cfg = GPTConfig(17, 1, 32, 2, dropout=0.0, seq_len=16)
    torch.manual_seed(3)
    a = GPT(cfg).state_dict()
    torch.manual_seed(3)
    b = GPT(cfg).state_dict()
    torch.manual_seed(4)
    c = GPT(cfg).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["wte.weight"], c["wte.weight"])


def test_optimizer_groups_and_setter():
    model = GPT(GPTConfig(17, 1, 32, 2, seq_len=16))
    model.extra_gain = torch.nn.Parameter(torch.ones(32))  # a 1-D tensor must not be decayed
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.5, betas=[0.9, 0.95], eps=1e-8)
    decayed, plain = opt.param_groups
    assert decayed["decay"] and len(decayed["params"]) == len(list(model.parameters())) - 1
    assert plain["params"] == [model.extra_gain] and plain["weight_decay"] == 0.0
    set_lr_wd(opt, 0.01, 1.3)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]
    assert [g["weight_decay"] for g in opt.param_groups] == [1.3, 0.0]


def test_adamw_decay_is_decoupled():
    # With zero gradient AdamW's update is only the decay: p ← p·(1 − lr·wd).
    p = torch.nn.Parameter(torch.full((2, 2), 2.0))
    model = torch.nn.Module()
    model.w = p
    opt = make_optimizer(model, lr=0.1, weight_decay=0.5, betas=(0.9, 0.95), eps=1e-8)
    p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((2, 2), 2.0 * (1 - 0.1 * 0.5)))


def test_checkpoint_roundtrip_is_atomic_and_exact(tmp_path):
    model = GPT(GPTConfig(17, 1, 32, 2, seq_len=16))
    save_weights(model.state_dict(), tmp_path / "model.safetensors")
    loaded = load_weights(tmp_path / "model.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    state = {"rng": torch.get_rng_state(), "global_step": 7, "records": [{"loss": 1.5, "kd": None}]}
    save_state(state, tmp_path / "state.pt")
    back = load_state(tmp_path / "state.pt")
    assert back["global_step"] == 7 and back["records"] == state["records"]
    assert torch.equal(back["rng"], state["rng"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "state.pt"]  # no tmp files left
