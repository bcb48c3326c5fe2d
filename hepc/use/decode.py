"""K members of one population decoding the same text together, with a key/value cache.

`MemberStack` holds every member's weights stacked along a leading member axis ([K, out, in]; each
member's own parameters become views of its slice, so nothing is copied twice) and runs the K
forward passes as one batched computation: every linear layer of every member is one `bmm`, the
residual additions folded into `baddbmm`. Feeding one more token therefore costs about as many
tensor operations for K = 8 as for K = 1, which matters because a one-position step of a small
model is dominated by each operation's fixed cost, not by its arithmetic.

The K caches are two preallocated buffers per layer, (K, n_head, seq_len, head size), written in
place at [P, P + T). RoPE uses full-width cos/sin tables and a fixed ±1 matrix for "rotate half",
three operations on the queries and keys of all heads at once. The computation is
`hepc.train.model.GPT.forward`'s (pre-norm, RoPE then QK-norm, SwiGLU, untied head), so its logits
equal each member's own forward on the whole sequence up to float32 rounding
(tests/test_use.py checks 1e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hepc.train.model import norm, rotary_tables

LAYER_WEIGHTS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # a block's matrices, in use order


def _shared(nets: list[torch.nn.Module], name: str) -> torch.Tensor:
    """The K members' parameter `name` as one (K, ...) tensor. Each member's parameter is replaced by a
    view of its slice: the same values, one copy in memory, and an ordinary tensor (not an inference
    tensor) whatever mode the members were built in, so they stay usable for their own forward."""
    owner, _, leaf = name.rpartition(".")
    with torch.inference_mode(False), torch.no_grad():
        params = [net.get_parameter(name) for net in nets]
        stack = torch.stack([p.detach() for p in params])
        for net, p, row in zip(nets, params, stack):
            setattr(net.get_submodule(owner), leaf, torch.nn.Parameter(row, requires_grad=p.requires_grad))
    return stack


def _rotate_half_matrix(head_dim: int) -> torch.Tensor:
    """J with x @ J = (x2, −x1) for x = (x1, x2), the two halves of a head (hepc's RoPE pairs)."""
    h = head_dim // 2
    j = torch.zeros(head_dim, head_dim)
    j[h:, :h] = torch.eye(h)  # output [0, h) takes x2
    j[:h, h:] = -torch.eye(h)  # output [h, 2h) takes −x1
    return j


class MemberStack:
    """K GPTs of one config (`hepc.train.model.GPT`, in eval mode) as one batched decoder of one sequence.

    `step(ids)` appends the T tokens `ids` (1-D) after the `length` positions cached and returns every
    member's logits for the token after the last of them, (K, V) float32. `reset()` empties the cache
    (the buffers are reused). The sequence must stay within seq_len."""

    def __init__(self, nets: list[torch.nn.Module]):
        cfg = nets[0].config
        self.k, self.seq_len = len(nets), cfg.seq_len
        self.n_head, self.head_dim = cfg.n_head, cfg.d_model // cfg.n_head
        self.wte = _shared(nets, "wte.weight")  # (K, V, C)
        self.lm_head = _shared(nets, "lm_head.weight")  # (K, V, C)
        # per block, transposed views for x @ W^T: q, k, v (K, C, 3C); output (K, C, C); gate, up (K, C, 2H);
        # down (K, H, C)
        self.layers = [tuple(_shared(nets, f"blocks.{i}.{name}.weight").mT for name in LAYER_WEIGHTS)
                       for i in range(cfg.n_layer)]
        w = self.wte
        cos, sin = rotary_tables(cfg.seq_len, self.head_dim)  # (1, S, 1, hs/2)
        self.cos = torch.cat([cos, cos], dim=-1)[0].to(w.device, w.dtype)  # (S, 1, hs)
        self.sin = torch.cat([sin, sin], dim=-1)[0].to(w.device, w.dtype)
        self.rot = _rotate_half_matrix(self.head_dim).to(w.device, w.dtype)
        shape = (self.k, self.n_head, self.seq_len, self.head_dim)
        self.keys = [w.new_empty(shape) for _ in self.layers]
        self.values = [w.new_empty(shape) for _ in self.layers]
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    @torch.inference_mode()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        P, T = self.length, ids.numel()
        if P + T > self.seq_len:
            raise ValueError(f"sequence of {P + T} tokens exceeds seq_len {self.seq_len}")
        K, nh, hs = self.k, self.n_head, self.head_dim
        C = nh * hs
        cos, sin = self.cos[P : P + T], self.sin[P : P + T]  # (T, 1, hs)
        causal = T > 1 and P == 0
        mask = None if T == 1 or P == 0 else torch.ones(T, P + T, dtype=torch.bool, device=ids.device).tril(P)
        x = self.wte.index_select(1, ids.reshape(-1))  # (K, T, C)
        for (attn, proj, fc, down), keys, values in zip(self.layers, self.keys, self.values):
            qkv = torch.bmm(norm(x), attn)  # (K, T, 3C)
            qk = qkv[..., : 2 * C].reshape(K, T, 2 * nh, hs)  # the queries' and keys' heads together
            qk = norm(torch.addcmul(qk * cos, qk @ self.rot, sin))  # RoPE, then QK-norm
            keys[:, :, P : P + T] = qk[:, :, nh:].transpose(1, 2)
            values[:, :, P : P + T] = qkv[..., 2 * C :].reshape(K, T, nh, hs).transpose(1, 2)
            y = F.scaled_dot_product_attention(qk[:, :, :nh].transpose(1, 2), keys[:, :, : P + T],
                                               values[:, :, : P + T], attn_mask=mask, is_causal=causal)
            x = torch.baddbmm(x, y.transpose(1, 2).reshape(K, T, C), proj)
            gate, up = torch.bmm(norm(x), fc).chunk(2, dim=-1)
            x = torch.baddbmm(x, F.silu(gate).mul_(up), down)  # SwiGLU
        self.length = P + T
        return torch.bmm(norm(x[:, -1:]), self.lm_head.mT)[:, 0].float()  # (K, V)
