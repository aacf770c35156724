"""Sweep plots: behaviour and coherence against strength, one line per policy, regimes shaded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from thinklens.figures import pyplot, save_figure
from thinklens.steering.regimes import REGIMES, PointSummary

REGIME_COLOURS = dict(zip(REGIMES, ("#dddddd", "#8fd18f", "#f2c46d", "#e57373"), strict=True))
PANELS = {
    "behaviour": [("readback", "feature read back"), ("thinking_tokens", "thinking tokens"),
                  ("backtracking", "backtracking words"), ("correct", "share correct")],
    "coherence": [("perplexity", "perplexity (unsteered model)"), ("distinct2", "distinct-2"),
                  ("finished_with_answer", "share finishing with an answer"), ("hit_cap", "share hitting the cap")],
}


def plot_sweep(points: Sequence[PointSummary], directory: Path, *, feature: int, policies: Sequence[str],
               absolute: bool = False) -> list[Path]:
    """Write behaviour.{png,svg} and coherence.{png,svg} into `directory`; returns their paths."""
    plt = pyplot()
    written = []
    for figure_name, panels in PANELS.items():
        figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
        for axis, (metric, title) in zip(axes[0], panels, strict=True):
            for row, policy in enumerate(policies):
                series = sorted((p for p in points if p.policy == policy), key=lambda p: p.strength)
                axis.plot([p.strength for p in series], [p.means.get(metric) for p in series], marker="o", label=policy)
                _shade(axis, series, row)
            axis.set_title(title, fontsize=10)
            axis.set_xlabel("strength" if absolute else "strength (× typical max)")
            axis.set_xscale("symlog", linthresh=1.0)
        axes[0][0].legend(fontsize=8)
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in REGIME_COLOURS.values()]
        figure.legend(handles, REGIME_COLOURS.keys(), loc="lower center", ncol=4, fontsize=8, frameon=False)
        figure.suptitle(f"feature {feature}: {figure_name} vs strength (bands: regime per policy)", fontsize=11)
        figure.tight_layout(rect=(0, 0.07, 1, 0.95))
        png, svg = directory / f"{figure_name}.png", directory / f"{figure_name}.svg"
        written += [save_figure(figure, png, dpi=110, close=False), save_figure(figure, svg, dpi=110)]
    return written


def _shade(axis, series: list[PointSummary], row: int) -> None:
    """A thin band per policy along the bottom of the panel, coloured by each strength's regime."""
    if not series:
        return
    xs = [p.strength for p in series]
    edges = [xs[0]] + [(a + b) / 2 for a, b in zip(xs, xs[1:], strict=False)] + [xs[-1]]
    band = 0.06
    for point, left, right in zip(series, edges, edges[1:], strict=False):
        axis.axvspan(left, right, ymin=row * band, ymax=(row + 1) * band, color=REGIME_COLOURS[point.regime], lw=0)
