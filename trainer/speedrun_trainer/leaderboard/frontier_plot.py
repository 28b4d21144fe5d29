"""The leaderboard as a picture: BPB vs hardware (or model) FLOPs (PNG). The page is page.py.

    speedrun leaderboard runs/ --plot board.png [--flops model]

`plot_png` draws every run of one BPB track as a point on a log-FLOPs axis, and the Pareto
frontier as a staircase of highlighted points (matplotlib's Agg canvas directly, no pyplot, so
no display and no global backend state). Labels never overlap: each is tried at a few offsets
around its point and kept at the first where it collides with no label, point, the legend or
the axes' edge; the frontier is labelled first, then the other runs while there is room. A
label that finds no place is left out (the page's tooltips name every run).
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from speedrun_trainer.leaderboard.runs import Run

FRONTIER_COLOR = "#d9480f"
RUN_COLOR = "#8c96a3"
# Offsets (points) tried for a label, right of its point first.
LABEL_OFFSETS = [(7, 5), (7, -13), (-7, 5), (-7, -13), (0, 10), (0, -18), (12, 14), (12, -22)]
# No "Software: Matplotlib version..." text chunk: the same runs make the same bytes under any
# matplotlib release that draws the same pixels (the README's picture is checked for drift).
PNG_METADATA: dict[str, str | None] = {"Software": None}


def _two_and_five(x: float, _pos: int) -> str:
    exponent = math.floor(math.log10(x) + 1e-9)
    mantissa = round(x / 10**exponent)
    return rf"${mantissa}\times10^{{{exponent}}}$" if mantissa in (2, 5) else ""


def plot_png(runs: list[Run], axis: str = "hardware", track: str = "marin") -> bytes | None:
    """BPB vs training hardware (or model) FLOPs, log x, with the Pareto frontier highlighted; None
    without runs. `runs` are one BPB track's (one dataset, one definition)."""
    points = [r for r in runs if r.bpb is not None and r.flops(axis)]
    if not points:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(9, 5.5), dpi=110)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    others = [r for r in points if not r.pareto]
    frontier = sorted((r for r in points if r.pareto), key=lambda r: (r.flops(axis), r.bpb))
    if others:
        ax.scatter(
            [r.flops(axis) for r in others], [r.bpb for r in others], s=40, color=RUN_COLOR, label="run", zorder=2
        )
    fx, fy = [r.flops(axis) for r in frontier], [r.bpb for r in frontier]
    # A staircase: a BPB reached with some FLOPs stays reachable with more.
    ax.step(fx, fy, where="post", color=FRONTIER_COLOR, linewidth=2.2, zorder=3)
    ax.scatter(
        fx, fy, s=80, color=FRONTIER_COLOR, edgecolors="black", linewidths=0.8, label="Pareto frontier", zorder=4
    )
    ax.set_xscale("log")
    if max(fx + [r.flops(axis) for r in others]) < 100 * min(fx + [r.flops(axis) for r in others]):
        # Under two decades matplotlib labels every minor tick and they collide: keep 2x and 5x.
        ax.xaxis.set_minor_formatter(FuncFormatter(_two_and_five))
    ax.set_xlabel(f"training {axis} FLOPs (log scale)")
    quality = "C4-EN bits per byte" if track == "marin" else f"{track[len('bpb:') :]} bits per byte"
    ax.set_ylabel(f"{quality} (lower is better)")
    ax.set_title(f"Speedrun leaderboard: {len(points)} runs, {len(frontier)} on the Pareto frontier")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    labels = [(r, 8, "#1f2933") for r in frontier] + [(r, 7, "#52606d") for r in others]
    place_labels(
        ax, canvas, [(r.name, float(r.flops(axis) or 0), float(r.bpb or 0), size, color) for r, size, color in labels]
    )
    buf = io.BytesIO()
    canvas.print_png(buf, metadata=PNG_METADATA)
    return buf.getvalue()


def place_labels(ax: Any, canvas: Any, labels: list[tuple[str, float, float, int, str]]) -> None:
    """Annotate each (text, x, y) at the first offset where it overlaps nothing already drawn."""
    canvas.draw()
    renderer = canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = [ax.transData.transform((x, y)) for _, x, y, _, _ in labels]
    legend = ax.get_legend()
    boxes: list[Any] = [legend.get_window_extent(renderer)] if legend is not None else []
    for name, x, y, size, color in labels:
        for dx, dy in LABEL_OFFSETS:
            text = ax.annotate(
                name,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize=size,
                color=color,
                ha="left" if dx >= 0 else "right",
            )
            box = text.get_window_extent(renderer).expanded(1.05, 1.15)
            inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
            hits_point = any(box.contains(px, py) for px, py in taken)
            if inside and not hits_point and not any(box.overlaps(other) for other in boxes):
                boxes.append(box)
                break
            text.remove()
