"""Tests for the HTML report and the curves plot (hepc.report.render, hepc.report.plots)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys

import pytest

from hepc.errors import HepcError
from hepc.report.compare import compare_populations
from hepc.report.curves import best_k_curve, fixed_k_curve
from hepc.report.plots import plot_curves
from hepc.report.render import render_report, weight_grid

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pt(budget, members, k, loss, label=None):
    return {"budget_epochs": float(budget), "members": members, "k": k,
            "k_label": k if label is None else label, "val_loss": loss, "val_bpb": loss / 2}


def _member(t, c, cost, w, loss):
    return {"trajectory": t, "cycle": c, "cost_epochs": cost, "weight": w,
            "heldout_loss": loss + 0.01, "val_loss": loss, "val_bpb": loss / 2}


def _results(name, curve, members):
    best = min(members, key=lambda m: m["val_loss"])
    ensembles = [{"k": 1, "k_label": 1, "val_loss": best["val_loss"], "val_bpb": None},
                 {"k": len(members), "k_label": "all", "val_loss": min(p["val_loss"] for p in curve),
                  "val_bpb": None}]
    return {
        "spec": name, "budget_epochs": max(p["budget_epochs"] for p in curve),
        "prior": {"kind": "learned"}, "fit": {"nll": 2.5, "uniform_nll": 2.6, "steps": 300},
        "members": members, "ensembles": ensembles, "curve": curve,
        "best_single": {k: best[k] for k in ("trajectory", "cycle", "val_loss", "val_bpb")},
        "best_ensemble": {k: ensembles[-1][k] for k in ("k", "k_label", "val_loss", "val_bpb")},
        "corpus": {},
    }


@pytest.fixture
def context():
    ref_curve = [_pt(4, 1, 1, 3.0), _pt(8, 2, 1, 3.0), _pt(8, 2, 2, 2.8, "all"),
                 _pt(12, 3, 1, 3.0), _pt(12, 3, 3, 2.7, "all")]
    q0_curve = [_pt(1, 1, 1, 3.4), _pt(2, 2, 1, 3.1), _pt(2, 2, 2, 2.9, "all"),
                _pt(3, 3, 1, 3.0), _pt(3, 3, 3, 2.75, "all"), _pt(4, 4, 1, 2.95), _pt(4, 4, 3, 2.65),
                _pt(4, 4, 4, 2.6, "all")]
    ref = _results("ensemble", ref_curve, [_member(t, 1, 4 * t, 1 / 3, 3.0 + 0.01 * t) for t in (1, 2, 3)])
    q0 = _results("<script>alert('q0')</script>", q0_curve,
                  [_member(t, c, 2 * (c - 1) + t, w, 3.2 - 0.1 * c)
                   for (t, c, w) in [(1, 1, 0.1), (2, 1, 0.2), (1, 2, 0.3), (2, 2, 0.4)]])
    comparison = compare_populations(ref, q0)
    return {
        "title": "reproduction <b>smoke</b>",
        "notes": ["a note"],
        "specs": [{"name": "ensemble", "text": "name: ensemble\npopulation: {trajectories: 3}\n"},
                  {"name": "<script>alert(1)</script>", "text": "name: q0 # <tag>\n"}],
        "comparisons": [comparison],
        "curves": {"ensemble": best_k_curve(ref_curve), "q0 (best K)": best_k_curve(q0_curve),
                   "q0 (K=3)": fixed_k_curve(q0_curve, 3)},
        "hlines": {"ensemble final": 2.7},
        "populations": [ref, q0],
        "data_efficiency": {"loss": 3.0, "base_tokens": 1e8, "tokens": 1.2e9, "multiplier": 12.0,
                            "multiplier_upper_bound": None, "multiplier_lower_bound": None,
                            "status": "interpolated", "note": None},
        "summary": {"wall_s": 12.5},
    }


def test_report_renders_table_plot_and_summary(tmp_path, context):
    path = render_report(context, tmp_path / "out")
    assert path == tmp_path / "out" / "report.html"
    html = path.read_text()
    # the comparison table, with the epochs-to-match and matched-K ratios
    assert 'id="comparison"' in html
    c = context["comparisons"][0]
    assert f"{c['epochs_to_match']['ratio']:.2f}×" in html
    assert f"{c['matched_k_ratio']:.2f}×" in html
    # an embedded PNG (self-contained: no external src)
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1])[:8] == PNG_MAGIC
    assert (tmp_path / "out" / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert "<link" not in html and "<script src" not in html
    # member losses and the learned-weight heat-table
    assert 'class="members"' in html and 'class="weights"' in html and "0.400" in html
    assert "12.00×" in html  # data efficiency
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["comparisons"][0]["epochs_to_match"]["ratio"] == pytest.approx(c["epochs_to_match"]["ratio"])
    assert summary["comparisons"][0]["matched_k_ratio"] == pytest.approx(c["matched_k_ratio"])
    assert [p["spec"] for p in summary["populations"]] == ["ensemble", "<script>alert('q0')</script>"]
    assert summary["extra"] == {"wall_s": 12.5}
    assert "q0 (K=3)" in summary["curves"]


def test_report_autoescapes_context_strings(tmp_path, context):
    html = render_report(context, tmp_path).read_text()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;script&gt;alert(&#39;q0&#39;)&lt;/script&gt;" in html
    assert "reproduction &lt;b&gt;smoke&lt;/b&gt;" in html
    assert "# &lt;tag&gt;" in html


def test_report_not_reached_is_words_not_a_number(tmp_path, context):
    ref = context["populations"][0]
    hopeless = dict(ref, spec="hopeless", curve=[_pt(1, 1, 1, 5.0), _pt(2, 2, 2, 4.9, "all")])
    context["comparisons"] = [compare_populations(ref, hopeless)]
    html = render_report(context, tmp_path).read_text()
    row = html[html.index('id="comparison"'):html.index("</table>", html.index('id="comparison"'))]
    assert "not reached" in row and "×" not in row


def test_report_with_external_plot_and_minimal_context(tmp_path):
    png = plot_curves({"a": [(1, 3.0), (2, 2.5)]}, tmp_path / "a.png", "a")
    path = render_report({"plots": [{"title": "extra", "path": "a.png"}]}, tmp_path)
    html = path.read_text()
    assert "No comparison" in html and html.count("data:image/png;base64,") == 1
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_missing_template_folder_is_a_clear_error(tmp_path):
    with pytest.raises(HepcError, match="template not found"):
        render_report({}, tmp_path / "out", templates_dir=tmp_path / "nowhere")


def test_plot_curves_writes_png(tmp_path):
    out = plot_curves({"ensemble": [(4, 3.0), (8, 2.8), (16, 2.6)], "q0": [(1, 3.4), (4, 2.7), (8, 2.3)]},
                      tmp_path / "sub" / "c.png", "loss vs budget", hlines={"ensemble final": 2.6})
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    with pytest.raises(ValueError):
        plot_curves({}, tmp_path / "empty.png", "")


def test_weight_grid_fills_missing_cells():
    g = weight_grid([{"trajectory": 1, "cycle": 1, "weight": 0.5}, {"trajectory": 2, "cycle": 2, "weight": 0.25}])
    assert g["cycles"] == [1, 2]
    assert [[c["text"] for c in r["cells"]] for r in g["rows"]] == [["0.500", ""], ["", "0.250"]]
    assert [[c["shade"] for c in r["cells"]] for r in g["rows"]] == [[1.0, 0.0], [0.0, 0.5]]


def test_report_package_imports_no_torch_matplotlib_or_jinja2():
    code = ("import sys, hepc.report; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'jinja2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_report_lists_each_population_of_a_sweep(tmp_path, context):
    ref = context["populations"][0]
    sweep = {"spec": "single", "populations": [dict(ref, spec="single", label="epochs=4"),
                                               dict(ref, spec="single", label="epochs=8", aggregate="logit")]}
    context["populations"] = [sweep]
    context["comparisons"] = [compare_populations(sweep, ref)]
    html = render_report(context, tmp_path).read_text()
    assert "Population: single [epochs=4]" in html and "Population: single [epochs=8]" in html
    assert "weighted logit averaging" in html and "weighted probability averaging" in html
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [p["label"] for p in summary["populations"]] == ["epochs=4", "epochs=8"]
