"""Render the self-contained HTML report (jinja2, sandboxed, autoescaped) and its summary.json.

The template lives in the repository's ``templates/report/report.html.j2`` (with the budget-recipe
templates under ``templates/``; see the repository tree in README.md). It is located relative to this
package, so hepc must run from a source checkout or an editable install; a missing folder is a
clear ``HepcError``, and ``templates_dir=`` overrides the location.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from hepc.report.curves import flatten_results
from hepc.templating import TEMPLATES, sandboxed_env
from hepc.wording import SIGN_NOTE, count

TEMPLATE = "report.html.j2"


def default_templates_dir() -> Path:
    """``<repo>/templates/report``."""
    return TEMPLATES / "report"


def _environment(folder: Path):
    env = sandboxed_env(folder, autoescape=True, required=TEMPLATE, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fmt_num
    env.filters["tokens"] = fmt_tokens
    env.filters["count"] = lambda n, noun: "n/a" if n is None else count(n, noun)
    return env


def fmt_num(x, digits: int = 4) -> str:
    """A number for a table cell: fixed digits, "n/a" for None/NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return f"{float(x):.{digits}f}"


def fmt_tokens(x) -> str:
    """A token count for a table cell: 100M, 1.28B, 512K; "n/a" for None."""
    if x is None:
        return "n/a"
    x = float(x)
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.4g}{suffix}"
    return f"{x:.4g}"


def _budget(b) -> str:
    return "n/a" if b is None else f"{float(b):.3g}" if float(b) < 100 else f"{float(b):.0f}"


def _match_cells(m: Mapping) -> tuple[str, str]:
    """(candidate budget, ratio) cells of an epochs-to-match result."""
    if m.get("error"):
        return "n/a", "n/a (" + m["error"] + ")"
    if not m.get("reached"):
        match = m.get("match") or {}
        if "closest_loss" in match:
            return (f"not reached (best {match['closest_loss']:.4f}, {match['gap']:+.4f})", "not reached")
        return "not reached", "not reached"
    if m.get("at_first_point"):
        return f"≤ {_budget(m['candidate_budget'])}", f"≥ {m['ratio']:.2f}×"
    return _budget(m["candidate_budget"]), f"{m['ratio']:.2f}×"


def _ratio(x) -> str:
    return "n/a" if x is None else f"{x:.2f}×"


def comparison_rows(comparisons: Sequence[Mapping]) -> list[dict]:
    """Display cells (strings) of the comparison table, one row per ``compare_populations`` dict."""
    rows = []
    for c in comparisons:
        e, k = c["epochs_to_match"], c["matched_k"]
        gap = c["loss_gap_at_equal_budget"]["at_largest_common_budget"]
        cand_budget, ratio = _match_cells(e)
        k_budget, k_ratio = _match_cells(k)
        rows.append({
            "reference": str(c.get("reference")),
            "candidate": str(c.get("candidate")),
            "reference_loss": fmt_num(e["reference_loss"]),
            "reference_budget": _budget(e["reference_budget"]),
            "candidate_budget": cand_budget,
            "ratio": ratio,
            "k": str(k.get("k")),
            "k_budget": k_budget,
            "k_ratio": k_ratio,
            "gap": "n/a" if gap is None else f"{gap['gap']:+.4f} @ {_budget(gap['budget'])}",
            "teacher_ratio": _ratio((c.get("with_teacher_forwards") or {}).get("ratio")),
            "paired": _paired_cell(c.get("paired")),
            "diagnostic_ratio": _ratio((c.get("diagnostic") or {}).get("ratio")),
        })
    return rows


def _paired_cell(p: Mapping | None) -> str:
    """'-0.0123 [-0.0200, -0.0046], 5 seeds' (candidate − reference at the largest common budget)."""
    if not p or not p.get("n_seeds"):
        return "no shared seeds"
    if p.get("final_gap_ci95") is None:
        return f"{p['final_gap_mean']:+.4f}, {count(p['n_seeds'], 'seed')} (no interval)"
    lo, hi = p["final_gap_ci95"]
    return f"{p['final_gap_mean']:+.4f} [{lo:+.4f}, {hi:+.4f}], {count(p['n_seeds'], 'seed')}"


