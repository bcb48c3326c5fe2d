"""Where an ensemble comes from: a trained spec's population in a store, or an exported folder.

Resolves the K members, their top-K weights, the model shape, the tokenizer and the provenance
without importing torch (hepc.use.ensemble loads the weights). The rule is the one that scored val
(hepc.steps.prior): the prior's weights over the whole population as recorded in `prior.json`,
``hepc.prior.select.top_k`` (the K largest, renormalised, ties to the lower population index), combined
by the population's aggregate (weighted probability averaging; logit averaging for
`prior.aggregate: logit`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from hepc.errors import HepcError
from hepc.use.export_check import MANIFEST

_MAX_LISTED = 8  # missing steps named in the "not trained yet" message


@dataclass
class MemberRef:
    """One chosen snapshot: its cycle step key, population position and weights, and where its safetensors are."""

    key: str
    name: str  # "t1-c002"
    trajectory: int
    cycle: int
    weight: float  # the renormalised top-K weight
    prior_weight: float  # the prior's weight over the whole population (orders the members)
    path: Path  # model.safetensors
    val_loss: float | None = None
    sha256: str | None = None  # exported members: the digest the manifest records
    xxh3_128: str | None = None  # store members: the digest the cycle object's manifest records
    size: int | None = None  # bytes of the file, as recorded (checked before it is read)


@dataclass
class Resolved:
    """Everything an `Ensemble` needs, read from a store or an export folder."""

    members: list[MemberRef]
    aggregate: str  # "probability" or "logit"
    model: dict  # vocab_size, n_layer, d_model, n_head, seq_len
    tokenizer_config: dict  # the corpus's tokenizer config ({"kind": "bytes"}, ...)
    eot_id: int | None
    max_doc_tokens: int | None
    provenance: dict
    source: dict | None = None  # the data source's config (its document rule), when known
    tokenizer: object | None = None  # a built tokenizer (BPE from the store), else built from the config
    figures: dict = field(default_factory=dict)  # val figures recorded for this ensemble (export card)
    threads: int | None = None  # the spec's runtime.threads (torch CPU threads), when it sets them

    @property
    def k(self) -> int:
        return len(self.members)


def parse_k(k, population: int, where: str = "k", what: str = "the population") -> int:
    """K as an int in [1, population]; "all" is the whole population. Anything else: HepcError."""
    if isinstance(k, str):
        text = k.strip()
        if text == "all":
            return population
        try:
            k = int(text)
        except ValueError:
            raise HepcError(f"{where}: {k!r} is not a number of members (a positive integer or 'all')") from None
    if isinstance(k, bool) or not isinstance(k, int):
        raise HepcError(f"{where}: {k!r} is not a number of members (a positive integer or 'all')")
    if k < 1:
        raise HepcError(f"{where}: must be at least 1 (got {k})")
    if k > population:
        raise HepcError(f"{where}: K={k} is larger than {what} ({population} members)")
    return k


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def is_export(path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / MANIFEST).is_file()


# ---------------------------------------------------------------------------------------------- store


def _command(spec_path: str, overrides, store=None) -> str:
    """The `hepc run` that trains what is missing; names the store when one was given explicitly."""
    import shlex

    words = ["hepc", "run", spec_path, *[str(o) for o in overrides or []]]
    if store is not None:
        words += ["--store", str(store)]
    return " ".join(shlex.quote(w) for w in words)


def _population(compiled, label: str | None):
    pops = compiled.populations
    if label is None:
        if len(pops) == 1:
            return pops[0]
        labels = ", ".join(repr(p.label) for p in pops)
        raise HepcError(f"spec '{compiled.spec.name}' is a sweep of {len(pops)} populations; choose one with "
                        f"population=LABEL (one of {labels})")
    for p in pops:
        if p.label == label:
            return p
    labels = ", ".join(repr(p.label) for p in pops)
    raise HepcError(f"spec '{compiled.spec.name}' has no population {label!r} (its populations: {labels})")


def from_spec(spec, k, *, overrides=None, store=None, population: str | None = None) -> Resolved:
    """The top-K ensemble of a trained spec's population, read from its store.

    Raises HepcError (exit 2 in the CLI) when K is not in [1, population] or when the population
    is not trained yet (naming the missing steps and the command that trains them)."""
    import numpy as np

    from hepc.compile.compiler import compile_spec
    from hepc.prior.select import top_k
    from hepc.spec.load import load_spec
    from hepc.store.layout import resolve_store_path
    from hepc.store.objects import Store

    overrides = list(overrides or [])
    loaded = load_spec(spec, overrides)
    compiled = compile_spec(loaded)
    pop = _population(compiled, population)
    the_store = Store(resolve_store_path(None if store is None else str(store), loaded.spec.runtime.store))
    graph = compiled.graph
    m = len(pop.members)
    kk = parse_k(k, m)

    needed = [graph[pop.corpus_key], *(graph[mb.cycle_key] for mb in pop.members), graph[pop.prior_key]]
    if pop.logits_key is not None:
        needed.append(graph[pop.logits_key])
    missing = [s for s in needed if the_store.find(s) is None]
    if missing:
        names = [f"{s.kind} {s.name}" for s in missing[:_MAX_LISTED]]
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        which = f" (population {pop.label})" if pop.label else ""
        raise HepcError(
            f"spec '{compiled.spec.name}'{which}: the population is not trained yet: {len(missing)} of "
            f"{len(needed)} steps are not in store {the_store.root} ({', '.join(names)}{more}); "
            f"run `{_command(str(spec), overrides, store)}` first"
        )

    prior_dir = the_store.find_intact(graph[pop.prior_key])
    prior = the_store.read_object_json(prior_dir, "prior.json")
    corpus_dir = the_store.find_intact(graph[pop.corpus_key])
    meta = the_store.read_object_json(corpus_dir, "meta.json")
    weights = np.asarray([row["weight"] for row in prior["members"]], dtype=np.float64)
    idx, w = top_k(weights, kk)

    members = []
    for i, wi in zip(idx.tolist(), w.tolist()):
        mb, row = pop.members[i], prior["members"][i]
        snap = the_store.find_intact(graph[mb.cycle_key])  # a damaged snapshot is named, never used
        members.append(MemberRef(
            key=mb.cycle_key, name=f"t{mb.trajectory}-c{mb.cycle:03d}", trajectory=mb.trajectory, cycle=mb.cycle,
            weight=float(wi), prior_weight=float(weights[i]), path=snap / "model.safetensors",
            val_loss=row.get("val_loss"), **_recorded(the_store, snap, "model.safetensors"),
        ))

    sp = loaded.spec
    spec_path = Path(spec).resolve()
    provenance = {
        "spec": str(spec_path),
        "spec_name": sp.name,
        "spec_sha256": sha256_file(spec_path),
        "overrides": overrides,
        "population": pop.label,
        "store": str(the_store.root.resolve()),
        "prior_key": pop.prior_key,
        "prior": prior["prior"],
        "corpus_key": pop.corpus_key,
        "k": kk,
        "population_size": m,
        "members": [mr.key for mr in members],
        "aggregate": "logit" if pop.logits_key is not None else "probability",
    }
    tokenizer = None
    if meta.get("tokenizer", {}).get("kind") not in ("bytes", "none", None):  # a trained one: from its step
        tokenizer = load_tokenizer(compiled, the_store, compiled.populations.index(pop))
    return Resolved(
        members=members,
        aggregate=provenance["aggregate"],
        model={"vocab_size": int(meta["vocab_size"]), "n_layer": sp.model.n_layer, "d_model": sp.model.d_model,
               "n_head": sp.model.n_head, "seq_len": sp.data.seq_len},
        tokenizer_config=dict(meta.get("tokenizer") or {"kind": "none"}),
        eot_id=meta.get("eot_id"),
        max_doc_tokens=meta.get("max_doc_tokens"),
        provenance=provenance,
        source=sp.data.source.model_dump(mode="json"),
        tokenizer=tokenizer,
        figures=_figures(the_store, graph, pop, prior, idx, w, meta),
        threads=sp.runtime.threads,
    )


def _recorded(store, obj: Path, rel: str) -> dict:
    """The size and digest the object's manifest records for `rel`: the member is checked against them
    on the bytes it is loaded from (`load_member`), never trusted through a stat signature."""
    info = store.manifest(obj)["files"].get(rel) or {}
    return {"xxh3_128": info.get("xxh3_128"), "size": info.get("size")}


def load_member(member: MemberRef) -> bytes:
    """A member's snapshot bytes, read once and checked against the digest recorded for it (the store
    object's xxh3_128, or the export's sha256) before anything is built from them. A file of another
    size is refused before it is read; damage is one HepcError naming the file."""
    from hepc.store.safe_io import not_a_file, open_regular

    path = member.path
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if member.size is not None and size != member.size:
                raise HepcError(f"{path}: {size} bytes, expected {member.size} (truncated or altered); not used")
            data = f.read(size + 1)
    except OSError:
        raise HepcError(f"{path}: member snapshot {not_a_file(path)}") from None
    if member.xxh3_128 is not None and xxhash.xxh3_128_hexdigest(data) != member.xxh3_128:
        _distrust(path)
        raise HepcError(f"damaged object cycle/{path.parent.name}: {path.name} does not match its recorded digest "
                        "(altered); not used (`hepc run` moves it to quarantine/ and recomputes it)")
    if member.sha256 is not None and hashlib.sha256(data).hexdigest() != member.sha256:
        raise HepcError(f"{path}: sha256 does not match the export's checksum list (altered); export the ensemble again")
    if member.xxh3_128 is None and member.sha256 is None:
        raise HepcError(f"{path}: no recorded digest to check it against; not used")
    return data


def _distrust(path: Path) -> None:
    """A store member found damaged: drop the signatures that vouched for its object, so that the next
    `hepc run` re-hashes it, quarantines it and recomputes it."""
    from hepc.store.objects import Store

    obj = path.parent
    Store(obj.parent.parent.parent).distrust(obj)


def load_tokenizer(compiled, store, population: int = 0):
    """load_tokenizer(compiled, store, population=0) -> the tokenizer the corpus of a compiled spec
    (`hepc.compile.compiler.Compiled`; its `populations[population]`, the only one without a sweep) was built
    with, read from `store` (`hepc.store.objects.Store`) where it is trained: `BytesTokenizer` for `bytes`,
    `PretokenizedTokenizer` for `none` (ids pass through; no text), and for `bpe` the `BpeTokenizer` of
    the committed `tokenizer` step (its tokenizer.json; a HepcError when it is not trained yet or is
    damaged). Each has `encode(bytes | str) -> np.ndarray` (end-of-text first, as every corpus
    document), `decode(ids) -> str`, `vocab_size` and `eot_id`; `cut_document` cuts long documents as the corpus did."""
    from hepc.data.identity import DataError
    from hepc.data.tokenizers import make_tokenizer, tokenizer_config

    pop = compiled.populations[population]
    corpus = compiled.graph[pop.corpus_key]
    cfg = tokenizer_config(corpus.params["tokenizer"])
    if cfg["kind"] != "bpe":
        return make_tokenizer(cfg, corpus.context.get("source"))
    step = compiled.graph[corpus.inputs["tokenizer"]]
    path = store.find_intact(step, full=True)  # its files are read whole: hashed, not trusted
    if path is None:
        raise HepcError(
            f"the tokenizer of spec '{compiled.spec.name}' (tokenizer/{step.dirname}) is not trained yet in store "
            f"{store.root} (run `hepc run` first; `hepc plan` shows what is missing)"
        )
    try:
        return make_tokenizer(cfg, corpus.context.get("source"), trained=path)
    except DataError as e:
        raise HepcError(f"tokenizer/{step.dirname}: {getattr(e, 'message', e)}") from None


def _figures(store, graph, pop, prior: dict, idx, w, meta: dict) -> dict:
    """Val figures of this ensemble for the card: its val loss recomputed from the stored val scores
    (the rule of the prior step, for any K), the recorded budgets and the best single member."""
    from hepc.prior.select import ensemble_loss
    from hepc.steps.prior import bpb_of, load_scores, score_summary

    out = {
        "ensembles": [{k: e[k] for k in ("k", "k_label", "val_loss", "val_bpb")} for e in prior["ensembles"]],
        "best_single": min(({"name": f"t{r['trajectory']}-c{r['cycle']:03d}", "val_loss": r["val_loss"],
                             "val_bpb": r.get("val_bpb")} for r in prior["members"]), key=lambda r: r["val_loss"]),
        "val_tokens": (meta.get("tokens") or {}).get("val"),
    }
    steps = [graph[mb.score_keys["val"]] for mb in pop.members]
    if pop.logits_key is None and all(store.find(s) is not None for s in steps):
        folders = [store.find_intact(s, full=True) for s in steps]  # their bytes are read whole below
        loss = ensemble_loss(load_scores(folders), idx, w)
        out["val_loss"] = loss
        out["val_bpb"] = bpb_of(loss, score_summary(folders[0]))
    else:  # logit averaging: recorded for the prior's budgets only
        same = [e for e in prior["ensembles"] if e["k"] == len(idx)]
        if same:
            out["val_loss"], out["val_bpb"] = same[0]["val_loss"], same[0].get("val_bpb")
    return out


# --------------------------------------------------------------------------------------------- export


def from_export(folder, k=None) -> Resolved:
    """An exported ensemble folder (hepc.use.export): SHA256SUMS, the manifest, the card and the
    tokenizer checked before anything is built (hepc.use.export_check), each member's sha256 as it
    is loaded.

    `k` may pick the top k ≤ K of the exported members (the same rule: the largest prior weights,
    renormalised); more than the folder holds is an error."""
    from hepc.use.export_check import check_export

    folder = Path(folder)
    manifest, _, sums = check_export(folder)
    rows = manifest.members
    kk = len(rows) if k is None else parse_k(k, len(rows), what=f"the exported ensemble {folder}")
    chosen = rows[:kk]  # stored in top_k order: decreasing prior weight
    total = sum(r.prior_weight for r in chosen)
    if total <= 0:
        raise HepcError(f"{folder / MANIFEST}: the chosen members' prior weights sum to zero")
    members = [
        MemberRef(key=r.key, name=r.name, trajectory=r.trajectory, cycle=r.cycle,
                  weight=r.weight if kk == len(rows) else r.prior_weight / total,
                  prior_weight=r.prior_weight, path=folder / r.file, val_loss=r.val_loss,
                  sha256=sums[r.file], size=r.bytes)
        for r in chosen
    ]
    provenance = {**manifest.provenance, "export": str(folder.resolve()), "k": kk,
                  "members": [m.key for m in members]}
    tok = manifest.tokenizer
    return Resolved(
        members=members,
        aggregate=manifest.aggregate,
        model=manifest.model.model_dump(),
        tokenizer_config={**(tok.config or {}), "kind": tok.kind,
                          **({"file": str(folder / tok.file)} if tok.kind not in ("bytes", "none") else {})},
        eot_id=tok.eot_id,
        max_doc_tokens=manifest.max_doc_tokens,
        provenance=provenance,
        source=manifest.source,
        figures=manifest.figures if kk == len(rows) else {},
    )


# ---------------------------------------------------------------------------------------- store folder


def _object(store, kind: str, key: str, *, full: bool = False) -> Path:
    """The intact committed object `kind` with `key` (HepcError when it is missing or damaged); full=True
    hashes every byte (an object whose files are then read whole)."""
    path = store._kind_index(kind).get(key[:12])
    if path is None or not (path / "manifest.json").is_file():
        raise HepcError(f"store {store.root}: no {kind} object {key[:12]} (run `hepc run SPEC` for its spec)")
    problems = store.check(path, full=full)
    if problems:
        store.distrust(path)
        raise HepcError(f"damaged object {kind}/{path.name}: {'; '.join(problems)}; not used (`hepc verify` lists "
                        "every damaged object, `hepc run` recomputes it)")
    return path


def from_store_dir(root, k, *, prior: str | None = None) -> Resolved:
    """The top-K ensemble of a prior object in a store folder, without its spec: the objects' manifests
    lead from the prior to its score, cycle and corpus objects. With several priors in the store,
    `prior` (a key or a prefix of one, or the object's folder name) chooses one."""
    import numpy as np

    from hepc.prior.select import top_k
    from hepc.store.objects import Store

    store = Store(root)
    folder = store.objects / "prior"
    candidates = sorted(p for p in folder.iterdir() if (p / "manifest.json").is_file()) if folder.is_dir() else []
    if prior is not None:
        candidates = [p for p in candidates if p.name == prior or store.manifest(p)["key"].startswith(prior)]
    if len(candidates) != 1:
        names = ", ".join(p.name for p in candidates) or "none"
        raise HepcError(f"store {root}: {len(candidates)} fitted priors match ({names}); choose one with "
                        "--prior KEY (prior=KEY in Python), or load the ensemble from its spec")
    prior_dir = candidates[0]
    problems = store.check(prior_dir)
    if problems:
        raise HepcError(f"damaged object prior/{prior_dir.name}: {'; '.join(problems)}")
    pm = store.manifest(prior_dir)
    result = store.read_object_json(prior_dir, "prior.json")
    weights = np.asarray([row["weight"] for row in result["members"]], dtype=np.float64)
    kk = parse_k(k, len(weights))
    idx, w = top_k(weights, kk)
    members, cycle_params, corpus_key = [], None, None
    for i, wi in zip(idx.tolist(), w.tolist()):
        score = store.manifest(_object(store, "score", pm["inputs"]["val"][i]))
        corpus_key = score["inputs"]["corpus"]
        snap = _object(store, "cycle", score["inputs"]["snapshot"])
        cm = store.manifest(snap)
        cycle_params = cm["params"]
        row = result["members"][i]
        members.append(MemberRef(
            key=cm["key"], name=f"t{row['trajectory']}-c{row['cycle']:03d}", trajectory=row["trajectory"],
            cycle=row["cycle"], weight=float(wi), prior_weight=float(weights[i]), path=snap / "model.safetensors",
            val_loss=row.get("val_loss"), **_recorded(store, snap, "model.safetensors"),
        ))
    corpus_dir = _object(store, "corpus", corpus_key)
    meta = store.read_object_json(corpus_dir, "meta.json")
    tokenizer = None
    kind = (meta.get("tokenizer") or {}).get("kind")
    if kind not in ("bytes", "none", None):
        from hepc.use.text import ensemble_tokenizer

        tok_dir = _object(store, "tokenizer", store.manifest(corpus_dir)["inputs"]["tokenizer"], full=True)
        tokenizer = ensemble_tokenizer({**meta["tokenizer"], "file": str(tok_dir / "tokenizer.json")},
                                   int(meta["vocab_size"]), meta.get("eot_id"))
    model = cycle_params["model"]
    return Resolved(
        members=members,
        aggregate="probability",
        model={"vocab_size": int(meta["vocab_size"]), "n_layer": model["n_layer"], "d_model": model["d_model"],
               "n_head": model["n_head"], "seq_len": cycle_params["seq_len"]},
        tokenizer_config=dict(meta.get("tokenizer") or {"kind": "none"}),
        eot_id=meta.get("eot_id"),
        max_doc_tokens=meta.get("max_doc_tokens"),
        provenance={"spec": None, "spec_name": None, "store": str(Path(root).resolve()), "prior_key": pm["key"],
                    "prior": result["prior"], "corpus_key": corpus_key, "k": kk, "population_size": len(weights),
                    "members": [m.key for m in members], "aggregate": "probability"},
        tokenizer=tokenizer,
    )


def is_store(path) -> bool:
    from hepc.store.layout import MARKER

    p = Path(path)
    return p.is_dir() and (p / MARKER).is_file()


def resolve(source, k=None, *, overrides=None, store=None, population: str | None = None,
            prior: str | None = None) -> Resolved:
    """A spec path (YAML), an exported folder, or a store folder (its one fitted prior, or `prior`)."""
    if is_export(source):
        if overrides:
            raise HepcError(f"{source}: an exported ensemble takes no overrides")
        return from_export(source, k)
    p = Path(source)
    if is_store(p):
        if overrides:
            raise HepcError(f"{source}: a store folder takes no overrides (load the ensemble from its spec)")
        return from_store_dir(p, "all" if k is None else k, prior=prior)
    if p.is_dir():
        raise HepcError(f"{source}: a folder that is neither an exported ensemble ({MANIFEST}) nor an hepc store; "
                        "give a spec file, an exported folder or a store folder")
    return from_spec(source, "all" if k is None else k, overrides=overrides, store=store, population=population)


def dumps(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True) + "\n"
