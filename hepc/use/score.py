"""`hepc score`: nats/token and bits per byte of text files under the ensemble and its best member.

Each file is read with the corpus's document rule (hepc.use.text.file_tokens) and scored as val is
(``Ensemble.score``: windows of seq_len, every token after the first a target). The best single
member is the chosen member with the lowest loss on the files themselves (all files together).
"""

from __future__ import annotations

import math
from pathlib import Path

from hepc.errors import HepcError
from hepc.store.safe_io import not_a_file
from hepc.use.text import file_tokens


def score_files(ensemble, paths: list[str]) -> dict:
    """{"files": [{"file", "tokens", "bytes", "ensemble": {...}, "members": [...]}], "total": {...}}."""
    if not paths:
        raise HepcError("no FILE to score")
    rows, streams = [], []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise HepcError(f"{p}: {not_a_file(path)}")
        tokens, n_bytes = file_tokens(ensemble.tokenizer, path, ensemble.resolved.source, ensemble.resolved.max_doc_tokens)
        streams.append((path, tokens, n_bytes))
    for path, tokens, _ in streams:
        s = ensemble.score(tokens)  # bytes counted by the tokenizer, as the corpus counts val's
        rows.append({"file": str(path), **s})
    total = _total(rows)
    return {"k": ensemble.k, "aggregate": ensemble.aggregate, "provenance": ensemble.provenance, "files": rows,
            "total": total}


def _total(rows: list[dict]) -> dict:
    """Token-weighted totals over files: ensemble and each member, and the best member."""
    n = sum(r["tokens"] for r in rows)
    n_bytes = sum(r["bytes"] or 0 for r in rows)
    ids = sum(r["tokens"] + 1 for r in rows)  # bits per byte: the corpus rule, bytes per id

    def bpb(nll):
        return nll / math.log(2) / (n_bytes / ids) if n_bytes else None

    ens = sum(r["nats"] for r in rows) / n
    members = []
    for j, m in enumerate(rows[0]["members"]):
        nll = sum(r["members"][j]["nats_per_token"] * r["tokens"] for r in rows) / n
        members.append({"key": m["key"], "name": m["name"], "weight": m["weight"], "nats_per_token": nll,
                        "bits_per_byte": bpb(nll)})
    best = min(members, key=lambda m: m["nats_per_token"])
    return {"tokens": n, "bytes": n_bytes, "nats_per_token": ens, "bits_per_byte": bpb(ens), "members": members,
            "best_member": best}


def render(result: dict) -> str:
    lines = []
    head = f"{'file':<40} {'tokens':>8} {'ensemble nats/tok':>18} {'bits/byte':>10} {'best member':>14} {'nats/tok':>9}"
    prov = result["provenance"]
    origin = prov.get("spec_name") or f"prior {str(prov.get('prior_key'))[:12]} of store {prov.get('store')}"
    lines.append(f"K={result['k']} ({result['aggregate']} averaging) of {origin}")
    lines.append(head)

    def fmt(x):
        return "n/a" if x is None else f"{x:.4f}"

    for r in result["files"]:
        best = min(r["members"], key=lambda m: m["nats_per_token"])
        name = r["file"] if len(r["file"]) <= 40 else "…" + r["file"][-39:]
        lines.append(f"{name:<40} {r['tokens']:>8} {r['nats_per_token']:>18.4f} {fmt(r['bits_per_byte']):>10} "
                     f"{best['name']:>14} {best['nats_per_token']:>9.4f}")
    t = result["total"]
    b = t["best_member"]
    lines.append(f"total: {t['tokens']} tokens, ensemble {t['nats_per_token']:.4f} nats/token, {fmt(t['bits_per_byte'])} "
                 f"bits/byte; best single member {b['name']} {b['nats_per_token']:.4f} nats/token, "
                 f"{fmt(b['bits_per_byte'])} bits/byte ({t['nats_per_token'] - b['nats_per_token']:+.4f} nats)")
    return "\n".join(lines)
