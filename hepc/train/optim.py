"""The optimizers (AdamW; Muon for the hidden matrices plus AdamW for the rest) and the per-step LR/WD setter."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from hepc.train.muon import muon_class

KINDS = ("adamw", "muon")
# The muon-only settings of the optimizer spec and their defaults (hepc.spec.models.Optimizer).
MUON_DEFAULTS = {"muon_lr": 0.02, "muon_momentum": 0.95, "nesterov": True, "ns_steps": 5}


def _adamw(
    params: list[nn.Parameter], lr: float, weight_decay: float, betas: Sequence[float], eps: float
) -> torch.optim.AdamW:
    decayed = [p for p in params if p.dim() >= 2]
    not_decayed = [p for p in params if p.dim() < 2]
    groups = [{"params": decayed, "weight_decay": weight_decay, "decay": True}]
    if not_decayed:
        groups.append({"params": not_decayed, "weight_decay": 0.0, "decay": False})
    # Fused AdamW (one kernel for all parameters, step counters on the device: no host sync) when every
    # parameter is on CUDA; never on the CPU, whose results must stay what they are (None: torch's default).
    fused = True if params and all(p.is_cuda for p in params) else None
    opt = torch.optim.AdamW(groups, lr=lr, betas=(betas[0], betas[1]), eps=eps, fused=fused)
    opt.register_load_state_dict_post_hook(partial(_keep_fused, fused=fused))
    return opt


def _keep_fused(opt: torch.optim.Optimizer, *, fused: bool | None) -> None:
    """load_state_dict takes the saved groups' settings, `fused` among them: a state saved on CUDA would turn
    a CPU optimizer fused (other numerics), one saved on the CPU would unfuse a CUDA one. Keep this optimizer's
    own choice, with the step counters where it needs them (fused: float32 on the parameter's device)."""
    for group in opt.param_groups:
        group["fused"] = fused
        for p in group["params"]:
            step = opt.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor):
                fixed = step.to(dtype=torch.float32, device=p.device) if fused else step.to(device="cpu")
                opt.state[p]["step"] = fixed


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: Sequence[float], eps: float
) -> torch.optim.AdamW:
    """Two groups: every ≥2-D tensor (including embeddings and lm_head) is decayed, 1-D tensors are not.

    torch's AdamW decays p ← p·(1 − lr·wd) apart from the Adam update (Loshchilov & Hutter 2019),
    the form docs/method.md §3.2 describes. Our GPT has no 1-D parameters, so the second group is usually absent.
    """
    return _adamw([p for p in model.parameters() if p.requires_grad], lr, weight_decay, betas, eps)


def unwrap(model: nn.Module) -> nn.Module:
    """The module itself under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def hidden_matrices(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The weights of the nn.Linear layers inside the transformer blocks (attention and MLP), by name.

    These are what Muon trains. The token embedding, the output head, biases and norm gains are not
    among them (Muon's orthogonalised update is meant for hidden-to-hidden maps, not for lookup
    tables, the logit layer or vectors).
    """
    net = unwrap(model)
    blocks = getattr(net, "blocks", None)
    if not isinstance(blocks, nn.Module):
        raise TypeError(f"Muon needs a model with transformer `blocks`; {type(net).__name__} has none")
    hidden = {id(m.weight) for m in blocks.modules() if isinstance(m, nn.Linear)}
    return [(name, p) for name, p in net.named_parameters() if id(p) in hidden and p.requires_grad]


