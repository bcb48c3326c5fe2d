"""Curve maths (epochs-to-match, matched K, data efficiency), plots and the HTML report.

Pure functions over the results of ``hepc.report.results.collect``; no torch. matplotlib and jinja2 are
imported only inside the functions that plot or render.
"""

from hepc.report.compare import (
    compare,
    compare_populations,
    data_efficiency,
    epochs_to_match,
    interpolate_loss,
    loss_gap_at_equal_budget,
    matched_k_ratio,
    reference_final,
    token_envelope,
)
from hepc.report.curves import (
    as_curve,
    best_k_curve,
    ensemble_size,
    fixed_k_curve,
    flatten_results,
    merge_points,
    running_best,
)
from hepc.report.plots import plot_curves
from hepc.report.render import render_report

__all__ = [
    "as_curve",
    "best_k_curve",
    "compare",
    "compare_populations",
    "data_efficiency",
    "ensemble_size",
    "epochs_to_match",
    "fixed_k_curve",
    "flatten_results",
    "interpolate_loss",
    "loss_gap_at_equal_budget",
    "matched_k_ratio",
    "merge_points",
    "plot_curves",
    "reference_final",
    "render_report",
    "running_best",
    "token_envelope",
]

