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
