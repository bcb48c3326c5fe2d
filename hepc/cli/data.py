"""`hepc data SPEC [key=value ...] [--store DIR] [--json]`: the corpus as it will be (or was) built.

For each corpus step of the spec (one per distinct data section of a sweep): per split (val, test
when there is one, heldout, train) its documents (pieces), source documents, tokens, bytes, bytes per
token, the share of its largest document, the tokens dropped where the document that filled it was
cut, and its largest source documents with the file (and line, row or document number) they come
from; for the source as a whole, its documents, pieces and tokens, the exact duplicates dropped
before carving, and what the splits leave unused. A split one document holds more than 5 % of is
flagged. When some file of a text source is compressed, the files' bytes on disk and decompressed, and
each split's share of them (`file_bytes`). A corpus committed in the store is read from its
meta.json (checked against its manifest digest); otherwise it is computed by a dry pass: the corpus
step's own body runs into a temporary folder outside the store, so the figures are those `hepc run`
will record, and nothing is written to the store. `plan_data_lines` gives `hepc plan` the same, one
line per corpus, when the store has it or the source is small (`SMALL_SOURCE_BYTES`).

As hepc.cli.status: a plain function (`data_command`) plus `register(app)`, no `from __future__
import annotations` (the Typer signature is built inside `register` from hepc.cli's option types).
"""

import json
import re
import sys
import tempfile
from pathlib import Path

from hepc.compile.plan import present_splits

SMALL_SOURCE_BYTES = 2 << 20  # `hepc plan` dry-passes an unbuilt text corpus whose files total at most this


# --------------------------------------------------------------------------- gathering


def corpus_steps(compiled) -> list:
    """The corpus steps of a compiled spec, each once, in graph order."""
    return [step for step in compiled.graph if step.kind == "corpus"]


def stored_meta(step, store):
    """(meta.json of the committed corpus, None) or (None, why not): None, None when it is not committed."""
    from hepc.compile.plan import _corpus_meta

    path = store.find(step)
    if path is None:
        return None, None
    return _corpus_meta(path)


def dry_meta(step, graph, store, loaded, *, train_tokenizer: bool = True) -> dict:
    """The meta.json the corpus step would record, from running its body into a temporary folder.

    Inputs of the step (a trained tokenizer, say) must be committed in the store; a DataError is a
    located SpecError, as `hepc run` reports it."""
    from hepc.data.identity import DataError
    from hepc.errors import HepcError, Problem, SpecError
    from hepc.steps import RunContext, body
    from hepc.store.safe_io import disk_error, os_error_message

    with tempfile.TemporaryDirectory(prefix="hepc-data-") as tmp:
        ctx = RunContext(runtime=loaded.spec.runtime.model_dump())
        inputs = {}
        for role, keys in step.inputs.items():
            paths = []
            for key in keys if isinstance(keys, list) else [keys]:
                upstream = graph[key]
                path = store.find(upstream)
                if path is None:
                    path = _scratch_input(upstream, Path(tmp), ctx, step, train_tokenizer)
                paths.append(str(path))
            inputs[role] = paths if isinstance(keys, list) else paths[0]
        out, work = Path(tmp) / "out", Path(tmp) / "work"
        out.mkdir()
        work.mkdir()
        try:
            body("corpus")(step, inputs, out, work, ctx)
        except DataError as e:
            raise SpecError([Problem(loaded.where(e.field), e.field, e.message)]) from None
        except Exception as e:
            disk = disk_error(e, Path(tmp))
            if disk is None:
                raise
            raise HepcError(f"hepc data builds the corpus in a scratch folder: {os_error_message(disk, Path(tmp))} "
                            "(set TMPDIR to a folder on a disk with room)") from None
        return json.loads((out / "meta.json").read_text())


