"""Members as Hugging Face models: `hepc export --format hf` writes each member as a transformers
Qwen3 checkpoint that `AutoModelForCausalLM.from_pretrained` loads with no custom code, its logits
within 1e-5 of hepc's on hundreds of tokens; its tokenizer gives hepc's ids; the mixture in plain
transformers code is hepc's mixture. A conversion that misses RoPE's sign convention fails."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import TINY, tiny_store
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers")  # the hf extra (the README's test command installs it)

import hepc
from hepc.cli.main import app

TEXT = "def main():\n    return [x * 2 for x in range(10)]  # héllo, wörld\n"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    store, _ = tiny_store(folder)
    out = folder / "ens"
    result = CliRunner().invoke(app, ["export", TINY, "--k", "all", "--format", "hf", "--out", str(out), "--store", str(store)])
    assert result.exit_code == 0, result.output
    return out, hepc.load_ensemble(TINY, k="all", store=store)


def members(out, ens):
    """The members' transformers folders, in the ensemble's order (decreasing prior weight)."""
    return [out / "hf" / f"{mb.name}-{mb.key[:12]}" for mb in ens.resolved.members]


def windows(ens, n: int = 12) -> torch.Tensor:
    """n windows of seq_len tokens: a few hundred positions of the tiny population's own alphabet."""
    rng = np.random.default_rng(0)
    return torch.as_tensor(rng.integers(0, ens.vocab_size, size=(n, ens.seq_len)), dtype=torch.long)


def test_every_member_loads_in_transformers_with_hepcs_logits_and_ids(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, ens = exported
    folders = members(out, ens)
    assert sorted(folders) == sorted(p for p in (out / "hf").iterdir() if p.is_dir())
    x = windows(ens)
    for folder, (_, net) in zip(folders, next(iter(ens.groups()))):
        hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
        assert type(hf).__name__ == "Qwen3ForCausalLM"
        with torch.no_grad():
            diff = (hf(x).logits - net(x)).abs().max().item()
        assert diff <= 1e-5, (folder.name, diff)
    tok = AutoTokenizer.from_pretrained(folders[0], local_files_only=True)
    assert tok(TEXT)["input_ids"] == ens.tokenizer.encode(TEXT).tolist()  # end-of-text first, then the bytes
    listed = {line[66:] for line in (out / "SHA256SUMS").read_text().splitlines()}
    assert {f"hf/{folders[0].name}/config.json", f"hf/{folders[0].name}/model.safetensors"} <= listed


def test_a_conversion_that_misses_the_rope_convention_fails_the_parity_check(exported):
    from safetensors.torch import load
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from hepc.use.hf import hf_config, hf_state
    from hepc.use.source import load_member

    _, ens = exported
    state = load(load_member(ens.resolved.members[0]))
    hf = Qwen3ForCausalLM(Qwen3Config(**hf_config(ens.resolved.model, ens.tokenizer.eot_id))).eval()
    x = windows(ens, 4)
    net = next(iter(ens.groups()))[0][1]
    diffs = {}
    for fix in (True, False):
        hf.load_state_dict(hf_state(state, ens.resolved.model, rope_fix=fix))
        with torch.no_grad():
            diffs[fix] = (hf(x).logits - net(x)).abs().max().item()
    assert diffs[True] <= 1e-5 < 1e-3 < diffs[False], diffs


def test_the_mixture_in_plain_transformers_is_hepcs_mixture(exported):
    from transformers import AutoModelForCausalLM

    out, ens = exported
    manifest = json.loads((out / "hepc-ensemble.json").read_text())
    weights = manifest["weights"]
    hf = [AutoModelForCausalLM.from_pretrained(f, local_files_only=True, dtype=torch.float32).eval() for f in members(out, ens)]
    x = windows(ens, 3)
    with torch.no_grad():  # the card's lines
        probs = sum(w * m(x).logits.softmax(-1) for w, m in zip(weights, hf))
    want = ens.next_token_probs(x).float()
    assert (probs - want).abs().max().item() <= 1e-5
    assert "from transformers import AutoModelForCausalLM" in (out / "README.md").read_text()
