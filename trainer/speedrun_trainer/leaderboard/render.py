"""The leaderboard as a picture and as a page: BPB vs hardware FLOPs (PNG) and static HTML.

    speedrun leaderboard runs/ --plot board.png --html board.html

`plot_png` draws every run of the marin track as a point on a log-FLOPs axis, and the Pareto
frontier as a staircase of highlighted, labelled points (matplotlib's Agg canvas directly, no
pyplot, so no display and no global backend state). `html_page` is one self-contained file: the
tables of `speedrun_trainer.leaderboard.ranking` and the PNG embedded as base64; no scripts, no fetches.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from speedrun_trainer.leaderboard.runs import Run, Table

FRONTIER_COLOR = "#d9480f"
RUN_COLOR = "#8c96a3"
MAX_LABELLED_RUNS = 20  # beyond this, only the frontier is labelled
PAGE_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1100px; color: #1f2933; background: #ffffff; padding: 0 1rem; }
h1 { font-size: 1.8rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 0.2rem; }
p.source, p.note { color: #52606d; margin: 0.2rem 0 0.6rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; border: 1px solid #d9e2ec; }
table { border-collapse: collapse; width: 100%; font-size: 0.92rem; }
th, td { padding: 0.35rem 0.6rem; border-bottom: 1px solid #d9e2ec; text-align: left; }
th { background: #f0f4f8; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.highlight td { background: #fff4e6; font-weight: 600; }
"""


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
        ax.scatter([r.flops(axis) for r in others], [r.bpb for r in others], s=40, color=RUN_COLOR,
                   label="run", zorder=2)
    fx, fy = [r.flops(axis) for r in frontier], [r.bpb for r in frontier]
    # A staircase: a BPB reached with some FLOPs stays reachable with more.
    ax.step(fx, fy, where="post", color=FRONTIER_COLOR, linewidth=2.2, zorder=3)
    ax.scatter(fx, fy, s=80, color=FRONTIER_COLOR, edgecolors="black", linewidths=0.8,
               label="Pareto frontier", zorder=4)
    for i, r in enumerate(frontier):  # labels alternate above and below so neighbours stay legible
        ax.annotate(r.name, (r.flops(axis), r.bpb), xytext=(7, 7 if i % 2 == 0 else -13),
                    textcoords="offset points", fontsize=8, color="#1f2933")
    if len(points) <= MAX_LABELLED_RUNS:
        for r in others:
            ax.annotate(r.name, (r.flops(axis), r.bpb), xytext=(6, -11), textcoords="offset points",
                        fontsize=7, color="#52606d")
    ax.set_xscale("log")
    if max(fx + [r.flops(axis) for r in others]) < 100 * min(fx + [r.flops(axis) for r in others]):
        # Under two decades matplotlib labels every minor tick and they collide: keep 2x and 5x.
        ax.xaxis.set_minor_formatter(FuncFormatter(_two_and_five))
    ax.set_xlabel(f"training {axis} FLOPs (log scale)")
    quality = "C4-EN bits per byte" if track == "marin" else f"{track[len('bpb:'):]} bits per byte"
    ax.set_ylabel(f"{quality} (lower is better)")
    ax.set_title(f"Speedrun leaderboard: {len(points)} runs, {len(frontier)} on the Pareto frontier")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    canvas.print_png(buf)
    return buf.getvalue()


def _table_html(table: Table) -> str:
    def cells(tag: str, values: list[str]) -> str:
        return "".join(
            f'<{tag} class="num">{html.escape(v)}</{tag}>' if num else f"<{tag}>{html.escape(v)}</{tag}>"
            for v, num in zip(values, table.numeric, strict=True)
        )

    flags = table.highlight or [False] * len(table.rows)
    body = "\n".join(
        f'<tr class="highlight">{cells("td", row)}</tr>' if flag else f"<tr>{cells('td', row)}</tr>"
        for row, flag in zip(table.rows, flags, strict=True)
    )
    return (f"<section>\n<h2>{html.escape(table.title)}</h2>\n<p class=\"note\">{html.escape(table.note)}</p>\n"
            f"<table>\n<thead><tr>{cells('th', table.headers)}</tr></thead>\n<tbody>\n{body}\n</tbody>\n"
            "</table>\n</section>")


def html_page(source: str, num_runs: int, tables: list[Table], png: bytes | None) -> str:
    """One static, self-contained page: the plot (base64 PNG) and every table."""
    figure = (
        '<figure><img alt="C4-EN bits per byte vs training hardware FLOPs, Pareto frontier highlighted" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"></figure>'
        if png is not None else '<p class="note">No run has both a BPB and hardware FLOPs: nothing to plot.</p>'
    )
    sections = "\n".join(_table_html(t) for t in tables)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Speedrun leaderboard</title>
<style>{PAGE_CSS}</style>
</head>
<body>
<h1>Speedrun leaderboard</h1>
<p class="source">{num_runs} runs from <code>{html.escape(source)}</code></p>
{figure}
{sections}
</body>
</html>
"""