def _scratch_input(upstream, tmp: Path, ctx, step, train_tokenizer: bool) -> Path:
    """An input of the corpus step that is not built yet, built into the scratch folder: a BPE tokenizer
    is trained there (on the train split only, as `hepc run` trains it), then dropped with the folder."""
    import time

    from hepc.errors import HepcError
    from hepc.steps import body

    if upstream.kind != "tokenizer" or not train_tokenizer:
        raise HepcError(f"corpus {step.name} needs the {upstream.kind} step {upstream.name}, which is not built yet: "
                        "`hepc run` builds it (then `hepc data` reads the corpus from the store)")
    print(f"tokenizer {upstream.name}: not in the store; training it in a scratch folder for this preview "
          "(`hepc run` trains it into the store) ...", file=sys.stderr, flush=True)
    t0 = time.time()
    out, work = tmp / f"{upstream.kind}-out", tmp / f"{upstream.kind}-work"
    out.mkdir()
    work.mkdir()
    body(upstream.kind)(upstream, {}, out, work, ctx)
    print(f"tokenizer {upstream.name}: trained in {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    return out


def source_bytes(step, base_dir) -> int | None:
    """Total size of a text source's files, decompressed (None for other sources, when they cannot be listed,
    or when their compressed sizes alone pass SMALL_SOURCE_BYTES)."""
    from hepc.data.compressed import decompressed_size
    from hepc.data.identity import DataError, list_data_files

    source = step.context.get("source") or {}
    if source.get("kind") != "text":
        return None
    try:
        files = list_data_files(source, Path(base_dir))
        on_disk = sum(f.path.stat().st_size for f in files)
        if on_disk > SMALL_SOURCE_BYTES or not any(f.compression for f in files):
            return on_disk
        return sum(decompressed_size(f.path) if f.compression else f.path.stat().st_size for f in files)
    except (DataError, OSError):
        return None


def file_bytes(step, base_dir, meta: dict) -> dict | None:
    """A text source with compressed files: its files' bytes on disk and decompressed, and each split's share
    of them (None when no file is compressed, or the files are not those the corpus was built from).

    A split's share of a file is the share of the file's text (`file_text_bytes`) that the split takes,
    its bytes counted in proportion to its tokens from that file (`tokens_by_file`); the file's
    compressed and decompressed bytes are counted in that proportion. Decompressed sizes come from
    the digest cache (hepc/data/compressed.py), so this reads no file whose digest is cached."""
    from hepc.data.compressed import content_digest
    from hepc.data.identity import DataError, list_data_files

    source = step.context.get("source") or {}
    if source.get("kind") != "text":
        return None
    try:
        files = list_data_files(source, Path(base_dir))
        if not any(f.compression for f in files):
            return None
        on_disk = [f.path.stat().st_size for f in files]
        plain = [content_digest(f.path)[2] if f.compression else size for f, size in zip(files, on_disk)]
    except (DataError, OSError):
        return None
    formats: dict[str, int] = {}
    for f in files:
        if f.compression:
            formats[f.compression] = formats.get(f.compression, 0) + 1
    out = {"files": len(files), "compressed_files": formats, "compressed_bytes": sum(on_disk),
           "decompressed_bytes": sum(plain), "splits": {}}
    names = [e.get("name") for e in (meta.get("source") or {}).get("files") or [] if isinstance(e, dict)]
    text = meta.get("file_text_bytes")
    if names != [f.document_name for f in files] or not isinstance(text, list) or len(text) != len(files):
        return out  # built from other files (or before this was recorded): the totals only
    for name, split in (meta.get("splits") or {}).items():
        by_file = split.get("tokens_by_file") if isinstance(split, dict) else None
        tokens, n_bytes = (meta.get("tokens") or {}).get(name), (meta.get("bytes") or {}).get(name)
        if not isinstance(by_file, list) or not tokens or not isinstance(n_bytes, int):
            continue
        compressed = decompressed = 0.0
        for i, t in by_file:
            if 0 <= i < len(files) and text[i]:
                share = n_bytes * t / tokens / text[i]  # of the file's text, so of its bytes
                compressed += share * on_disk[i]
                decompressed += share * plain[i]
        out["splits"][name] = {"compressed_bytes": round(compressed), "decompressed_bytes": round(decompressed)}
    return out


# --------------------------------------------------------------------------- summarising


def where_from(name: str) -> dict:
    """{'file': ..., 'place': 'line 18' | 'row 3' | 'document 5' | None} from a source document's name."""
    for pattern, place in ((r"^(.*):line (\d+)$", "line"), (r"^(.*):row (\d+)$", "row"), (r"^(.*)#(\d+)$", "document")):
        m = re.match(pattern, name, re.DOTALL)
        if m:
            return {"file": m.group(1), "place": f"{place} {m.group(2)}"}
    return {"file": name, "place": None}


def summarize(meta: dict) -> dict:
    """What `hepc data` shows of one corpus's meta.json: per split and for the whole source."""
    splits = {}
    for name in present_splits(meta):
        split = (meta.get("splits") or {}).get(name) or {}
        tokens = _int((meta.get("tokens") or {}).get(name))
        splits[name] = {
            "documents": _int((meta.get("documents") or {}).get(name)),
            "source_documents": _int(split.get("source_documents")),
            "tokens": tokens,
            "bytes": _int((meta.get("bytes") or {}).get(name)),
            "bytes_per_token": (meta.get("bytes_per_token") or {}).get(name),
            "tokens_dropped": _int(split.get("tokens_dropped")),
            "source_documents_in_other_splits": _int(split.get("source_documents_in_other_splits")),
            "largest_share": split.get("largest_share") if isinstance(split.get("largest_share"), float) else None,
            "largest": [
                {**entry, **where_from(str(entry.get("name")))} for entry in split.get("largest") or [] if isinstance(entry, dict)
            ],
        }
    used = sum(s["tokens"] or 0 for s in splits.values())
    dropped = _int(meta.get("tokens_dropped"))
    total = _int(meta.get("source_tokens"))
    unused = None if total is None or dropped is None else total - used - dropped
    return {
        "tokenizer": meta.get("tokenizer"),
        "vocab_size": meta.get("vocab_size"),
        "max_doc_tokens": meta.get("max_doc_tokens"),
        "split_rule": meta.get("split_rule"),
        "source": {
            "documents": _int(meta.get("source_documents")),
            "pieces": _int(meta.get("source_pieces")),
            "tokens": total,
            "tokens_in_splits": used,
            "tokens_dropped": dropped,
            "tokens_unused": unused,
            "duplicates": meta.get("duplicates") if isinstance(meta.get("duplicates"), dict) else None,
        },
        "splits": splits,
    }


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def corpus_report(step, graph, store, loaded, *, dry: bool = True, train_tokenizer: bool = True) -> dict:
    """One corpus: its step, where its figures come from ('store' or 'dry pass') and `summarize`'s figures."""
    meta, problem = stored_meta(step, store)
    origin = "store"
    if meta is None:
        if not dry:
            return {"corpus": step.name, "key": step.key12, "origin": None, "problem": problem}
        meta, origin = dry_meta(step, graph, store, loaded, train_tokenizer=train_tokenizer), "dry pass"
    report = {"corpus": step.name, "key": step.key12, "origin": origin}
    if problem:
        report["stored_problem"] = problem
    report |= summarize(meta)
    report["source"]["duplicate_files"] = duplicate_files(step.params.get("source") or {})
    on_disk = file_bytes(step, loaded.base_dir, meta)
    report["source"]["file_bytes"] = None if on_disk is None else {k: v for k, v in on_disk.items() if k != "splits"}
    for name, split in report["splits"].items():
        shares = (on_disk or {}).get("splits", {}).get(name) or {}
        split["compressed_bytes"] = shares.get("compressed_bytes")
        split["decompressed_bytes"] = shares.get("decompressed_bytes")
    return report


def duplicate_files(identity: dict) -> list[list[str]]:
    """Groups of files of a file source whose bytes are identical (names sorted; from the source's
    identity, which holds each file's digest). Their documents are exact duplicates: each is kept once."""
    groups: dict[str, list[str]] = {}
    for entry in identity.get("files") or []:
        if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
            groups.setdefault(entry["digest"], []).append(str(entry.get("name")))
    return sorted(sorted(names) for names in groups.values() if len(names) > 1)


# --------------------------------------------------------------------------- rendering


def render(report: dict) -> list[str]:
    origin = {"store": "built (read from the store)", "dry pass": "not built yet: a dry pass over the source, nothing written"}
    lines = [f"corpus {report['corpus']} ({report['key']}): {origin.get(report['origin'], report['origin'])}"]
    src = report["source"]
    cap = report.get("max_doc_tokens")
    if src["documents"] is not None:
        cut = f"pieces of at most {cap:,} tokens" if cap else "no cap"
        lines.append(
            f"  source: {src['documents']:,} documents -> {src['pieces']:,} pieces ({cut}), "
            + (f"{src['tokens']:,} tokens" if src["tokens"] is not None else "tokens not counted (bpe encodes only what the splits take)")
        )
    on_disk = src.get("file_bytes")
    if on_disk:
        formats = ", ".join(f"{kind} {n:,}" for kind, n in sorted(on_disk["compressed_files"].items()))
        ratio = on_disk["decompressed_bytes"] / on_disk["compressed_bytes"] if on_disk["compressed_bytes"] else 0
        lines.append(f"  files: {on_disk['files']:,} ({sum(on_disk['compressed_files'].values()):,} compressed: {formats}), "
                     f"{on_disk['compressed_bytes']:,} bytes on disk, {on_disk['decompressed_bytes']:,} decompressed "
                     f"({ratio:.1f}x); per split, its share of them (compressed, decompressed)")
    header = (f"  {'split':<8}{'documents':>11}{'source docs':>13}{'tokens':>13}{'bytes':>13}{'bytes/token':>13}"
              f"{'largest':>9}{'dropped':>10}" + (f"{'compressed':>14}{'decompressed':>14}" if on_disk else ""))
    lines.append(header)
    splits = list(report["splits"])
    for name in splits:
        s = report["splits"][name]
        bpt, share = s["bytes_per_token"], s.get("largest_share")
        lines.append(
            f"  {name:<8}{_n(s['documents']):>11}{_n(s['source_documents']):>13}{_n(s['tokens']):>13}"
            f"{_n(s['bytes']):>13}{(f'{bpt:.3f}' if isinstance(bpt, (int, float)) else '-'):>13}"
            f"{(f'{share:.1%}' if share is not None else '-'):>9}{_n(s['tokens_dropped']):>10}"
            + (f"{_n(s.get('compressed_bytes')):>14}{_n(s.get('decompressed_bytes')):>14}" if on_disk else "")
        )
    copies = src.get("duplicate_files") or []
    if copies:
        shown = "; ".join(" = ".join(group[:3]) + (" = ..." if len(group) > 3 else "") for group in copies[:3])
        extra = sum(len(g) - 1 for g in copies)
        lines.append(f"  duplicate files: {extra:,} file{'s are exact copies' if extra != 1 else ' is an exact copy'} "
                     f"of another ({shown}{'; ...' if len(copies) > 3 else ''}); their documents count once")
    duplicates = src.get("duplicates") or {}
    if duplicates.get("documents"):
        lines.append(f"  duplicates: {duplicates['documents']:,} exact copies of other documents "
                     f"({_n(duplicates.get('tokens'))} tokens) dropped before carving")
    if src["tokens_dropped"] is not None:
        text = (f"  dropped: {src['tokens_dropped']:,} tokens, only the rest of the document that filled a split "
                "(cut there so the split is exact)")
        if src["tokens_unused"] is not None:
            text += f"; unused: {src['tokens_unused']:,} tokens of the source that no split needed"
        lines.append(text)
    shared = [f"{n} {report['splits'][n]['source_documents_in_other_splits']:,}" for n in splits
              if report["splits"][n]["source_documents_in_other_splits"]]
    if shared:
        lines.append(f"  source documents with pieces in another split too: {', '.join(shared)}")
    lines.extend(f"  warning: {text}" for text in share_warnings(report))
    numbered = any(e.get("place") for n in splits for e in report["splits"][n]["largest"])
    note = "; line n counts from 1, row n and document n from 0" if numbered else ""
    lines.append(f"  largest source documents per split (tokens in the split{note}):")
    for name in splits:
        for entry in report["splits"][name]["largest"]:
            place = f", {entry['place']}" if entry.get("place") else ""
            pieces = entry.get("pieces", 1)
            lines.append(
                f"    {name:<8}{entry.get('tokens', 0):>9,} tokens  {entry['file']}{place}"
                + (f"  ({pieces:,} pieces)" if pieces != 1 else "")
            )
    return lines


def share_warnings(report: dict) -> list[str]:
    """One line per split whose largest document holds more than SHARE_WARNING of it."""
    from hepc.data.carve import SHARE_WARNING

    out = []
    for name, split in report["splits"].items():
        share = split.get("largest_share")
        if share is not None and share > SHARE_WARNING and split["largest"]:
            top = split["largest"][0]
            out.append(f"one document is {share:.0%} of {name} ({top['file']}"
                       + (f", {top['place']}" if top.get("place") else "")
                       + "): a split of few documents is noisy; a `documents` rule that makes smaller documents, "
                       "or a larger split, spreads it")
    return out


def _n(value) -> str:
    return "-" if value is None else f"{value:,}"


def one_line(report: dict) -> str:
    """'val 612 docs 20,000 tokens · heldout … · train …' for `hepc plan`."""
    parts = [f"{n} {_n(report['splits'][n]['documents'])} documents {_n(report['splits'][n]['tokens'])} tokens"
             for n in report["splits"]]
    src = report["source"]
    tail = f" (of {src['documents']:,} source documents)" if src["documents"] is not None else ""
    return " · ".join(parts) + tail


# --------------------------------------------------------------------------- commands


def data_command(spec: str, overrides=None, store: str | None = None, json_out: bool = False) -> int:
    from hepc.cli.app import check_inputs, load, open_store, warn

    loaded, compiled = load(spec, overrides, strict_data=True)
    warn(compiled)
    check_inputs(loaded, compiled)
    the_store = open_store(store, loaded)
    steps = corpus_steps(compiled)
    reports = []
    for step in steps:
        if stored_meta(step, the_store)[0] is None and not json_out:
            print(f"corpus {step.name}: not in the store; counting by a dry pass over the source ...", file=sys.stderr, flush=True)
        reports.append(corpus_report(step, compiled.graph, the_store, loaded))
    if json_out:
        print(json.dumps({"spec": spec, "corpora": reports}, indent=1))
        return 0
    print("\n\n".join("\n".join(render(r)) for r in reports))
    return 0


def plan_data_lines(the_plan, the_store, loaded) -> list[str]:
    """`hepc plan`'s corpus lines (hepc.compile.plan.split_lines), a not-yet-built corpus of a small text source
    summarised by a dry pass in one line; a dry pass that fails leaves the plain line."""
    from hepc.compile.plan import split_lines
    from hepc.errors import HepcError

    graph = {planned.step.key: planned.step for planned in the_plan.steps}

    def dry_pass(step) -> str | None:
        size = source_bytes(step, loaded.base_dir)
        if size is None or size > SMALL_SOURCE_BYTES:
            return None
        try:
            report = corpus_report(step, graph, the_store, loaded, train_tokenizer=False)  # plan stays quick
            return f"a dry pass gives {one_line(report)}"
        except (HepcError, OSError):  # the plan stands without its summary; `hepc data` says what is wrong
            return None

    return split_lines(the_plan, the_store, unbuilt=dry_pass)


def register(app) -> None:
    """Add `data` to the hepc Typer app (hepc.cli calls this at its end)."""
    import typer

    from hepc.cli.app import JsonOpt, Overrides, SpecArg, StoreOpt, user_errors

    existing = {c.name or getattr(c.callback, "__name__", None) for c in app.registered_commands}
    if "data" in existing:
        return  # already registered

    @app.command()
    @user_errors
    def data(spec: SpecArg, overrides: Overrides = None, store: StoreOpt = None, json_out: JsonOpt = False) -> None:
        """The corpus as it will be (or was) built: per split documents, tokens, bytes, dropped tokens, largest documents."""
        code = data_command(spec, overrides, store, json_out)
        if code:
            raise typer.Exit(code)