def weight_grid(members: Sequence[Mapping]) -> dict:
    """Learned weights as a trajectory × cycle grid for the heat-table.

    Returns ``{"cycles": [c, ...], "rows": [{"trajectory": t, "cells": [{"weight": float | None,
    "text": str, "shade": 0..1}]}]}``; ``shade`` is weight / max weight (0 for a missing cell).
    """
    cycles = sorted({int(m["cycle"]) for m in members})
    trajs = sorted({int(m["trajectory"]) for m in members})
    w = {(int(m["trajectory"]), int(m["cycle"])): float(m["weight"]) for m in members}
    top = max(w.values(), default=0.0) or 1.0
    rows = []
    for t in trajs:
        cells = []
        for c in cycles:
            x = w.get((t, c))
            cells.append({"weight": x, "text": "" if x is None else f"{x:.3f}",
                          "shade": 0.0 if x is None else round(x / top, 3)})
        rows.append({"trajectory": t, "cells": cells})
    return {"cycles": cycles, "rows": rows}


def _population_view(r: Mapping) -> dict:
    members = sorted(r.get("members", []), key=lambda m: (m["trajectory"], m["cycle"]))
    name = str(r.get("spec")) + (f" [{r['label']}]" if r.get("label") else "")
    return {
        "name": name,
        "aggregate": r.get("aggregate", "probability"),
        "budget_epochs": r.get("budget_epochs"),
        "prior_kind": (r.get("prior") or {}).get("kind", "n/a"),
        "fit": r.get("fit"),
        "best_single": r.get("best_single"),
        "best_ensemble": r.get("best_ensemble"),
        "members": members,
        "ensembles": list(r.get("ensembles", [])),
        "weights": weight_grid(members) if members else None,
    }


def _png_data_uri(plot: Mapping, out_dir: Path) -> str:
    if "png" in plot:
        data = plot["png"]
    else:
        p = Path(plot["path"])
        data = (p if p.is_absolute() else out_dir / p).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"plot {plot.get('title', '')!r} is not a PNG")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _all_populations(context: Mapping) -> list[Mapping]:
    return [pop for r in context.get("populations", []) for pop in flatten_results(r)]


def _summary(context: Mapping, comparisons: Sequence[Mapping]) -> dict:
    pops = []
    for r in _all_populations(context):
        pops.append({
            "spec": r.get("spec"),
            "label": r.get("label"),
            "values": r.get("values"),
            "aggregate": r.get("aggregate", "probability"),
            "budget_epochs": r.get("budget_epochs"),
            "best_single": r.get("best_single"),
            "best_ensemble": r.get("best_ensemble"),
            "ensembles": [{k: e.get(k) for k in ("k", "k_label", "val_loss", "val_bpb")}
                          for e in r.get("ensembles", [])],
            "members": list(r.get("members", [])),
            "curve": list(r.get("curve", [])),
        })
    return {
        "title": context.get("title", "hepc report"),
        "split": context.get("split", "val"),
        "comparisons": list(comparisons),
        "populations": pops,
        "curves": {str(k): [list(p) for p in v] for k, v in (context.get("curves") or {}).items()},
        "data_efficiency": context.get("data_efficiency"),
        "extra": context.get("summary"),
    }


REPORT_FILES = ("report.html", "summary.json", "curves.png")  # what a report writes into its folder


