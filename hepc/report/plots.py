"""PNG plots of loss-vs-budget curves (matplotlib on an Agg canvas, imported only when plotting)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from hepc.report.curves import as_curve


def plot_curves(series: Mapping[str, Sequence[Sequence[float]]], path: str | Path, title: str = "",
                logx: bool = True, *, hlines: Mapping[str, float] | None = None,
                xlabel: str = "budget (epochs, summed over members)",
                ylabel: str = "val loss (nats/token)", size: tuple[float, float] = (6.4, 4.0),
                dpi: int = 120) -> Path:
    """Write a PNG of loss vs budget: one line with markers per series, log-x by default.

    ``series``: label → ``(budget, loss)`` pairs (sorted and de-duplicated here).
    ``hlines``: label → loss, drawn as dashed horizontal lines (e.g. a baseline's final loss,
    the target that epochs-to-match is measured against).
    Returns the path written. Never opens a window: the figure is drawn on an Agg canvas.
    """
    # A bare Figure on an explicit Agg canvas: no pyplot global state, no display, and the
    # caller's own matplotlib backend (if any) is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not series:
        raise ValueError("plot_curves needs at least one series")
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    markers = "osD^vP*Xh<>"
    for i, (label, pairs) in enumerate(series.items()):
        pts = as_curve(pairs)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, marker=markers[i % len(markers)], markersize=4, linewidth=1.6, label=str(label))
    for label, loss in (hlines or {}).items():
        ax.axhline(float(loss), linestyle="--", linewidth=1.0, color="0.35", label=str(label))
    if logx:
        ax.set_xscale("log", base=2)
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))  # 0.5, 1, 2, 64
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
