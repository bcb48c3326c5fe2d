"""The GPT every cycle trains: a small nanochat-style decoder.

Pre-norm blocks with parameter-free RMSNorm, causal attention with RoPE and QK-norm, a SwiGLU MLP,
untied embedding / unembedding, no biases. Its trainable parameter count is exactly
`hepc.sizes.param_count` and its tensors' shapes `hepc.sizes.state_shapes` (the compiler's FLOP estimates
and the ensemble's snapshot check, without importing torch).
Also home to the two runtime helpers shared by training and scoring (device, precision).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from hepc.sizes import swiglu_hidden

ROPE_BASE = 10000.0


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    n_layer: int
    d_model: int
    n_head: int
    dropout: float = 0.0
    seq_len: int = 256  # longest sequence forward() accepts (size of the RoPE tables)


def norm(x: torch.Tensor) -> torch.Tensor:
    # RMSNorm without a learnable gain (nanochat): nothing to train, nothing to count.
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len: int, head_dim: int, base: float = ROPE_BASE) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of RoPE (Su et al. 2021): channel pair i of position t rotates by t·base^(−2i/hs)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hs/2,)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, hs/2)
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]  # (1, T, 1, hs/2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, T, nh, hs); rotate the pairs (x1[i], x2[i]) made of the two halves of each head
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # stay in bf16 under autocast
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.d_model % config.n_head == 0, "d_model must be a multiple of n_head"
        self.n_head = config.n_head
        self.head_dim = config.d_model // config.n_head
        assert self.head_dim % 2 == 0, "RoPE needs an even head dimension"
        self.c_attn = nn.Linear(config.d_model, 3 * config.d_model, bias=False)  # q, k, v fused
        self.c_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim)  # (B, T, nh, hs)
        k = k.view(B, T, self.n_head, self.head_dim)
        v = v.view(B, T, self.n_head, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # QK-norm bounds the attention logits, which keeps high-LR / high-WD training stable.
        q, k = norm(q).to(v.dtype), norm(k).to(v.dtype)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = swiglu_hidden(config.d_model)
        self.c_fc = nn.Linear(config.d_model, 2 * hidden, bias=False)  # gate and up fused
        self.c_proj = nn.Linear(hidden, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.dropout(self.c_proj(F.silu(gate) * up))  # SwiGLU (Shazeer 2020)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attn = CausalSelfAttention(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(norm(x), cos, sin)
        x = x + self.mlp(norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)  # untied from wte
        # RoPE tables are derived, not learned: non-persistent, so they stay out of the snapshot.
        cos, sin = rotary_tables(config.seq_len, config.d_model // config.n_head)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        # runtime.activation_checkpointing: keep only each block's input for backward and recompute the
        # block there (torch.utils.checkpoint; the dropout masks are replayed from the saved RNG state).
        self.checkpoint_blocks = False
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """nanochat-style init; deterministic given the torch seed (parameters are visited in a fixed order)."""
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)  # near-uniform predictions at step 0
        bound = 3**0.5 * self.config.d_model**-0.5  # uniform with std 1/sqrt(d)
        for block in self.blocks:
            nn.init.uniform_(block.attn.c_attn.weight, -bound, bound)
            nn.init.uniform_(block.mlp.c_fc.weight, -bound, bound)
            # zero output projections: every block starts as the identity on the residual stream
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """The normalised last hidden state (B, T, C): what the output head maps to logits."""
        T = idx.size(1)
        assert T <= self.cos.size(1), f"sequence of {T} tokens exceeds seq_len {self.cos.size(1)}"
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = self.wte(idx)  # (B, T, C)
        recompute = self.checkpoint_blocks and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, cos, sin, use_reentrant=False) if recompute else block(x, cos, sin)
        return norm(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.hidden(idx)).float()  # (B, T, V), float32 for the losses and softmax


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r} (expected cpu, cuda or auto)")
    return torch.device(name)


def precision_context(device: torch.device, dtype: str):
    """bf16 autocast on CUDA only; CPU always runs float32 (exact, reproducible resumes)."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"unknown dtype {dtype!r} (expected float32 or bfloat16)")
    if device.type == "cuda" and dtype == "bfloat16":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()