class MuonAdamW:
    """Muon on the hidden matrices and AdamW on every other parameter, stepped as one optimizer.

    Has what the training loop uses of an optimizer: step, zero_grad, state (parameter → moments),
    param_groups (AdamW's, then Muon's), state_dict and load_state_dict. The state_dict holds both
    optimizers' ({"kind": "muon", "adamw": …, "muon": …}), so cycle checkpoints and state.pt carry the
    Muon momentum across cycles exactly like the Adam moments.
    """

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.AdamW, muon_lr: float):
        self.muon, self.adamw, self.muon_lr = muon, adamw, muon_lr

    @property
    def param_groups(self) -> list[dict]:
        return self.adamw.param_groups + self.muon.param_groups

    @property
    def state(self) -> dict:
        """Parameter → its moments, both optimizers' (a copy to read: torch's states are defaultdicts, so a
        ChainMap look-up would plant empty entries for the other optimizer's parameters)."""
        return {**self.adamw.state, **self.muon.state}

    def step(self) -> None:
        self.adamw.step()
        self.muon.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"kind": "muon", "adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("kind") != "muon":
            raise ValueError("not the state of a Muon + AdamW optimizer")
        self.adamw.load_state_dict(state["adamw"])
        self.muon.load_state_dict(state["muon"])

    def set_lr_wd(self, lr: float, wd: float, lr_mult: float) -> None:
        """AdamW: `lr`, `wd` on its decayed group(s). Muon: muon_lr × lr_mult, and `wd` on every matrix."""
        set_lr_wd(self.adamw, lr, wd)
        for group in self.muon.param_groups:
            group["lr"] = self.muon_lr * lr_mult
            group["weight_decay"] = wd


def make_muon_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: Sequence[float], eps: float, *,
    muon_lr: float = MUON_DEFAULTS["muon_lr"], muon_momentum: float = MUON_DEFAULTS["muon_momentum"],
    nesterov: bool = MUON_DEFAULTS["nesterov"], ns_steps: int = MUON_DEFAULTS["ns_steps"],
) -> MuonAdamW:  # fmt: skip
    """Muon (torch.optim.Muon, or hepc.train.muon.Muon on older torch) for `hidden_matrices(model)`,
    AdamW with make_optimizer's groups and settings for the rest.

    Muon's weight decay is decoupled like AdamW's: W ← W·(1 − lr·wd) with Muon's own lr, and its
    update is scaled by √max(1, rows/cols) (Keller Jordan's "original" adjustment).
    """
    net = unwrap(model)
    hidden = {id(p) for _, p in hidden_matrices(net)}
    params = [p for p in net.parameters() if p.requires_grad]
    muon = muon_class()(
        [p for p in params if id(p) in hidden], lr=muon_lr, weight_decay=weight_decay, momentum=muon_momentum,
        nesterov=nesterov, ns_steps=ns_steps,
    )  # fmt: skip
    adamw = _adamw([p for p in params if id(p) not in hidden], lr, weight_decay, betas, eps)
    return MuonAdamW(muon, adamw, muon_lr)


def optimizer_from_params(model: nn.Module, optimizer: dict) -> torch.optim.Optimizer | MuonAdamW:
    """The optimizer a cycle step's `optimizer` params describe (kind adamw, the default, or muon)."""
    kind = optimizer.get("kind", "adamw")
    args = (optimizer["lr"], optimizer["weight_decay"], optimizer.get("betas", (0.9, 0.95)), optimizer.get("eps", 1e-8))
    if kind == "adamw":
        return make_optimizer(unwrap(model), *args)
    if kind == "muon":
        return make_muon_optimizer(model, *args, **{k: optimizer.get(k, v) for k, v in MUON_DEFAULTS.items()})
    raise ValueError(f"unknown optimizer kind {kind!r} (expected one of {', '.join(KINDS)})")


def set_lr_wd(optimizer: torch.optim.Optimizer | MuonAdamW, lr: float, wd: float, lr_mult: float | None = None) -> None:
    """Set this step's LR on every group and WD on the decayed group(s).

    `lr`, `wd`: the spec's lr and weight_decay times this step's multipliers. Muon + AdamW also needs
    the LR multiplier itself (`lr_mult`): its Muon groups get muon_lr × lr_mult.
    """
    if isinstance(optimizer, MuonAdamW):
        if lr_mult is None:
            raise ValueError("Muon + AdamW needs this step's lr_mult")
        optimizer.set_lr_wd(lr, wd, lr_mult)
        return
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = wd if group.get("decay", True) else 0.0
