"""Using a trained population: the ensemble API reproduces val, sampling, scoring files, export.

One tiny pystdlib population is trained once for the module (tests/use_helpers.py, ~10 s)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from cli_helpers import ROOT, hepc
from use_helpers import cli, trained_population, val_tokens

import hepc as hepc_api
from hepc.errors import HepcError


@pytest.fixture(scope="module")
def pop(tmp_path_factory):
    return trained_population(tmp_path_factory.mktemp("use"))


def _members(res_ensemble) -> list[tuple[int, int]]:
    return [tuple(m) for m in res_ensemble["members"]]


def test_import_hepc_does_not_import_torch():
    code = "import sys, hepc; hepc.__version__; assert 'torch' not in sys.modules; print(callable(hepc.load_ensemble))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_api_reproduces_the_stored_val_loss_of_every_budget(pop):
    spec, store, res = pop
    val = val_tokens(store)
    assert len(res["ensembles"]) == 3
    for e in res["ensembles"]:
        ens = hepc_api.load_ensemble(spec, k=e["k_label"], store=store)
        assert ens.k == e["k"] and len(ens.members) == e["k"]
        got = [(m.trajectory, m.cycle) for m in ens.resolved.members]
        assert got == _members(e)
        assert ens.weights.tolist() == e["weights"]
        # every member's probability of every val token is bit-identical to its stored score object
        probs = ens.member_target_probs(val)
        for row, m in zip(probs, ens.resolved.members):
            (stored,) = (store / "objects" / "score").glob(f"{m.name}-val-*/probs.npy")
            assert np.array_equal(row, np.load(stored))
        s = ens.score(val)
        # the number `hepc results` shows, exactly: the same mixture summed in the same order
        assert s["nats_per_token"] == e["val_loss"]
        assert s["bits_per_byte"] == pytest.approx(e["val_bpb"], rel=1e-12)
        assert s["tokens"] == val.size - 1
        # the full next-token distribution gives the same mixture probability of every val token
        from hepc.train.score import windows

        total, n = 0.0, 0
        for _, w in windows(val, ens.seq_len, 16):
            probs = ens.next_token_probs(w[:, :-1]).numpy()
            assert np.allclose(probs.sum(-1), 1.0, atol=1e-6)
            p = np.take_along_axis(probs, w[:, 1:, None].astype(np.int64), -1)[..., 0]
            total -= np.log(np.maximum(p, 1e-12)).sum()
            n += p.size
        assert total / n == pytest.approx(e["val_loss"], rel=1e-12, abs=0)
        assert ens.provenance["k"] == e["k"] and ens.provenance["spec_name"] == "tinypy"
        assert ens.provenance["members"] == ens.members


def test_mixture_differs_from_each_member_and_beats_the_weighted_average_loss(pop):
    spec, store, _res = pop
    ens = hepc_api.load_ensemble(spec, k=2, store=store)
    s = ens.score(val_tokens(store))
    member_losses = [m["nats_per_token"] for m in s["members"]]
    assert all(abs(s["nats_per_token"] - x) > 1e-6 for x in member_losses)
    # log of a mixture ≥ the mixture of logs (Jensen): never worse than the weighted member losses
    assert s["nats_per_token"] <= float(np.dot(ens.weights, member_losses)) + 1e-12


def test_streaming_members_gives_the_same_scores(pop):
    spec, store, _ = pop
    val = val_tokens(store)
    whole = hepc_api.load_ensemble(spec, k="all", store=store)
    streamed = hepc_api.load_ensemble(spec, k="all", store=store, max_resident=1)
    a, b = whole.score(val), streamed.score(val)
    assert a == b
    assert streamed.loads == streamed.k  # each member loaded once for the pass, then freed
    streamed.score(val[:100])
    assert streamed.loads == 2 * streamed.k and streamed._nets == {}
    ids = val[None, :20]
    assert np.array_equal(whole.next_token_probs(ids).numpy(), streamed.next_token_probs(ids).numpy())


def test_log_prob_is_the_document_score(pop):
    spec, store, _ = pop
    ens = hepc_api.load_ensemble(spec, k=2, store=store)
    text = "import os\nprint(os.getcwd())\n"
    lp = ens.log_prob(text)
    tokens = np.concatenate([[256], np.frombuffer(text.encode(), dtype=np.uint8)])
    assert lp["tokens"] == len(text.encode())
    assert lp["nats"] == pytest.approx(ens.score(tokens)["nats"], rel=1e-15)
    assert lp["nats_per_token"] == pytest.approx(lp["nats"] / lp["tokens"], rel=1e-12)
    assert lp["bytes"] == len(text.encode())
    # the continuation log-probability (lm-eval's loglikelihood) is the difference of two document scores
    ctx, cont = "import os\n", "print(os.getcwd())\n"
    ll, _ = ens.continuation_logprob(ctx, cont)
    # equal up to float32 noise of forwards over different lengths (the context is scored alone on the right)
    assert ll == pytest.approx(-(lp["nats"] - ens.log_prob(ctx)["nats"]), rel=1e-6)


def test_sample_is_reproducible_for_a_seed_and_changes_with_it(pop):
    spec, store, _ = pop
    args = ["sample", spec, "--k", "2", "--prompt", "import ", "--max-tokens", "40"]
    first = cli(*args, "--seed", "3", store=store).stdout
    assert first.startswith("import ")
    assert cli(*args, "--seed", "3", store=store).stdout == first
    others = {cli(*args, "--seed", str(s), store=store).stdout for s in (4, 5)}
    assert others - {first}


def test_greedy_generation_follows_the_mixture_argmax(pop):
    from hepc.use.sample import generate_ids
    from hepc.use.text import encode_document

    spec, store, _ = pop
    ens = hepc_api.load_ensemble(spec, k=2, store=store)
    ids = encode_document(ens.tokenizer, "def ")
    got = list(generate_ids(ens, ids, max_tokens=8, temperature=0.0, stop_at_eot=False))
    ctx = list(ids)
    for tok in got:
        assert tok == int(ens.next_token_probs(np.asarray(ctx[-ens.seq_len:])[None])[0, -1].argmax())
        ctx.append(tok)
    # not one member's argmax sequence by construction: the draw reads the mixture (weights of both members)
    assert len(set(ens.weights.tolist())) == 2


def test_score_command_reports_ensemble_and_best_member(pop, tmp_path):
    spec, store, _ = pop
    a = tmp_path / "a.py"
    a.write_text("import os\n\ndef main():\n    return os.getcwd()\n")
    b = tmp_path / "b.txt"
    b.write_text("for i in range(10):\n    print(i)\n")
    out = json.loads(cli("score", spec, "--k", "2", str(a), str(b), "--json", store=store).stdout)
    ens = hepc_api.load_ensemble(spec, k=2, store=store)
    for row, path in zip(out["files"], (a, b)):
        lp = ens.log_prob(path.read_text())
        assert row["nats_per_token"] == lp["nats_per_token"]
        assert row["bits_per_byte"] == pytest.approx(lp["bits_per_byte"], rel=1e-12)
    total = out["total"]
    assert total["best_member"]["nats_per_token"] == min(m["nats_per_token"] for m in total["members"])
    n = sum(r["tokens"] for r in out["files"])
    assert total["nats_per_token"] == pytest.approx(sum(r["nats"] for r in out["files"]) / n, rel=1e-12)
    text = cli("score", spec, "--k", "2", str(a), store=store).stdout
    assert "best single member" in text and "bits/byte" in text


def test_export_loads_without_the_store_and_scores_identically(pop, tmp_path):
    spec, store, res = pop
    out = tmp_path / "ens"
    assert cli("export", spec, "--k", "2", "--out", str(out), store=store).stdout.strip() == str(out)
    manifest = json.loads((out / "hepc-ensemble.json").read_text())
    assert manifest["k"] == 2 and len(manifest["members"]) == 2
    assert all((out / m["file"]).is_file() and m["file"].endswith(".safetensors") for m in manifest["members"])
    assert set(manifest["files"]) == {m["file"] for m in manifest["members"]} | {"tokenizer.json"}
    card = (out / "README.md").read_text()
    e2 = next(e for e in res["ensembles"] if e["k"] == 2)
    assert f"{e2['val_loss']:.4f}" in card and manifest["provenance"]["prior_key"] in card
    assert manifest["figures"]["val_loss"] == e2["val_loss"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left

    val = val_tokens(store)
    from_store = hepc_api.load_ensemble(spec, k=2, store=store)
    code = (
        "import sys, json, numpy as np, hepc\n"
        f"ens = hepc.load_ensemble({str(out)!r})\n"
        f"s = ens.score(np.load({str(next((store / 'objects' / 'corpus').glob('*/val.npy')))!r}))\n"
        "print(json.dumps([s['nats_per_token'], ens.members, ens.weights.tolist(), ens.provenance['k']]))\n"
    )
    env = {**os.environ, "HEPC_STORE": str(tmp_path / "no-store-here")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr
    loss, members, weights, k = json.loads(run.stdout)
    assert loss == from_store.score(val)["nats_per_token"] == e2["val_loss"]
    assert members == from_store.members and weights == from_store.weights.tolist() and k == 2
    # the top 1 of an exported K=2 is the top 1 of the population
    one = hepc_api.load_ensemble(out, k=1)
    k1 = next(e for e in res["ensembles"] if e["k"] == 1)["val_loss"]
    assert one.score(val)["nats_per_token"] == k1
    # hepc sample and score take the folder too
    assert cli("sample", str(out), "--prompt", "x", "--max-tokens", "5", store=tmp_path / "none").stdout.startswith("x")


def test_tampered_export_is_refused(pop, tmp_path):
    spec, store, _ = pop
    out = tmp_path / "ens"
    cli("export", spec, "--k", "2", "--out", str(out), store=store)
    member = next((out / "members").iterdir())
    data = bytearray(member.read_bytes())
    data[-1] ^= 0x01
    member.write_bytes(bytes(data))
    r = cli("score", str(out), str(ROOT / "README.md"), store=store, check=False)
    assert r.returncode == 2
    assert "sha256 does not match" in r.stderr and member.name in r.stderr
    with pytest.raises(HepcError, match="sha256"):
        hepc_api.load_ensemble(out).log_prob("x")  # a member is checked as it is loaded
    (out / "tokenizer.json").unlink()
    r = cli("sample", str(out), "--prompt", "x", store=store, check=False)
    assert r.returncode == 2 and "tokenizer.json: missing" in r.stderr


def test_bad_inputs_exit_2_and_write_nothing(pop, tmp_path):
    spec, store, _ = pop
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    out = tmp_path / "ens"
    (tmp_path / "inputs").mkdir()
    fifo = tmp_path / "inputs" / "fifo"
    os.mkfifo(fifo)  # would block a reader that opened it
    cases = [
        (["sample", spec, "--k", "5", "--prompt", "x"], "K=5 is larger than the population (4 members)"),
        (["score", spec, "--k", "5", str(ROOT / "README.md")], "K=5 is larger than the population"),
        (["export", spec, "--k", "5", "--out", str(out)], "K=5 is larger than the population"),
        (["sample", spec, "--k", "2", "--prompt", ""], "--prompt: empty"),
        (["sample", spec, "--k", "2", "--prompt", "ab\udcff"], "--prompt: not UTF-8 text (an undecodable byte at character 3)"),
        (["sample", spec, "--k", "0", "--prompt", "x"], "must be at least 1"),
        (["score", spec, "--k", "2", str(tmp_path / "missing.txt")], "no such file"),
        (["score", spec, "--k", "2", str(fifo)], "fifo: is a FIFO, not a regular file"),
        (["score", spec, "--k", "2", str(tmp_path / "inputs")], "inputs: is a folder, not a file"),
    ]
    real = hepc(*cases[0][0], store=store, check=False)  # the real command: exit 2, one line, no traceback
    assert real.returncode == 2 and real.stderr.strip() == f"error: k: {cases[0][1]}"
    for args, message in cases:
        r = cli(*args, store=store, check=False)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr, r.stderr
    assert not out.exists()
    # a population that is not trained yet: which steps are missing, and the command to run
    r = cli("sample", spec, "--k", "2", "--prompt", "x", "--set", "population.cycles=3", store=store, check=False)
    assert r.returncode == 2
    assert "not trained yet" in r.stderr and "cycle t1-c003" in r.stderr and "prior p2xc3" in r.stderr
    assert f"`hepc run {spec} population.cycles=3`" in r.stderr
    r = cli("score", spec, "--store", store / "elsewhere", __file__, store=store, check=False)
    assert r.returncode == 2 and f"`hepc run {spec} --store {store / 'elsewhere'}`" in r.stderr, r.stderr
    # an existing export target without --force: refused, left as it was
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = cli("export", spec, "--k", "2", "--out", str(out), store=store, check=False)
    assert r.returncode == 2 and "already exists" in r.stderr
    # --force replaces only an earlier export, never an unrelated folder
    r = cli("export", spec, "--k", "2", "--out", str(out), "--force", store=store, check=False)
    assert r.returncode == 2 and "not an exported ensemble" in r.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens", "inputs"]
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    with pytest.raises(HepcError, match="larger than the population"):
        hepc_api.load_ensemble(spec, k=9, store=store)


def test_export_force_replaces_an_earlier_export(pop, tmp_path):
    spec, store, _ = pop
    out = tmp_path / "ens"
    cli("export", spec, "--k", "1", "--out", str(out), store=store)
    cli("export", spec, "--k", "2", "--out", str(out), "--force", store=store)
    assert hepc_api.load_ensemble(out).k == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens"]
    # a note a user added to the export: --force refuses rather than delete it
    (out / "notes.txt").write_text("mine")
    r = cli("export", spec, "--k", "1", "--out", str(out), "--force", store=store, check=False)
    assert r.returncode == 2 and "holds files hepc export did not write (notes.txt)" in r.stderr, r.stderr
    assert (out / "notes.txt").read_text() == "mine" and hepc_api.load_ensemble(out).k == 2


def test_bpe_population_exports_its_tokenizer_and_scores_identically(tmp_path):
    pytest.importorskip("tokenizers")
    spec, store, res = trained_population(tmp_path, tokenizer="{kind: bpe, vocab_size: 400}")
    val = val_tokens(store)
    e2 = next(e for e in res["ensembles"] if e["k"] == 2)
    ens = hepc_api.load_ensemble(spec, k=2, store=store)
    assert ens.score(val)["nats_per_token"] == e2["val_loss"]
    out = tmp_path / "ens"
    hf_extra = ["--format", "hf"] if importlib.util.find_spec("transformers") else []
    cli("export", spec, "--k", "2", "--out", out, *hf_extra, store=store)
    assert json.loads((out / "tokenizer.json").read_text())["model"]["type"] == "BPE"  # the library's own file
    exported = hepc_api.load_ensemble(out)
    assert exported.score(val)["nats_per_token"] == ens.score(val)["nats_per_token"]
    text = "import os\nprint(os.sep)\n"
    assert exported.log_prob(text) == ens.log_prob(text)
    assert exported.tokenizer.decode(exported.tokenizer.encode(text.encode())[1:]) == text
    if hf_extra:  # the trained BPE as a transformers tokenizer and model: hepc's ids, hepc's logits
        from transformers import AutoModelForCausalLM, AutoTokenizer

        first = out / "hf" / f"{ens.resolved.members[0].name}-{ens.members[0][:12]}"
        tok = AutoTokenizer.from_pretrained(first, local_files_only=True)
        ids = tok(text)["input_ids"]
        assert ids == ens.tokenizer.encode(text).tolist()
        hf = AutoModelForCausalLM.from_pretrained(first, local_files_only=True, dtype=torch.float32).eval()
        net = next(iter(ens.groups()))[0][1]
        with torch.no_grad():
            x = torch.tensor([ids])
            assert (hf(x).logits - net(x)).abs().max().item() <= 1e-5


def test_logit_aggregate_population_reproduces_its_results(pop):
    spec, store, _ = pop
    res = json.loads(cli("run", spec, "prior.aggregate=logit", "--json", "--quiet", store=store).stdout)
    assert res["aggregate"] == "logit"
    val = val_tokens(store)
    for e in res["ensembles"][1:]:
        ens = hepc_api.load_ensemble(spec, k=e["k_label"], store=store, overrides=["prior.aggregate=logit"])
        assert ens.aggregate == "logit"
        assert ens.score(val)["nats_per_token"] == pytest.approx(e["val_loss"], rel=1e-14, abs=0)
        probs = ens.next_token_probs(val[None, :16]).numpy()
        assert np.allclose(probs.sum(-1), 1.0)


def test_a_store_folder_loads_without_its_spec(pop):
    spec, store, _ = pop
    from_spec = hepc_api.load_ensemble(spec, k=2, store=store)
    key = from_spec.provenance["prior_key"]
    from_store = hepc_api.load_ensemble(store, k=2, prior=key[:8])
    assert from_store.members == from_spec.members and from_store.weights.tolist() == from_spec.weights.tolist()
    assert from_store.provenance["prior_key"] == key
    val = val_tokens(store)
    assert from_store.score(val) == from_spec.score(val)
    r = cli("score", store, "--prior", "0000000000", str(ROOT / "README.md"), store=store, check=False)
    assert r.returncode == 2 and "0 fitted priors match" in r.stderr


def test_score_reads_files_with_the_corpus_document_rule(tmp_path):
    """`hepc score` reads a file as the corpus read its files: the separator rule splits it, a JSON
    Lines rule takes the named field of each record, any other source one document per file."""
    from hepc.errors import HepcError
    from hepc.use.text import file_documents

    (tmp_path / "q.txt").write_text("first\n%\nsecond one\n%\n")
    (tmp_path / "r.jsonl").write_text('{"text": "alpha"}\n\n{"text": "beta gamma", "id": 2}\n')
    text = {"kind": "text", "paths": ["*.txt"]}
    assert file_documents(tmp_path / "q.txt", {**text, "documents": {"separator": "%"}}) == [b"first\n", b"second one\n"]
    assert file_documents(tmp_path / "q.txt", text) == [b"first\n%\nsecond one\n%\n"]
    assert file_documents(tmp_path / "r.jsonl", {**text, "documents": "jsonl"}) == [b"alpha", b"beta gamma"]
    assert file_documents(tmp_path / "q.txt", {"kind": "pystdlib"}) == [b"first\n%\nsecond one\n%\n"]
    with pytest.raises(HepcError, match=r"r.jsonl.*line 1.*no field 'body'"):
        file_documents(tmp_path / "r.jsonl", {**text, "documents": {"jsonl": "body"}})


@pytest.mark.parametrize("aggregate", ["probability", "logit"])
def test_the_kv_cache_gives_the_mixture_of_the_whole_context(pop, aggregate):
    spec, store, _ = pop
    ens = hepc_api.load_ensemble(spec, k="all", store=store)
    ens.resolved.aggregate = aggregate  # the same members, combined the other way too
    ids = np.asarray([[256, *b"def main():\n    re"]], dtype=np.int64)
    mixture = ens.cached()
    got = [mixture.start(ids[:, :5])]
    for t in range(5, ids.shape[1]):
        got.append(mixture.push(int(ids[0, t])))
    want = ens.next_token_probs(ids)[0, 4:]
    np.testing.assert_allclose(torch.stack(got).numpy(), want.numpy(), rtol=1e-5, atol=1e-9)


def test_the_batched_decoder_gives_every_members_logits():
    """K members decoded as one batched computation (hepc.use.decode): a prefix, then one token at a
    time, then several tokens after a cached prefix (the masked case) give each member's own forward
    on the whole sequence, within float32 rounding; the members' weights are shared, not copied."""
    from hepc.train.model import GPT, GPTConfig
    from hepc.use.decode import MemberStack

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=40, n_layer=2, d_model=32, n_head=4, seq_len=24)
    nets = [GPT(cfg).eval() for _ in range(3)]
    with torch.no_grad():
        for net in nets:  # every weight non-zero (the init zeroes the output projections)
            for p in net.parameters():
                p.normal_(0.0, 0.3)
    ids = torch.randint(0, cfg.vocab_size, (cfg.seq_len,))
    with torch.no_grad():
        want = torch.stack([net(ids[None])[0] for net in nets])  # (K, T, V)
    stack = MemberStack(nets)
    assert nets[2].wte.weight.data_ptr() == stack.wte[2].data_ptr()
    with torch.no_grad():
        assert torch.equal(torch.stack([net(ids[None])[0] for net in nets]), want)  # the members unchanged
    got = [stack.step(ids[:5])]
    got += [stack.step(ids[t : t + 1]) for t in range(5, 16)]
    got.append(stack.step(ids[16:]))  # 8 tokens after 16 cached ones
    assert stack.length == cfg.seq_len
    torch.testing.assert_close(torch.stack(got[:-1], 1), want[:, 4:16], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[-1], want[:, -1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="exceeds seq_len"):
        stack.step(ids[:1])
    stack.reset()
    torch.testing.assert_close(stack.step(ids[:7]), want[:, 6], rtol=1e-5, atol=1e-5)  # the buffers reused


@pytest.mark.parametrize("k", [1, "all"])
def test_sampling_with_the_cache_draws_the_same_text_within_the_window(pop, k):
    from hepc.use.sample import generate_ids

    spec, store, _ = pop
    ens = hepc_api.load_ensemble(spec, k=k, store=store)
    assert (ens.k > 1) == (k == "all")
    prompt = np.asarray([256, *b"import "], dtype=np.int64)
    room = ens.seq_len - prompt.size  # tokens that keep the whole text within seq_len
    for seed in (0, 1):
        kw = {"max_tokens": room, "temperature": 1.0, "seed": seed, "stop_at_eot": False}
        plain = list(generate_ids(ens, prompt, cache=False, **kw))  # (the first call loads the members)
        assert list(generate_ids(ens, prompt, cache=True, **kw)) == plain
        assert list(generate_ids(ens, prompt, cache=False, **kw)) == plain  # the members usable after the cache
    longer = list(generate_ids(ens, prompt, max_tokens=3 * ens.seq_len, seed=0, stop_at_eot=False))
    assert len(longer) == 3 * ens.seq_len  # past seq_len the window slides (by half a window at a time)
    streamed = hepc_api.load_ensemble(spec, k="all", store=store, max_resident=1)
    assert streamed.cached() is None  # members streamed: no cache, the context is recomputed

