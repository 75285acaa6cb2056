"""The experiments' figures (matplotlib, no display): grouped bars with 95% interval whiskers.

* :func:`grouped_bars` (Figure 1): one group per benchmark/metric column, one bar (and colour) per arm;
* :func:`metric_panels` (Figure 2): one panel per metric, one bar per setting.

Values are drawn on a 0-100 scale (accuracy and F1 in %); a missing value leaves a gap, labelled "n/a".
Each figure is titled, its axes labelled, and its legend names the arms, so it reads without the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (runs have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, note: str | None, formats: Sequence[str], top: float) -> list[Path]:
    """Add the footnote, lay out (below ``top`` for a suptitle), write each format beside ``path``, close."""
    if note:
        fig.text(0.01, 0.005, note, fontsize=7, color="#555555", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, top))
    written = []
    for fmt in formats:
        out = Path(path).with_suffix("." + fmt)
        fig.savefig(out, dpi=150, bbox_inches="tight")
        written.append(out)
    pyplot().close(fig)
    return written


def _whiskers(values: Sequence[float | None], intervals: Sequence[Sequence[float] | None]) -> list[list[float]]:
    """[lower errors, upper errors] (in %) for matplotlib's yerr; 0 where there is no interval."""
    low, high = [], []
    for value, ci in zip(values, intervals, strict=True):
        if value is None or not ci:
            low.append(0.0)
            high.append(0.0)
        else:
            low.append(max(0.0, 100 * (value - ci[0])))
            high.append(max(0.0, 100 * (ci[1] - value)))
    return [low, high]


def grouped_bars(path: Path, title: str, groups: Sequence[str], series: Sequence[dict[str, Any]],
                 ylabel: str = "score (%)", note: str | None = None, legend_title: str | None = None,
                 formats: Sequence[str] = ("png", "pdf"), levels: Sequence[dict[str, Any]] = ()) -> list[Path]:
    """Bars of ``series`` (``{"label", "values": [per group], "intervals": [[low, high] | None per group]}``,
    values in [0, 1]) grouped by ``groups``, and reference ``levels`` (``{"label", "values": [per group, or
    None], "style": "dashed" | "dotted", "colour"}``) drawn across each group that has one; writes ``path``
    with each suffix of ``formats``."""
    plt = pyplot()
    n = max(1, len(series))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(7.0, len(groups) * (0.5 + 0.25 * n) + 2.5), 4.6))
    for k, s in enumerate(series):
        xs = [g + (k - (n - 1) / 2) * width for g in range(len(groups))]
        heights = [100 * v if v is not None else 0.0 for v in s["values"]]
        ax.bar(xs, heights, width * 0.95, label=s["label"], color=COLOURS[k % len(COLOURS)],
               yerr=_whiskers(s["values"], s["intervals"]), capsize=3, error_kw={"elinewidth": 1})
        for x, v in zip(xs, s["values"], strict=True):
            if v is None:
                ax.text(x, 1, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    for level in levels:
        drawn = False
        for g, value in enumerate(level["values"]):
            if value is not None:
                ax.hlines(100 * value, g - 0.45, g + 0.45, colors=level.get("colour", "black"),
                          linestyles=level.get("style", "dashed"), linewidth=1.4,
                          label=None if drawn else level["label"])
                drawn = True
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, title=legend_title, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)
    return _save(fig, path, note, formats, top=1)


def metric_panels(path: Path, title: str, settings: Sequence[str], panels: Sequence[dict[str, Any]],
                  note: str | None = None, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """One panel per metric (``{"label", "values": [per setting], "intervals": [...]}``, values in [0, 1]),
    one bar (and colour) per setting."""
    plt = pyplot()
    n = max(1, len(panels))
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows + 0.6), squeeze=False)
    for i, panel in enumerate(panels):
        ax = axes[i // cols][i % cols]
        heights = [100 * v if v is not None else 0.0 for v in panel["values"]]
        ax.bar(range(len(settings)), heights, 0.7, color=[COLOURS[k % len(COLOURS)] for k in range(len(settings))],
               yerr=_whiskers(panel["values"], panel["intervals"]), capsize=4)
        for x, v in enumerate(panel["values"]):
            ax.text(x, (100 * v if v is not None else 0) + 2, "n/a" if v is None else f"{100 * v:.1f}",
                    ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(settings)))
        ax.set_xticklabels(settings, rotation=15, ha="right", fontsize=8)
        ax.set_ylim(0, 110)
        ax.set_ylabel(f"{panel['label']} (%)")
        ax.set_title(panel["label"], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(title, fontsize=12)
    return _save(fig, path, note, formats, top=0.95)
