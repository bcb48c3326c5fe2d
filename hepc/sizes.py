"""Model size arithmetic shared by the compiler (FLOP estimates, no torch) and the GPT itself."""

from __future__ import annotations

import math


def swiglu_hidden(d_model: int, multiple_of: int = 32) -> int:
    """Hidden width of the SwiGLU MLP: 8/3 of d_model rounded up to a multiple (as in LLaMA/nanochat)."""
    target = 8 * d_model / 3
    return int(multiple_of * -(-target // multiple_of))


def state_shapes(vocab_size: int, n_layer: int, d_model: int) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in hepc's GPT's state_dict: untied embedding and unembedding, per block
    the fused q,k,v and the output projection, SwiGLU's fused gate/up and its down projection. RMSNorm
    has no learnable gain and RoPE no parameters, so nothing else is there. What a member snapshot is
    checked against before anything is allocated for it (hepc/use/ensemble.py)."""
    d, hidden = d_model, swiglu_hidden(d_model)
    shapes = {"wte.weight": (vocab_size, d)}
    for i in range(n_layer):
        shapes |= {
            f"blocks.{i}.attn.c_attn.weight": (3 * d, d),
            f"blocks.{i}.attn.c_proj.weight": (d, d),
            f"blocks.{i}.mlp.c_fc.weight": (2 * hidden, d),
            f"blocks.{i}.mlp.c_proj.weight": (d, hidden),
        }
    return shapes | {"lm_head.weight": (vocab_size, d)}


def param_count(vocab_size: int, n_layer: int, d_model: int) -> int:
    """Trainable parameters of hepc's GPT: the sizes of its `state_shapes`."""
    return sum(math.prod(shape) for shape in state_shapes(vocab_size, n_layer, d_model).values())


def train_flops_per_token(vocab_size: int, n_layer: int, d_model: int, seq_len: int) -> float:
    """Forward+backward FLOPs per trained token: 6·N plus the attention score term 12·L·d·T (Chinchilla/PaLM)."""
    return 6.0 * param_count(vocab_size, n_layer, d_model) + 12.0 * n_layer * d_model * seq_len


def model_flops_per_token(vocab_size: int, n_layer: int, d_model: int, seq_len: int, teacher: bool = False) -> float:
    """Model FLOPs per trained token for MFU: forward and backward of every matrix multiply, 6 per weight of
    the blocks and the output head (the input embedding is a lookup: no FLOPs), plus attention's scores and
    weighted sum, 12·L·d·T (PaLM's convention, the causal half not discounted); with a teacher (a distilled
    cycle) also its forward, a third of that. Recomputation (activation checkpointing, the chunked loss's
    head) is not counted: model FLOPs, not hardware FLOPs."""
    matmul = param_count(vocab_size, n_layer, d_model) - vocab_size * d_model
    train = 6.0 * matmul + 12.0 * n_layer * d_model * seq_len
    return train * (4.0 / 3.0 if teacher else 1.0)