def render_report(
    context: Mapping, out_dir: str | Path, *, templates_dir: str | Path | None = None, replace: bool = False
) -> Path:
    """Write ``out_dir/report.html`` (self-contained) and ``out_dir/summary.json``; return the HTML path.

    An existing ``report.html``, ``summary.json`` or ``curves.png`` in ``out_dir`` is refused (HepcError,
    nothing written) unless ``replace``; then exactly those names are replaced, nothing else in the
    folder is touched. The files are written into a staging folder inside ``out_dir`` and renamed into
    place, so a reader never sees half a report and a symbolic link at a target name is replaced by
    the file, never written through.

    ``context`` keys (all optional except where noted):

    - ``title``: page title (default "hepc report"); ``notes``: list of paragraphs shown on top.
    - ``specs``: ``[{"name": str, "text": str}]``, the resolved specs (YAML/JSON text, shown verbatim).
    - ``comparisons``: ``[hepc.report.compare.compare_populations(...) dicts]`` → the comparison table.
    - ``curves``: ``{label: [(budget, loss), ...]}``; when given, ``out_dir/curves.png`` is drawn with
      ``plot_curves`` (plus ``hlines``: ``{label: loss}`` dashed lines, ``curves_title``) and embedded.
    - ``plots``: more figures, ``[{"title": str, "path": PNG path (relative to out_dir or absolute)}
      or {"title": str, "png": bytes}]``, embedded as base64 data URIs.
    - ``populations``: ``[hepc.report.results.collect(...) outputs]`` (a sweep's populations are listed one by
      one) → member losses, top-K ensembles and the learned weights per trajectory × cycle.
    - ``data_efficiency``: a ``data_efficiency(...)`` dict (or a list of them).
    - ``summary``: anything JSON-serialisable, copied into summary.json under ``extra``.

    Every string from the context is HTML-escaped (autoescape, sandboxed template environment).
    ``summary.json`` holds the numbers: comparisons (raw dicts), per-population best single, best
    ensemble, ensembles, members and curve points, the curve series and data efficiency.
    """
    from hepc.errors import HepcError

    out_dir = Path(out_dir).absolute()
    for name in REPORT_FILES:
        target = out_dir / name
        if target.is_dir() and not target.is_symlink():
            raise HepcError(f"{target} is a folder: hepc report writes a file by that name; choose another --out")
        if os.path.lexists(target) and not replace:
            raise HepcError(f"{target} exists: hepc report replaces nothing unless told to (--force replaces "
                            f"{', '.join(REPORT_FILES)} there and nothing else)")
    env = _environment(Path(templates_dir) if templates_dir is not None else default_templates_dir())
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".hepc-report-", dir=out_dir))
    try:
        _render_into(context, env, out_dir, stage)
        for name in REPORT_FILES:
            if (stage / name).exists():
                os.replace(stage / name, out_dir / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out_dir / "report.html"


def _render_into(context: Mapping, env, out_dir: Path, stage: Path) -> None:
    """The report's files, written into `stage` (relative plot paths are read from `out_dir`)."""
    plots = []
    if context.get("curves"):
        from hepc.report.plots import plot_curves

        path = plot_curves(context["curves"], stage / "curves.png", context.get("curves_title", "loss vs budget"),
                           hlines=context.get("hlines"))
        plots.append({"title": context.get("curves_title", "loss vs budget"), "path": path})
    plots.extend(context.get("plots", []))
    comparisons = list(context.get("comparisons", []))
    eff = context.get("data_efficiency")
    view = {
        "title": str(context.get("title", "hepc report")),
        "notes": [str(n) for n in context.get("notes", [])],
        "specs": [{"name": str(s["name"]), "text": str(s["text"])} for s in context.get("specs", [])],
        "comparison_rows": comparison_rows(comparisons),
        "plots": [{"title": str(p.get("title", "")), "src": _png_data_uri(p, out_dir)} for p in plots],
        "populations": [_population_view(r) for r in _all_populations(context)],
        "data_efficiency": [] if eff is None else list(eff) if isinstance(eff, (list, tuple)) else [eff],
        "sign_note": SIGN_NOTE,
        "split": str(context.get("split", "val")),
    }
    html = env.get_template(TEMPLATE).render(**view)
    (stage / "report.html").write_text(html, encoding="utf-8")
    (stage / "summary.json").write_text(
        json.dumps(_summary(context, comparisons), indent=1, default=str) + "\n", encoding="utf-8")
