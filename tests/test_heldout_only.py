"""The held-out-only rule, pinned so that a mutation cannot pass: the prior and curve steps fit their
weights on held-out scores alone (val and test only read), and every score object scores its own split's
array. Held-out, val and test scores are built to favour different members."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hepc.prior.select import ensemble_loss, top_k
from hepc.steps import RunContext, body

SPLITS = ("heldout", "val", "test")
FAVOURITE = {"heldout": 0, "val": 2, "test": 1}  # the member each split's scores favour
M = 3


def score_folders(tmp_path: Path, name: str, favourites: dict, seed: int = 0) -> dict[str, list[str]]:
    """Score objects (probs.npy + a manifest summary) of M members on each split, the split's favourite
    member predicting clearly better there than the others."""
    rng = np.random.default_rng(seed)
    out = {}
    for split in SPLITS:
        n = {"heldout": 600, "val": 900, "test": 700}[split]
        folders = []
        for i in range(M):
            good = i == favourites[split]
            probs = rng.beta(6 if good else 2, 2 if good else 6, size=n).astype(np.float32)
            folder = tmp_path / name / f"{split}-{i}"
            folder.mkdir(parents=True)
            np.save(folder / "probs.npy", probs)
            loss = float(-np.log(probs.astype(np.float64)).mean())
            summary = {"split": split, "tokens": n, "loss": loss, "bpb": None}
            (folder / "manifest.json").write_text(json.dumps({"summary": summary}))
            folders.append(str(folder))
        out[split] = folders
    return out


def step(kind: str, prior: dict) -> SimpleNamespace:
    members = [[i + 1, 1, float(i + 1)] for i in range(M)]  # M trajectories of one cycle each
    return SimpleNamespace(kind=kind, params={"prior": prior, "budgets": [1, "all"], "members": members})


def run_prior(tmp_path: Path, inputs: dict, prior: dict, name: str) -> dict:
    out = tmp_path / f"out-{name}"
    out.mkdir()
    body("prior")(step("prior", prior), inputs, out, out, RunContext(runtime={}))
    return json.loads((out / "prior.json").read_text())


PRIORS = [{"kind": "learned", "steps": 200, "lr": 0.5},
          {"kind": "shrinkage", "folds": 3, "strengths": [0.0, 0.1, 0.5, 1.0], "em_iters": 50, "solver": "map-em-squarem/1"}]


@pytest.mark.parametrize("prior", PRIORS, ids=["learned", "shrinkage"])
def test_the_prior_follows_heldout_and_never_val_or_test(tmp_path, prior):
    inputs = score_folders(tmp_path, "a", FAVOURITE)
    got = run_prior(tmp_path, inputs, prior, "a")
    weights = np.array([m["weight"] for m in got["members"]])
    assert int(np.argmax(weights)) == FAVOURITE["heldout"] and weights[0] > 0.5
    # other val and test scores (favouring yet other members): the very same weights
    other = score_folders(tmp_path, "b", {"heldout": 0, "val": 1, "test": 2}, seed=0)
    other["heldout"] = inputs["heldout"]
    again = run_prior(tmp_path, other, prior, "b")
    assert [m["weight"] for m in again["members"]] == [m["weight"] for m in got["members"]]
    # val and test losses are those weights scored on each split's own scores
    for split in ("val", "test"):
        P = np.stack([np.load(Path(f) / "probs.npy") for f in inputs[split]])
        for ens in got["ensembles"]:
            idx, w = top_k(weights, M if ens["k_label"] == "all" else ens["k_label"])
            assert ens[f"{split}_loss"] == pytest.approx(ensemble_loss(P, idx, w), rel=1e-12)
    assert got["fit"]["nll"] <= got["fit"]["uniform_nll"]  # never worse than uniform on its fit data


@pytest.mark.parametrize("prior", PRIORS, ids=["learned", "shrinkage"])
def test_the_curve_fits_on_heldout_and_scores_val_and_test(tmp_path, prior):
    inputs = score_folders(tmp_path, "a", FAVOURITE)
    out = tmp_path / "curve"
    out.mkdir()
    body("curve")(step("curve", prior), inputs, out, out, RunContext(runtime={}))
    rows = json.loads((out / "curve.json").read_text())["points"]
    other = score_folders(tmp_path, "b", {"heldout": 0, "val": 1, "test": 2})
    other["heldout"] = inputs["heldout"]
    out2 = tmp_path / "curve2"
    out2.mkdir()
    body("curve")(step("curve", prior), other, out2, out2, RunContext(runtime={}))
    rows2 = json.loads((out2 / "curve.json").read_text())["points"]
    # K = 1 at the full budget is the held-out favourite, whatever val and test say
    final_k1 = next(r for r in rows if r["members"] == M and r["k_label"] == 1)
    P_val = np.stack([np.load(Path(f) / "probs.npy") for f in inputs["val"]])
    P_test = np.stack([np.load(Path(f) / "probs.npy") for f in inputs["test"]])
    fav = FAVOURITE["heldout"]
    assert final_k1["val_loss"] == pytest.approx(float(-np.log(P_val[fav].astype(np.float64)).mean()), rel=1e-12)
    assert final_k1["test_loss"] == pytest.approx(float(-np.log(P_test[fav].astype(np.float64)).mean()), rel=1e-12)
    # the same members and weights chosen with other val and test scores: only the scored losses differ
    for a, b in zip(rows, rows2):
        assert (a["budget_epochs"], a["members"], a["k"]) == (b["budget_epochs"], b["members"], b["k"])
    k1_other = next(r for r in rows2 if r["members"] == M and r["k_label"] == 1)
    P_val2 = np.stack([np.load(Path(f) / "probs.npy") for f in other["val"]])
    assert k1_other["val_loss"] == pytest.approx(float(-np.log(P_val2[fav].astype(np.float64)).mean()), rel=1e-12)


def test_every_score_object_scores_its_own_split(tmp_path):
    """A real snapshot scored on held-out, val and test of a real corpus (three sizes): each score object
    holds one probability per predicted token of its own split's array, equal to scoring that array directly."""
    torch = pytest.importorskip("torch")
    from hepc.data import build_corpus
    from hepc.train.checkpoint import save_weights
    from hepc.train.model import GPT, GPTConfig
    from hepc.train.score import score_tokens

    corpus = tmp_path / "corpus"
    source = {"kind": "synthetic", "alphabet_size": 16, "order": 2, "concentration": 0.2, "doc_tokens": 100, "seed": 0}
    build_corpus(source, {"kind": "bytes"}, train_tokens=3_000, val_tokens=1_313, heldout_tokens=505, test_tokens=909,
                 seed=0, base_dir=tmp_path, out_dir=corpus)
    model = {"n_layer": 1, "d_model": 16, "n_head": 2, "dropout": 0.0}
    torch.manual_seed(0)
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    save_weights(GPT(GPTConfig(vocab_size=257, seq_len=32, **model)).state_dict(), snapshot / "model.safetensors")
    sizes = set()
    for split in SPLITS:
        out = tmp_path / f"score-{split}"
        out.mkdir()
        s = SimpleNamespace(kind="score", params={"split": split, "scorer": 1}, context={"model": model, "seq_len": 32})
        summary = body("score")(s, {"snapshot": str(snapshot), "corpus": str(corpus)}, out, out, RunContext(runtime={"device": "cpu"}))
        probs = np.load(out / "probs.npy")
        tokens = np.load(corpus / f"{split}.npy")
        assert probs.size == tokens.size - 1 == summary["tokens"] and summary["split"] == split  # next-token targets
        direct = score_tokens(model=model, weights_path=snapshot / "model.safetensors", tokens=tokens, vocab_size=257,
                              seq_len=32, runtime={"device": "cpu"})
        np.testing.assert_array_equal(probs, direct.astype(np.float32))
        sizes.add(probs.size)
    assert sizes == {504, 1_312, 908}
