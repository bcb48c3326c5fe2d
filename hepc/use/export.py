"""`hepc export`: a self-contained folder of the top-K ensemble, loadable without the store.

    DIR/hepc-ensemble.json        manifest: format, K, aggregate, model config, tokenizer, document rule,
                                  members (key, trajectory, cycle, weights, file, sha256), every file's
                                  sha256, provenance (spec, its sha256, prior key, store) and val figures
    DIR/members/<name>-<key12>.safetensors   the K snapshots, as the store holds them
    DIR/tokenizer.json            the tokenizer (bytes: its kind and ids; a trained one: its own file)
    DIR/README.md                 the card: where it came from, its members and weights, val figures, usage
    DIR/SHA256SUMS                `<sha256>  <name>` of every other file (`sha256sum -c SHA256SUMS` checks it);
                                  loading checks it before anything is built (hepc/use/export_check.py)

Written into a temporary folder next to DIR and renamed into place: DIR appears whole or not at all.
An existing DIR is refused unless `force`, and even then only an earlier export (or an empty folder)
holding nothing but its own files is replaced, so neither a mistyped --out nor a note a user added
to an export is ever deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from hepc.errors import HepcError
from hepc.store.safe_io import DISK_FULL_OR_READ_ONLY, read_json
from hepc.use.export_check import CARD, EXPORT_FORMAT, MANIFEST, SUMS, sums_text
from hepc.use.source import MemberRef, Resolved, dumps, is_export, load_member, sha256_file
from hepc.use.text import BYTES_TOKENIZER_FILE


def _check_target(out: Path, force: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise HepcError(f"--out {out}: exists and is not a folder; choose another path")
    if out.exists():
        if not force:
            raise HepcError(f"--out {out}: already exists; use --force to replace it (nothing was written)")
        if any(out.iterdir()) and not is_export(out):
            raise HepcError(f"--out {out}: a folder that is not an exported ensemble; --force replaces only an "
                            "earlier export (or an empty folder); choose another path")
        foreign = _not_written_by_export(out)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise HepcError(f"--out {out}: holds files hepc export did not write ({shown}); --force replaces only "
                            "an export's own files: move those out or choose another path (nothing was written)")
    if not out.parent.is_dir():
        raise HepcError(f"--out {out}: its parent folder {out.parent} does not exist")


def _copy(member: MemberRef, dest: Path, out: Path) -> None:
    """Copy a member's snapshot into the export, from bytes checked against the store's recorded digest
    (`load_member`); a full or read-only disk is named at the export."""
    data = load_member(member)
    try:
        with open(dest, "xb") as f:
            f.write(data)
    except OSError as e:
        if e.errno in DISK_FULL_OR_READ_ONLY:
            raise OSError(e.errno, e.strerror, str(out)) from None
        raise


def _not_written_by_export(out: Path) -> list[str]:
    """Paths under an earlier export (relative, sorted) that its manifest does not list as its own."""
    if not any(out.iterdir()):
        return []
    try:
        listed = read_json(out / MANIFEST).get("files") or {}  # bounded, regular files only
        own = {MANIFEST, CARD, SUMS, "members", "hf", *(str(k) for k in dict(listed))}
        own |= {str(k).rsplit("/", 1)[0] for k in dict(listed) if str(k).startswith("hf/")}
    except (OSError, ValueError, TypeError, AttributeError):
        own = {MANIFEST, CARD, SUMS, "members", "hf"}
    found = []
    for root, dirs, names in os.walk(out):  # links are not followed (os.walk's default)
        for name in dirs + names:
            rel = (Path(root) / name).relative_to(out).as_posix()
            if rel not in own:
                found.append(rel)
    return sorted(found)


def export(resolved: Resolved, tokenizer, out, *, force: bool = False, hf: bool = False) -> Path:
    """Write the folder; returns its path. HepcError (nothing written) for a target that may not be used.
    `hf`: also each member as a transformers model folder, DIR/hf/<name>/ (hepc/use/hf.py)."""
    out = Path(out)
    _check_target(out, force)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        (tmp / "members").mkdir(parents=True)
        files, rows = {}, []
        for m in resolved.members:
            rel = f"members/{m.name}-{m.key[:12]}.safetensors"
            _copy(m, tmp / rel, out)
            digest = sha256_file(tmp / rel)
            files[rel] = digest
            rows.append({"key": m.key, "name": m.name, "trajectory": m.trajectory, "cycle": m.cycle,
                         "weight": m.weight, "prior_weight": m.prior_weight, "val_loss": m.val_loss,
                         "file": rel, "sha256": digest, "bytes": (tmp / rel).stat().st_size})
        tok = _write_tokenizer(resolved, tokenizer, tmp)
        files[tok["file"]] = sha256_file(tmp / tok["file"])
        if hf:
            files |= _write_hf(resolved, tokenizer, tmp)
        manifest = {
            "format": "hepc-ensemble",
            "version": EXPORT_FORMAT,
            "k": resolved.k,
            "aggregate": resolved.aggregate,
            "model": resolved.model,
            "tokenizer": tok,
            "max_doc_tokens": resolved.max_doc_tokens,
            "source": resolved.source,
            "members": rows,
            "weights": [m.weight for m in resolved.members],
            "files": files,
            "provenance": publishable(resolved.provenance),
            "figures": resolved.figures,
        }
        (tmp / MANIFEST).write_text(dumps(manifest))
        (tmp / CARD).write_text(card(manifest))
        sums = {**files, MANIFEST: sha256_file(tmp / MANIFEST), CARD: sha256_file(tmp / CARD)}
        (tmp / SUMS).write_text(sums_text(sums))  # every file, the manifest and the card included
        _fsync_tree(tmp)
        if out.exists():  # --force over an earlier export: swap, then delete the old one
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_hf(resolved: Resolved, tokenizer, tmp: Path) -> dict[str, str]:
    """hf/<member>/ for each member (config, weights, tokenizer); {relative path: sha256} of the files."""
    from safetensors.torch import load

    from hepc.use.hf import write_member

    if getattr(tokenizer, "eot_id", None) is None or not hasattr(tokenizer, "encode"):
        raise HepcError("--format hf needs a text tokenizer (bytes or a trained BPE); this population has none")
    out = {}
    for m in resolved.members:
        folder = tmp / "hf" / f"{m.name}-{m.key[:12]}"
        write_member(folder, load((tmp / f"members/{m.name}-{m.key[:12]}.safetensors").read_bytes()), resolved.model,
                     tokenizer)
        for f in sorted(folder.iterdir()):
            out[f.relative_to(tmp).as_posix()] = sha256_file(f)
    return out


def publishable(provenance: dict) -> dict:
    """The provenance an export carries (its manifest and card may be published): the spec by its path
    relative to the folder hepc ran in (its file name when it lies elsewhere) and its sha256, the step
    keys; never this machine's folders (the store's path is left out)."""
    out = {k: v for k, v in provenance.items() if k != "store"}
    spec = provenance.get("spec")
    if spec:
        path = Path(spec)
        try:
            out["spec"] = path.relative_to(Path.cwd().resolve()).as_posix()
        except ValueError:
            out["spec"] = path.name
    return out


def _write_tokenizer(resolved: Resolved, tokenizer, folder: Path) -> dict:
    kind = resolved.tokenizer_config.get("kind")
    if kind == "bytes":
        (folder / "tokenizer.json").write_text(dumps(BYTES_TOKENIZER_FILE))
        return {"kind": "bytes", "file": "tokenizer.json", "eot_id": BYTES_TOKENIZER_FILE["eot_id"]}
    if kind == "none":
        record = {"kind": "none", "vocab_size": resolved.model["vocab_size"], "eot_id": resolved.eot_id}
        (folder / "tokenizer.json").write_text(dumps(record))
        return {"kind": "none", "file": "tokenizer.json", "eot_id": resolved.eot_id}
    to_json = getattr(tokenizer, "to_json", None)  # a trained tokenizer (BPE): the library's own tokenizer.json
    if to_json is None:
        raise HepcError(f"tokenizer kind {kind!r} cannot be exported by this hepc")
    (folder / "tokenizer.json").write_text(to_json(), encoding="utf-8")
    return {"kind": kind, "file": "tokenizer.json", "eot_id": int(tokenizer.eot_id),
            "config": dict(getattr(tokenizer, "config", None) or resolved.tokenizer_config)}


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _hf_card(manifest: dict) -> list[str]:
    """The card's transformers section: load a member, then the mixture in plain transformers code."""
    folders = sorted({f.split("/")[1] for f in manifest["files"] if f.startswith("hf/")})
    weights = [round(float(w), 6) for w in manifest["weights"]]
    return [
        "",
        "## With transformers alone",
        "",
        f"`hf/` holds each member as a Qwen3 checkpoint (no custom code): {', '.join(folders)}.",
        "",
        "```python",
        "import torch",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"names = {folders!r}",
        f"weights = {weights!r}  # the prior's top-K weights, renormalised",
        "members = [AutoModelForCausalLM.from_pretrained(f'hf/{n}', local_files_only=True).eval() for n in names]",
        "tok = AutoTokenizer.from_pretrained(f'hf/{names[0]}')  # end-of-text first, as hepc encodes",
        "ids = torch.tensor([tok('def main():')['input_ids']])",
        "with torch.no_grad():  # weighted probability averaging: the mixture the prior was fit for",
        "    probs = sum(w * m(ids).logits.softmax(-1) for w, m in zip(weights, members))",
        "```",
        "",
        "`lm_eval --model hf --model_args pretrained=hf/NAME,add_bos_token=True` evaluates one member with the stock",
        "harness (end-of-text first, as hepc scores a document).",
    ]


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def card(manifest: dict) -> str:
    """The README of an exported folder: provenance, members and weights, val figures, how to use it."""
    prov, fig = manifest["provenance"], manifest.get("figures") or {}
    lines = [
        f"# {prov.get('spec_name')}: top-{manifest['k']} ensemble (hepc export)",
        "",
        (f"{manifest['k']} snapshots of a q0 population of {prov.get('population_size')}, combined by weighted "
        f"{manifest['aggregate']} averaging with the learned prior's top-{manifest['k']} weights (renormalised)."),
        "",
        "## Provenance",
        "",
        f"- spec: `{prov.get('spec')}` (sha256 `{prov.get('spec_sha256')}`)"
        + (f", overrides `{' '.join(prov['overrides'])}`" if prov.get("overrides") else ""),
        (f"- population: {prov.get('population') or '(the spec itself)'}; prior: {json.dumps(prov.get('prior'))}, "
        f"step key `{prov.get('prior_key')}`"),
        f"- corpus step key `{prov.get('corpus_key')}`",
        f"- model: {json.dumps(manifest['model'])}; tokenizer: {manifest['tokenizer']['kind']}",
        "",
        "## Members",
        "",
        "| member | cycle step key | weight | val loss (nats/token) |",
        "|---|---|---:|---:|",
    ]
    for m in manifest["members"]:
        lines.append(f"| {m['name']} | `{m['key']}` | {m['weight']:.4f} | {_fmt(m.get('val_loss'))} |")
    lines += ["", "## Validation", ""]
    if fig.get("val_loss") is not None:
        lines.append(f"This ensemble (K={manifest['k']}): val loss {_fmt(fig['val_loss'])} nats/token, "
                     f"{_fmt(fig.get('val_bpb'))} bits/byte on {fig.get('val_tokens')} val tokens.")
    if fig.get("best_single"):
        b = fig["best_single"]
        lines.append(f"Best single snapshot of the population: {b['name']}, val loss {_fmt(b['val_loss'])}.")
    if fig.get("ensembles"):
        lines += ["", "| K | val loss | val bpb |", "|---:|---:|---:|"]
        for e in fig["ensembles"]:
            lines.append(f"| {e['k']}{' (all)' if e['k_label'] == 'all' else ''} | {_fmt(e['val_loss'])} | "
                         f"{_fmt(e.get('val_bpb'))} |")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import hepc",
        "ens = hepc.load_ensemble(\"THIS_FOLDER\")   # every file checked against SHA256SUMS first",
        "print(ens.log_prob(\"def main():\\n\"))",
        "```",
        "",
        "`hepc sample THIS_FOLDER --prompt TEXT`, `hepc score THIS_FOLDER FILE...` work on this folder too.",
        *(_hf_card(manifest) if any(f.startswith("hf/") for f in manifest["files"]) else []),
        "`sha256sum -c SHA256SUMS` checks every file of it (this card and the manifest included) without hepc.",
        "",
    ]
    return "\n".join(lines)
