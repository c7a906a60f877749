"""Draw the plot descriptions of :mod:`leaderboard.pages` as SVG text with matplotlib.

The object-oriented API only (``Figure``, no ``pyplot``): no global figure state, no GUI
backend, safe in a headless process. The SVG is deterministic: ``svg.hashsalt`` fixes the
element ids and the date is left out of the metadata, so rebuilding the site from the same
database gives the same bytes.
"""
from __future__ import annotations

import io
import math

from leaderboard.metrics import as_percent
from leaderboard.figures import LayerPlot, OverviewPlot, ParetoPlot, Plot, SeriesPlot

# Fixed colours per method name, then a cycle for the rest, so "wanda" is always the same
# colour on every page.
_COLORS = {"magnitude": "#7f7f7f", "wanda": "#1f77b4", "sparsegpt": "#d62728",
           "woodfisher": "#2ca02c", "obs_iterative": "#9467bd"}
_CYCLE = ("#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79", "#637939")
_RC = {
    "svg.hashsalt": "sparsebench",  # deterministic ids
    "svg.fonttype": "path",  # glyphs as paths: the same look without the fonts installed
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _text(s: str) -> str:
    """A user string (model, metric, series name) as literal text: "$" would start mathtext."""
    return s.replace("$", r"\$")


def method_color(method: str, methods: list[str]) -> str:
    if method in _COLORS:
        return _COLORS[method]
    others = [m for m in methods if m not in _COLORS]
    return _CYCLE[others.index(method) % len(_CYCLE)] if method in others else _CYCLE[0]


def draw(plot: Plot) -> str:
    """SVG text of one plot."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        if isinstance(plot, ParetoPlot):
            fig = _pareto(plot)
        elif isinstance(plot, OverviewPlot):
            fig = _overview(plot)
        elif isinstance(plot, LayerPlot):
            fig = _layers(plot)
        elif isinstance(plot, SeriesPlot):
            fig = _series(plot)
        else:
            raise TypeError(f"no drawing for {type(plot).__name__}")
        buf = io.StringIO()
        fig.savefig(buf, format="svg",  # constrained layout already fits the labels
                    metadata={"Date": None, "Creator": "sparsebench leaderboard"})
    return buf.getvalue()


def _log_y(ax) -> None:
    """Log y axis labelled with plain numbers (20, 50, 300) rather than 2×10¹."""
    from matplotlib.ticker import LogFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogFormatter())
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _figure(width: float, height: float, rows: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    return fig, list(axes)


def _sparsity_axis(ax, xs: list[float], targets: tuple[float, ...]) -> None:
    """A sparsity axis in plain percent (never an offset such as ``+5e1``): with one or two
    targets, or measured values within a point of each other, ticks at the targets and a window of
    ±10 points around them, so 50.000 % and 50.004 % read as the one sparsity they are."""
    from matplotlib.ticker import ScalarFormatter

    fmt = ScalarFormatter(useOffset=False)
    fmt.set_scientific(False)
    ax.xaxis.set_major_formatter(fmt)
    ticks = [100 * t for t in targets]
    span = max(xs + ticks) - min(xs + ticks) if xs or ticks else 0.0
    if ticks and (len(ticks) <= 2 or span < 5):
        lo, hi = min(xs + ticks), max(xs + ticks)
        ax.set_xlim(max(0.0, lo - 10), min(100.0, hi + 10))
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])


def _pareto(plot: ParetoPlot):
    fig, (ax,) = _figure(6.0, 3.8)
    pct = plot.metric.fmt == "percent"
    scale = (lambda v: as_percent(v)) if pct else (lambda v: v)
    methods = sorted({p.method for p in plot.points})
    ys: list[float] = []
    for method in methods:
        color = method_color(method, methods)
        line = sorted((p for p in plot.points if p.method == method and not p.nm), key=lambda p: p.x)
        nm = [p for p in plot.points if p.method == method and p.nm]
        if line:
            ax.errorbar([100 * p.x for p in line], [scale(p.y) for p in line],
                        yerr=[scale(p.std) if p.std else 0.0 for p in line], marker="o", color=color,
                        label=_text(method), linewidth=1.6, markersize=5, capsize=3)
        if nm:  # N:M at its sparsity, a distinct marker, not joined to the unstructured line
            ax.scatter([100 * p.x for p in nm], [scale(p.y) for p in nm], marker="D", s=42,
                       facecolors="white", edgecolors=color, linewidths=1.6, zorder=3,
                       label=_text(f"{method} ({', '.join(sorted({p.target for p in nm}))})"))
        ys += [scale(p.y) for p in plot.points if p.method == method]
    if plot.dense is not None:
        ax.axhline(scale(plot.dense), color="black", linestyle="--", linewidth=1, label="dense")
        ys.append(scale(plot.dense))
    finite = [y for y in ys if math.isfinite(y) and y > 0]
    # Perplexity blows up at high sparsity; a log axis keeps the good methods readable.
    if plot.metric.kind == "ppl" and finite and max(finite) / min(finite) > 5:
        _log_y(ax)
    _sparsity_axis(ax, [100 * p.x for p in plot.points], plot.targets)
    ax.set_xlabel("measured sparsity (%)")
    ax.set_ylabel(_text(f"{plot.metric.label} {plot.metric.arrow}"))
    ax.set_title(_text(plot.title), fontsize=9, loc="left")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, frameon=False)
    return fig


def _overview(plot: OverviewPlot):
    """Small multiples: recovery % versus sparsity, one panel per model, a line per variant."""
    from matplotlib.figure import Figure

    n = len(plot.panels)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(3.2 * cols + 0.6, 2.6 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False).ravel()
    methods = sorted({p.method for panel in plot.panels for p in panel.points})
    for ax, panel in zip(axes, plot.panels):
        for method in methods:
            color = method_color(method, methods)
            line = sorted((p for p in panel.points if p.method == method and not p.nm), key=lambda p: p.x)
            nm = [p for p in panel.points if p.method == method and p.nm]
            if line:
                ax.plot([100 * p.x for p in line], [p.y for p in line], marker="o", color=color,
                        label=_text(method), linewidth=1.4, markersize=4)
            if nm:
                ax.scatter([100 * p.x for p in nm], [p.y for p in nm], marker="D", s=30, facecolors="white",
                           edgecolors=color, linewidths=1.4, zorder=3)
        ax.axhline(100, color="black", linestyle="--", linewidth=0.8)
        _sparsity_axis(ax, [100 * p.x for p in panel.points], plot.targets)
        ax.set_title(_text(panel.model), fontsize=8, loc="left")
        ax.set_xlabel("sparsity (%)", fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    axes[0].set_ylabel(_text(plot.metric_label), fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for ax in axes[1:n]:
        seen.update(zip(*reversed(ax.get_legend_handles_labels())))
    if seen:
        fig.legend(list(seen.values()), list(seen.keys()), fontsize=7, frameon=False, loc="outside right upper")
    return fig


def _layers(plot: LayerPlot):
    fig, (ax_s, ax_e) = _figure(7.0, 4.6, rows=2)
    xs = list(range(len(plot.layers)))
    sparsity = [math.nan if ly.sparsity is None else 100 * ly.sparsity for ly in plot.layers]
    errors = [math.nan if ly.rel_error is None else ly.rel_error for ly in plot.layers]
    ax_s.bar(xs, sparsity, color="#1f77b4", width=0.8)
    ax_s.set_ylabel("sparsity (%)")
    ax_s.set_title(_text(f"{plot.title}: per-layer measured sparsity and reconstruction error"),
                   fontsize=9, loc="left")
    ax_e.bar(xs, errors, color="#d62728", width=0.8)
    ax_e.set_ylabel("‖(W−Ŵ)X‖² / ‖WX‖²")
    positive = [e for e in errors if math.isfinite(e) and e > 0]
    if positive and max(positive) / min(positive) > 10:  # errors span decades across layers
        _log_y(ax_e)
    # Block boundaries as ticks: layer names are too long to label every bar.
    starts: dict[int, int] = {}
    for i, ly in enumerate(plot.layers):
        if ly.block is not None:
            starts.setdefault(ly.block, i)
    if starts:
        ax_e.set_xticks(list(starts.values()), [str(b) for b in starts])
        ax_e.set_xlabel("block (bars: layers in order)")
        for ax in (ax_s, ax_e):
            for i in list(starts.values())[1:]:
                ax.axvline(i - 0.5, color="#999999", linewidth=0.5)
    else:
        ax_e.set_xlabel("layer")
    for ax in (ax_s, ax_e):
        ax.grid(True, axis="y", alpha=0.3)
    return fig


def _series(plot: SeriesPlot):
    fig, (ax,) = _figure(6.0, 3.0)
    ax.plot([s for s, _ in plot.points], [v for _, v in plot.points], marker=".",
            color="#1f77b4")
    ax.xaxis.get_major_locator().set_params(integer=True)  # steps are whole numbers
    ax.set_xlabel("step")
    ax.set_ylabel(_text(plot.title))
    ax.set_title(_text(plot.title), fontsize=9, loc="left")
    ax.grid(True, alpha=0.3)
    return fig
