"""Cross-field rules of a spec, each reported at the field that has to change."""

from __future__ import annotations

from hepc.spec.models import Spec


def trained_tokens(spec: Spec) -> int:
    """Tokens one epoch trains on: train_tokens, less the held-out slice unless it is trained on too."""
    d = spec.data
    return d.train_tokens if d.train_on_heldout else d.train_tokens - d.heldout_tokens


def consistency_problems(spec: Spec) -> list[tuple[tuple, str]]:
    """Return (path, message) for every inconsistency between fields of an otherwise valid spec."""
    out: list[tuple[tuple, str]] = []
    d, m, o, pop = spec.data, spec.model, spec.optimizer, spec.population

    is_tokens = d.source.kind == "tokens"
    if is_tokens and d.tokenizer != "none":
        out.append((("data", "tokenizer"), f"must be 'none' for a pre-tokenized source (got {getattr(d.tokenizer, 'kind', d.tokenizer)!r})"))
    if not is_tokens and d.tokenizer == "none":
        out.append((("data", "tokenizer"), "'none' needs a pre-tokenized source (kind: tokens)"))
    if d.source.kind in ("text", "pystdlib") and d.source.documents != "file":
        from hepc.data.identity import DataError
        from hepc.data.sources import document_splitter

        try:
            document_splitter(d.source.model_dump())
        except DataError as e:
            out.append((tuple(e.field.split(".")), e.message))
    if is_tokens and d.source.eot_id >= d.source.vocab_size:
        out.append((("data", "source", "eot_id"), f"must be < vocab_size ({d.source.vocab_size})"))

    if d.heldout_tokens >= d.train_tokens:
        out.append(
            (("data", "heldout_tokens"),
             (f"must be < data.train_tokens ({d.train_tokens}) because it is carved out of train "
              f"(got {d.heldout_tokens})"))
        )
    elif d.train_tokens - d.heldout_tokens < d.seq_len + 1:
        out.append(
            (("data", "train_tokens"),
             (f"leaves {d.train_tokens - d.heldout_tokens} training tokens after the held-out slice; "
              f"need at least seq_len + 1 = {d.seq_len + 1}"))
        )
    if d.val_tokens < d.seq_len + 1:
        out.append((("data", "val_tokens"), f"must be >= seq_len + 1 = {d.seq_len + 1} (got {d.val_tokens})"))
    if d.heldout_tokens < 2:
        out.append((("data", "heldout_tokens"), f"must be >= 2 (got {d.heldout_tokens})"))
    if 0 < d.test_tokens < d.seq_len + 1:
        out.append((("data", "test_tokens"), f"must be 0 (no test split) or >= seq_len + 1 = {d.seq_len + 1} (got {d.test_tokens})"))
    if d.train_on_heldout and spec.prior.kind != "uniform":
        out.append(
            (("data", "train_on_heldout"),
             f"needs prior.kind uniform: a {spec.prior.kind} prior is fit on the held-out slice, which must not be trained on")
        )

    if m.d_model % m.n_head != 0:
        out.append((("model", "n_head"), f"must divide model.d_model ({m.d_model}) (got {m.n_head})"))
    elif (m.d_model // m.n_head) % 2 != 0:
        out.append(
            (("model", "n_head"),
             f"gives an odd head size {m.d_model // m.n_head}; RoPE needs an even one")
        )

    if o.batch_tokens % d.seq_len != 0:
        out.append(
            (("optimizer", "batch_tokens"),
             f"must be a multiple of data.seq_len ({d.seq_len}) (got {o.batch_tokens})")
        )
    elif o.batch_tokens // d.seq_len > trained_tokens(spec) // (d.seq_len + 1) > 0:
        out.append(
            (("optimizer", "batch_tokens"),
             (f"is larger than one epoch of training sequences "
              f"({trained_tokens(spec) // (d.seq_len + 1)} × {d.seq_len} tokens)"))
        )

    if o.kind != "muon":  # a Muon setting given another value than its default, with kind adamw
        for name, value in o.muon_settings().items():  # (a resolved spec repeats the defaults: fine)
            if name in o.model_fields_set and value != type(o).model_fields[name].default:
                out.append((("optimizer", name), f"only applies to optimizer.kind muon (kind is {o.kind!r})"))

    members = pop.trajectories * pop.cycles
    for i, k in enumerate(spec.prior.budgets):
        if k != "all" and k > members:
            out.append(
                (("prior", "budgets", i),
                 f"K = {k} is larger than the population (trajectories × cycles = {members})")
            )
    seen = set()
    for i, k in enumerate(spec.prior.budgets):
        if k in seen:
            out.append((("prior", "budgets", i), f"duplicate budget {k!r}"))
        seen.add(k)
    return out
