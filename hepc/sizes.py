"""Model size arithmetic shared by the compiler (FLOP estimates, no torch) and the GPT itself."""

from __future__ import annotations


def swiglu_hidden(d_model: int, multiple_of: int = 32) -> int:
    """Hidden width of the SwiGLU MLP: 8/3 of d_model rounded up to a multiple (as in LLaMA/nanochat)."""
    target = 8 * d_model / 3
    return int(multiple_of * -(-target // multiple_of))


def param_count(vocab_size: int, n_layer: int, d_model: int) -> int:
    """Trainable parameters of hepc's GPT: untied embedding + unembedding, attention (q,k,v,o), SwiGLU (3 mats).

    RMSNorm has no learnable gain and RoPE has no parameters, so nothing else counts.
    """
    hidden = swiglu_hidden(d_model)
    per_layer = 4 * d_model * d_model + 3 * d_model * hidden
    return 2 * vocab_size * d_model + n_layer * per_layer


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
