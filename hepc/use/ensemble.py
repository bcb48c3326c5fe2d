"""The ensemble a population learned, as a model: the mixture's next-token distribution and scores.

Members combine exactly as val was scored (hepc.steps.prior, docs/method.md §6.2):

    p(y | x) = Σ_r w̃_r · max(softmax(z_r(x))_y, tiny_f32)      accumulated in float64

with w̃ the prior's top-K weights renormalised (``hepc.prior.select.top_k``); a population with
`prior.aggregate: logit` uses softmax(Σ_r w̃_r z_r(x)) instead, as its logits step did. `score`
computes each member's per-token probability of the correct token with the windows of
hepc.train.score (stride seq_len, context restarting at each window) and mixes them with
``hepc.prior.select.ensemble_loss``, so on a corpus's val.npy it returns the stored val loss of that K.

Memory: members stay loaded when `max_resident` (default: every member, or as many as
`memory_bytes` holds) allows; otherwise each pass streams them — load, forward, accumulate, free.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from hepc.errors import HepcError
from hepc.use.source import Resolved
from hepc.use.text import document_tokens, ensemble_tokenizer

_TINY = torch.finfo(torch.float32).tiny


class Ensemble:
    """K snapshots and their weights. Build one with ``hepc.load_ensemble``."""

    def __init__(self, resolved: Resolved, *, device: str = "cpu", max_resident: int | None = None,
                 memory_bytes: int | None = None, threads: int | None = None):
        from hepc.sizes import param_count
        from hepc.train.model import GPTConfig, resolve_device

        self.resolved = resolved
        m = resolved.model
        self.config = GPTConfig(m["vocab_size"], m["n_layer"], m["d_model"], m["n_head"], 0.0, m["seq_len"])
        try:
            self.device = resolve_device(device)
        except (RuntimeError, ValueError) as e:
            raise HepcError(f"device: {e}") from None
        self.weights = np.asarray([mb.weight for mb in resolved.members], dtype=np.float64)
        self.member_bytes = 4 * param_count(m["vocab_size"], m["n_layer"], m["d_model"])
        if max_resident is None:
            max_resident = self.k if memory_bytes is None else max(1, int(memory_bytes) // self.member_bytes)
        if int(max_resident) < 1:
            raise HepcError(f"max_resident: must be at least 1 (got {max_resident})")
        self.max_resident = min(self.k, int(max_resident))
        self.tokenizer = ensemble_tokenizer(resolved.tokenizer_config, m["vocab_size"], resolved.eot_id,
                                        resolved.tokenizer)
        threads = threads if threads is not None else resolved.threads
        if threads is not None:  # torch CPU threads: the argument, else the spec's runtime.threads
            if int(threads) < 1:
                raise HepcError(f"threads: must be at least 1 (got {threads})")
            torch.set_num_threads(int(threads))
        self._nets: dict[int, torch.nn.Module] = {}
        self.loads = 0  # snapshots read from disk so far (streaming reads each one once per pass)

    # ------------------------------------------------------------------ identity
    @property
    def k(self) -> int:
        return len(self.resolved.members)

    @property
    def members(self) -> list[str]:
        """Cycle step keys of the members, in decreasing weight order."""
        return [mb.key for mb in self.resolved.members]

    @property
    def member_names(self) -> list[str]:
        return [mb.name for mb in self.resolved.members]

    @property
    def provenance(self) -> dict:
        return self.resolved.provenance

    @property
    def aggregate(self) -> str:
        return self.resolved.aggregate

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def __repr__(self) -> str:
        names = ", ".join(f"{n}:{w:.3f}" for n, w in zip(self.member_names, self.weights))
        return f"Ensemble(K={self.k}, {self.aggregate} averaging, members=[{names}])"

    # ------------------------------------------------------------------ members
    def _load(self, i: int) -> torch.nn.Module:
        """Member i, built from bytes checked against their recorded digest, and only once the snapshot's
        tensor shapes are the ones the model config implies (nothing is allocated for a config that
        does not match its snapshot)."""
        from safetensors.torch import load

        from hepc.sizes import state_shapes
        from hepc.train.model import GPT
        from hepc.use.source import load_member

        member = self.resolved.members[i]
        data = load_member(member)
        try:
            state = load(data)  # tensors no larger than the checked bytes
        except Exception as e:  # noqa: BLE001  (safetensors raises its own errors for damaged files)
            raise HepcError(f"{member.path}: not a loadable safetensors snapshot ({e})") from None
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        c = self.config
        expected = state_shapes(c.vocab_size, c.n_layer, c.d_model)
        if shapes != expected:
            wrong = sorted(set(shapes.items()) ^ set(expected.items()))[:2]
            raise HepcError(f"{member.path}: its tensors do not match the model {self.resolved.model} "
                            f"(first differences: {wrong}); not used")
        net = GPT(self.config)
        net.load_state_dict(state)
        self.loads += 1
        return net.to(self.device).eval()

    def groups(self) -> Iterator[list[tuple[int, torch.nn.Module]]]:
        """The members in groups of at most `max_resident` loaded at once; every member resident when
        all fit (then they are loaded once and kept), else loaded for the group and freed after it."""
        if self.max_resident >= self.k:
            for i in range(self.k):
                if i not in self._nets:
                    self._nets[i] = self._load(i)
            yield [(i, self._nets[i]) for i in range(self.k)]
            return
        for start in range(0, self.k, self.max_resident):
            group = [(i, self._load(i)) for i in range(start, min(self.k, start + self.max_resident))]
            yield group
            del group
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _ids(self, ids) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(ids) if not isinstance(ids, torch.Tensor) else ids).long()
        if x.dim() == 1:
            x = x[None]
        if x.dim() != 2:
            raise ValueError(f"ids must be (B, T) token ids, got shape {tuple(x.shape)}")
        if x.size(1) > self.seq_len:
            raise ValueError(f"{x.size(1)} tokens exceed the model's context of {self.seq_len}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        return x.to(self.device)

    # ------------------------------------------------------------------ the mixture
    @torch.inference_mode()
    def next_token_probs(self, ids) -> torch.Tensor:
        """probs[B, T, V] (float64): the mixture's distribution of the token after each position of
        `ids` (B, T) (T ≤ seq_len), weighted probability averaging as val was scored."""
        x = self._ids(ids)
        if self.aggregate == "logit":
            return torch.softmax(self._mixed_logits(x), dim=-1).double()
        acc = torch.zeros((*x.shape, self.vocab_size), dtype=torch.float64, device=self.device)
        for group in self.groups():
            for i, net in group:
                p = torch.softmax(net(x).float(), dim=-1).clamp_min(_TINY)
                acc += float(self.weights[i]) * p.double()
        return acc

    def cached(self) -> CachedMixture | None:
        """A mixture that keeps each member's attention keys and values (a KV cache), so that feeding one
        more token costs one position per member, not the whole context; None when the members do not
        all fit at once (`max_resident` < K: they are streamed, and sampling recomputes the context)."""
        if self.max_resident < self.k:
            return None
        return CachedMixture(self)

    def _mix_last(self, logits: torch.Tensor) -> torch.Tensor:
        """The mixture's distribution (V,) float64 from every member's logits for one position (K, V),
        combined as `next_token_probs` combines them (probability or logit averaging)."""
        w = torch.as_tensor(self.weights, device=logits.device)
        if self.aggregate == "logit":
            return torch.softmax(w.float() @ logits.float(), dim=-1).double()
        return w @ torch.softmax(logits.float(), dim=-1).clamp_min(_TINY).double()

    def _mixed_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Σ_r w̃_r z_r in float32, summed in member order as hepc.train.score.logit_ensemble_losses does."""
        mixed = 0
        for group in self.groups():
            for i, net in group:
                mixed = mixed + float(self.weights[i]) * net(x).float()
        return mixed

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def member_target_probs(self, tokens, batch_seqs: int | None = None) -> np.ndarray:
        """(K, N) float32: each member's probability of tokens[t+1] given its window (hepc.train.score)."""
        from hepc.train.score import CPU_BATCH_SEQS, CUDA_BATCH_SEQS, windows

        tokens = np.asarray(tokens, dtype=np.int64)
        n = max(len(tokens) - 1, 0)
        bs = batch_seqs or (CUDA_BATCH_SEQS if self.device.type == "cuda" else CPU_BATCH_SEQS)
        out = torch.empty((self.k, n), dtype=torch.float32, device=self.device)
        for group in self.groups():
            for start, window in windows(tokens, self.seq_len, bs):
                w = torch.from_numpy(window).to(self.device)
                x, y = w[:, :-1], w[:, 1:]
                for i, net in group:
                    p = torch.softmax(net(x).float(), dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
                    out[i, start:start + p.numel()] = p.clamp_min(_TINY).reshape(-1)
        return out.cpu().numpy()

    @torch.inference_mode()
    def _logit_nll(self, tokens: np.ndarray, batch_seqs: int | None = None) -> float:
        from hepc.train.score import CPU_BATCH_SEQS, CUDA_BATCH_SEQS, windows

        bs = batch_seqs or (CUDA_BATCH_SEQS if self.device.type == "cuda" else CPU_BATCH_SEQS)
        total, count = torch.zeros((), dtype=torch.float64, device=self.device), 0
        for _, window in windows(tokens, self.seq_len, bs):
            w = torch.from_numpy(window).to(self.device)
            x, y = w[:, :-1], w[:, 1:]
            nll = torch.nn.functional.cross_entropy(self._mixed_logits(x).flatten(0, 1), y.flatten(), reduction="sum")
            total += nll.double()
            count += y.numel()
        return float(total) / max(count, 1)

    def score(self, tokens, *, n_bytes: int | None = None) -> dict:
        """Scores of a token stream (targets: every token but the first), val's rule.

        {"tokens": targets N, "nats": total, "nats_per_token": mean, "bytes", "bits_per_byte",
        "members": [{"key", "name", "weight", "nats_per_token", "bits_per_byte"}]}. Bits per byte use
        the corpus's rule (mean / ln 2 / (bytes / ids)); bytes are counted by the tokenizer unless given.
        """
        from hepc.prior.rows import FLOOR
        from hepc.prior.select import ensemble_loss

        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if tokens.size < 2:
            raise HepcError("nothing to score: a stream needs at least two tokens (every token but the first is scored)")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size:
            raise HepcError(f"token ids must lie in [0, {self.vocab_size})")
        P = self.member_target_probs(tokens)
        n = P.shape[1]
        if self.aggregate == "logit":
            mean = self._logit_nll(tokens)
            total = mean * n
        else:
            mean = ensemble_loss(P, np.arange(self.k), self.weights)
            mix = self.weights @ P.astype(np.float64)
            total = -float(np.log(np.maximum(mix, FLOOR)).sum())
        if n_bytes is None:
            stats = getattr(self.tokenizer, "byte_stats", None)
            n_bytes = stats(tokens)[0] if stats is not None else None
        per_byte = (lambda nll: nll / math.log(2) / (n_bytes / tokens.size)) if n_bytes else (lambda nll: None)
        members = []
        for i, mb in enumerate(self.resolved.members):
            nll = float(-np.log(np.maximum(P[i].astype(np.float64), FLOOR)).mean())
            members.append({"key": mb.key, "name": mb.name, "weight": float(self.weights[i]),
                            "nats_per_token": nll, "bits_per_byte": per_byte(nll)})
        return {"tokens": int(n), "nats": total, "nats_per_token": mean, "bytes": n_bytes,
                "bits_per_byte": per_byte(mean), "members": members}

    def log_prob(self, text: str | bytes) -> dict:
        """`score` of a text as one document of the corpus (end-of-text first, cut into the corpus's
        pieces): "nats" is −log p(text | document start), summed over its tokens."""
        return self.score(document_tokens(self.tokenizer, text, self.resolved.max_doc_tokens))

    # ------------------------------------------------------------------ conditional log-probabilities
    @torch.inference_mode()
    def target_logprobs(self, tokens, first: int) -> tuple[np.ndarray, np.ndarray]:
        """(log p, greedy) of tokens[t] for t ≥ first, each given up to seq_len tokens before it
        (as much context as the model takes), under the mixture. float64 log-probabilities (floored
        at 1e-12 like val) and whether each token is the mixture's argmax."""
        from hepc.prior.rows import FLOOR

        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if not 1 <= first < tokens.size:
            raise ValueError(f"first target must lie in [1, {tokens.size})")
        logps, greedy = [], []
        for a in range(first, tokens.size, self.seq_len):
            b = min(tokens.size, a + self.seq_len)
            s = max(0, b - 1 - self.seq_len)
            probs = self.next_token_probs(tokens[None, s:b - 1])[0]  # predicts tokens[s+1 : b]
            rows = probs[a - 1 - s:]
            y = torch.from_numpy(tokens[a:b]).to(rows.device)
            p = rows.gather(-1, y[:, None]).squeeze(-1)
            logps.append(torch.log(p.clamp_min(FLOOR)).cpu().numpy())
            greedy.append((rows.argmax(-1) == y).cpu().numpy())
        return np.concatenate(logps), np.concatenate(greedy)

    def continuation_logprob(self, context: str, continuation: str) -> tuple[float, bool]:
        """log p(continuation | document start, context) and whether greedy decoding would produce it
        (the two numbers lm-eval's loglikelihood asks for)."""
        ctx = document_tokens(self.tokenizer, context, None)
        whole = document_tokens(self.tokenizer, context + continuation, None)
        first = ctx.size if np.array_equal(whole[:ctx.size], ctx) else _common_prefix(ctx, whole)
        if first >= whole.size:
            return 0.0, True
        logp, greedy = self.target_logprobs(whole, max(first, 1))
        return float(logp.sum()), bool(greedy.all())


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(a.size, b.size)
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


def load_ensemble(source, k=None, device: str = "cpu", overrides=None, store=None, *, population: str | None = None,
                  prior: str | None = None, max_resident: int | None = None, memory_bytes: int | None = None,
                  threads: int | None = None) -> Ensemble:
    """The top-K ensemble of a trained spec (YAML path; its store from `store`, $HEPC_STORE,
    runtime.store or runs/), of an exported folder (`hepc export`), or of a store folder without its
    spec (its one fitted prior, or the one `prior` names by key).

    k: an int or "all" (default: the whole population, or every exported member). Snapshots are read
    from safetensors only. Raises HepcError when the population is not trained yet, K is larger than
    it, or an exported file does not match its digest. max_resident / memory_bytes: members loaded at
    once (fewer than K streams them); threads: torch CPU threads (default: the spec's runtime.threads).
    """
    from hepc.use.source import resolve

    return Ensemble(resolve(source, k, overrides=overrides, store=store, population=population, prior=prior),
                    device=device,
                    max_resident=max_resident, memory_bytes=memory_bytes, threads=threads)


class CachedMixture:
    """The ensemble's next-token distribution with a KV cache per member (`Ensemble.cached`).

    `start(ids)` takes the context (at most seq_len tokens) and returns the distribution of the token
    after it; `push(token)` appends one token and returns the distribution after that. Each member
    computes only the new positions, the K members as one batched computation (hepc.use.decode);
    equal to `Ensemble.next_token_probs` on the whole context (fp32 rounding aside) while the context
    fits in seq_len. `length` is the number of positions cached."""

    def __init__(self, ensemble: Ensemble):
        from hepc.use.decode import MemberStack

        self.ensemble = ensemble
        (group,) = ensemble.groups()  # every member resident (Ensemble.cached)
        self.stack = MemberStack([net for _, net in group])
        self.started = False
        self._token = torch.empty(1, dtype=torch.long, device=ensemble.device)

    @property
    def length(self) -> int:
        return self.stack.length

    @torch.inference_mode()
    def start(self, ids) -> torch.Tensor:
        x = self.ensemble._ids(ids)
        if x.size(0) != 1:
            raise ValueError("a cached mixture follows one sequence")
        if x.size(1) < 1:
            raise ValueError("start(ids) needs at least one token")
        self.stack.reset()  # start again: the buffers are reused
        self.started = True
        return self.ensemble._mix_last(self.stack.step(x[0]))

    @torch.inference_mode()
    def push(self, token: int) -> torch.Tensor:
        if not self.started:
            raise ValueError("start(ids) first")
        if self.length + 1 > self.ensemble.seq_len:
            raise ValueError(f"the context would exceed seq_len {self.ensemble.seq_len}: start again from a shorter one")
        if not 0 <= int(token) < self.ensemble.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.ensemble.vocab_size})")
        self._token.fill_(int(token))
        return self.ensemble._mix_last(self.stack.step(self._token))
