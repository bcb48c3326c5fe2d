"""Members as Hugging Face models: hepc's GPT written as a `transformers` Qwen3 checkpoint.

hepc's GPT (pre-norm blocks, parameter-free RMSNorm, RoPE, QK-norm, SwiGLU, untied embeddings, no
biases) is a Qwen3 decoder whose norm gains are all ones:

    hepc                               Qwen3 (transformers)
    wte.weight                         model.embed_tokens.weight
    blocks.i.attn.c_attn.weight        model.layers.i.self_attn.{q,k,v}_proj.weight (rows [0,C), [C,2C), [2C,3C))
    blocks.i.attn.c_proj.weight        model.layers.i.self_attn.o_proj.weight
    blocks.i.mlp.c_fc.weight           model.layers.i.mlp.{gate,up}_proj.weight (rows [0,H), [H,2H))
    blocks.i.mlp.c_proj.weight         model.layers.i.mlp.down_proj.weight
    lm_head.weight                     lm_head.weight
    (none: parameter-free norms)       input_layernorm, post_attention_layernorm, self_attn.{q,k}_norm,
                                       model.norm: weights of ones
    norm eps: float32's machine eps    rms_norm_eps = 1.1920929e-07 (torch.nn.functional.rms_norm's default)
    RoPE base 10000, the two halves    rope_theta 10000, rotate_half (the same half-split pairs)

One convention differs: hepc rotates each pair (x1, x2) by −θ ([x1·cos + x2·sin, x2·cos − x1·sin]),
transformers' `rotate_half` by +θ. Negating the second half of every head's query and key rows
maps one onto the other: with N(x) = (x1, −x2), transformers' rotation of N(x) is N of hepc's
rotation of x, N commutes with the RMS norms (their gains are ones), and N(q)·N(k) = q·k, so the
attention scores, and everything after them, are the same. QK-norm comes before RoPE in Qwen3 and
after it in hepc: with unit gains it commutes with the rotation. `tests/test_hf.py` checks the
logits of every member within 1e-5 and that the export without the negation fails that check.

The tokenizer goes along as `tokenizer.json` (the `tokenizers` library's format) with a
post-processor that puts end-of-text first, as hepc's encode does: the bytes tokenizer as a
byte-level BPE without merges (byte b is id b, end-of-text 256), a trained BPE as its own file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hepc.sizes import swiglu_hidden
from hepc.train.model import ROPE_BASE

EOT_TEXT = "<|endoftext|>"
RMS_EPS = float(torch.finfo(torch.float32).eps)


def hf_config(model: dict, eot_id: int) -> dict:
    """config.json of a member: a Qwen3ForCausalLM of hepc's shape."""
    d, nh = int(model["d_model"]), int(model["n_head"])
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": int(model["vocab_size"]),
        "hidden_size": d,
        "intermediate_size": swiglu_hidden(d),
        "num_hidden_layers": int(model["n_layer"]),
        "num_attention_heads": nh,
        "num_key_value_heads": nh,
        "head_dim": d // nh,
        "hidden_act": "silu",
        "max_position_embeddings": int(model["seq_len"]),
        "rms_norm_eps": RMS_EPS,
        "rope_theta": ROPE_BASE,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_BASE},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
        "bos_token_id": int(eot_id),
        "eos_token_id": int(eot_id),
        "torch_dtype": "float32",
        "dtype": "float32",
    }


def _flip_second_halves(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of a query or key projection (C, C) with the second half of every head negated (see above)."""
    d = w.size(0)
    hs = d // n_head
    out = w.clone().view(n_head, hs, -1)
    out[:, hs // 2 :] *= -1
    return out.view(d, -1)


def hf_state(state: dict[str, torch.Tensor], model: dict, *, rope_fix: bool = True) -> dict[str, torch.Tensor]:
    """hepc's state dict as a Qwen3ForCausalLM's (float32, contiguous). `rope_fix=False` leaves the RoPE
    convention as it is (wrong: only for the test that shows the parity check would catch it)."""
    d, nh, layers = int(model["d_model"]), int(model["n_head"]), int(model["n_layer"])
    hidden = swiglu_hidden(d)
    hs = d // nh
    ones = torch.ones(d, dtype=torch.float32)
    out = {
        "model.embed_tokens.weight": state["wte.weight"],
        "model.norm.weight": ones,
        "lm_head.weight": state["lm_head.weight"],
    }
    for i in range(layers):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = state[src + "attn.c_attn.weight"].split(d, dim=0)
        if rope_fix:
            q, k = _flip_second_halves(q, nh), _flip_second_halves(k, nh)
        gate, up = state[src + "mlp.c_fc.weight"].split(hidden, dim=0)
        out.update({
            dst + "self_attn.q_proj.weight": q,
            dst + "self_attn.k_proj.weight": k,
            dst + "self_attn.v_proj.weight": v,
            dst + "self_attn.o_proj.weight": state[src + "attn.c_proj.weight"],
            dst + "self_attn.q_norm.weight": torch.ones(hs, dtype=torch.float32),
            dst + "self_attn.k_norm.weight": torch.ones(hs, dtype=torch.float32),
            dst + "mlp.gate_proj.weight": gate,
            dst + "mlp.up_proj.weight": up,
            dst + "mlp.down_proj.weight": state[src + "mlp.c_proj.weight"],
            dst + "input_layernorm.weight": ones,
            dst + "post_attention_layernorm.weight": ones,
        })
    return {name: t.detach().to(torch.float32).contiguous().clone() for name, t in out.items()}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: every byte as a printable character (the tokenizers ByteLevel map)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def hf_tokenizer_json(tokenizer) -> str:
    """tokenizer.json that encodes as hepc does (end-of-text first): the bytes tokenizer as a byte-level
    BPE without merges (byte b is id b, end-of-text 256), a trained BPE as its own file."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    eot = int(tokenizer.eot_id)
    if getattr(tokenizer, "hf", None) is not None:
        hf = Tokenizer.from_str(tokenizer.hf.to_str())
    else:
        vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
        hf = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = decoders.ByteLevel()
        hf.add_special_tokens([EOT_TEXT])
    if hf.token_to_id(EOT_TEXT) != eot:
        raise ValueError(f"the tokenizer's {EOT_TEXT} is id {hf.token_to_id(EOT_TEXT)}, hepc's is {eot}")
    hf.post_processor = processors.TemplateProcessing(single=f"{EOT_TEXT} $A", special_tokens=[(EOT_TEXT, eot)])
    return hf.to_str(pretty=True)


def write_member(folder: Path, state: dict[str, torch.Tensor], model: dict, tokenizer) -> None:
    """One member as a transformers model folder: config.json, model.safetensors, generation_config.json,
    tokenizer.json, tokenizer_config.json (`AutoModelForCausalLM` / `AutoTokenizer.from_pretrained`)."""
    from safetensors.torch import save_file

    eot = int(tokenizer.eot_id)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(hf_config(model, eot), indent=1) + "\n")
    save_file(hf_state(state, model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": eot, "eos_token_id": eot, "do_sample": True}, indent=1) + "\n")
    (folder / "tokenizer.json").write_text(hf_tokenizer_json(tokenizer), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT_TEXT, "eos_token": EOT_TEXT,
        "model_max_length": int(model["seq_len"]), "clean_up_tokenization_spaces": False,
    }, indent=1) + "\n")
