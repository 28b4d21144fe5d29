"""The leaderboard as one self-contained, interactive HTML page.

    speedrun leaderboard runs/ --html board.html

One file, nothing fetched (a Content-Security-Policy forbids any request): the runs as embedded
JSON, page.css and page.js inlined. The chart is SVG drawn by page.js: BPB against training
hardware FLOPs or model FLOPs (a toggle; Marin's site shows both), log x, the Pareto frontier as a
staircase, a tooltip per run (name, author, BPB, both FLOPs, links to its W&B run and results
file), box zoom (drag; double-click resets). Below it every table of
`speedrun_trainer.leaderboard.ranking`, sortable by a click on a header and filterable by text,
with a links column (W&B run, results file) on rows that name a run.

The frontier on each axis follows Marin's site (marin-community/speedrun,
website/src/hooks/useSpeedrunData.ts): runs sorted by x, a run joins when its BPB is below every
cheaper run's; ties keep the first.
"""

from __future__ import annotations

import html
import json
from importlib.resources import files
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from speedrun_trainer.leaderboard.runs import Run, Table

AXES = {"hardware": "training hardware FLOPs", "model": "model FLOPs"}
CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
BROWSABLE = ("https://", "http://", "file://")  # s3:// and gs:// results are shown, not linked


def frontier(runs: list[Run], x: str) -> set[str]:
    """Names of the runs on the Pareto frontier of (x, BPB), Marin's rule (module docstring)."""
    points = sorted(((flops, r.bpb, r.name) for r in runs if (flops := _x(r, x)) and r.bpb is not None),
                    key=lambda p: p[0])  # a stable sort: ties keep their order
    best, out = float("inf"), set()
    for _, bpb, name in points:
        if bpb < best:
            best = bpb
            out.add(name)
    return out


def _x(run: Run, axis: str) -> float | None:
    return run.flops(axis)


def wandb_link(run: Run) -> str | None:
    link = run.info.get("wandb_run_link") or run.info.get("wandb_link")  # ours, Marin's site data
    return str(link) if isinstance(link, str) and link.startswith(("https://", "http://")) else None


def quality_label(track: str | None) -> str:
    """What the y-axis measures: Marin's C4-EN BPB, or the BPB track's dataset and definition."""
    return "C4-EN bits per byte" if track in (None, "marin") else f"{track.removeprefix('bpb:')} bits per byte"


def chart_data(runs: list[Run], axis: str = "hardware", track: str | None = "marin") -> dict[str, Any]:
    on = {axis: frontier(runs, axis) for axis in AXES}
    return {
        "axes": AXES,
        "axis": axis,
        "quality": quality_label(track),
        "runs": [
            {
                "name": r.name, "author": r.author, "bpb": r.bpb,
                "hardwareFlops": r.hardware_flops, "modelFlops": _x(r, "model"),
                "hardwareFrontier": r.name in on["hardware"], "modelFrontier": r.name in on["model"],
                "wandb": wandb_link(r), "results": r.source if r.source.startswith(BROWSABLE) else None,
            }
            for r in runs
            if r.bpb is not None
        ],
    }


def _links_html(run: Run | None) -> str:
    if run is None:
        return ""
    parts = []
    if link := wandb_link(run):
        parts.append(f'<a href="{html.escape(link)}" target="_blank" rel="noopener">W&amp;B</a>')
    if run.source.startswith(BROWSABLE):
        parts.append(f'<a href="{html.escape(run.source)}" target="_blank" rel="noopener">results</a>')
    else:
        parts.append(f'<code title="results file">{html.escape(run.source)}</code>')
    return " · ".join(parts)


def table_html(table: Table, index: int, by_name: dict[str, Run]) -> str:
    """One sortable, filterable table; a `links` column when a column names the run."""
    run_col = table.headers.index("run") if "run" in table.headers else None
    head = "".join(f'<th class="num">{html.escape(h)}</th>' if num else f"<th>{html.escape(h)}</th>"
                   for h, num in zip(table.headers, table.numeric, strict=True))
    if run_col is not None:
        head += "<th>links</th>"
    flags = table.highlight or [False] * len(table.rows)
    rows = []
    for row, flag in zip(table.rows, flags, strict=True):
        cells = "".join(f'<td class="num">{html.escape(v)}</td>' if num else f"<td>{html.escape(v)}</td>"
                        for v, num in zip(row, table.numeric, strict=True))
        if run_col is not None:
            cells += f"<td>{_links_html(by_name.get(row[run_col]))}</td>"
        rows.append(f'<tr class="highlight">{cells}</tr>' if flag else f"<tr>{cells}</tr>")
    tid = f"table-{index}"
    return (f'<section>\n<h2>{html.escape(table.title)}</h2>\n<p class="note">{html.escape(table.note)}</p>\n'
            f'<input class="filter" id="{tid}-filter" type="search" placeholder="filter rows" '
            f'aria-label="filter {html.escape(table.title)}">\n'
            f'<table class="board" id="{tid}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(rows)
            + "\n</tbody>\n</table>\n</section>")


def html_page(
    source: str, runs: list[Run], tables: list[Table], chart_runs: list[Run] | None = None,
    axis: str = "hardware", track: str | None = "marin",
) -> str:
    """The page: `chart_runs` (one BPB track's; default every run with a BPB) on the chart, starting
    on `axis`, and `tables` below it."""
    plotted = [r for r in (runs if chart_runs is None else chart_runs) if r.bpb is not None]
    data = json.dumps(chart_data(plotted, axis, track)).replace("</", "<\\/")  # no `</script>` in the JSON
    asset = files("speedrun_trainer.leaderboard")
    css, js = asset.joinpath("page.css").read_text(), asset.joinpath("page.js").read_text()
    by_name = {r.name: r for r in runs}
    checked = {name: " checked" if name == axis else "" for name in AXES}
    sections = "\n".join(table_html(t, i, by_name) for i, t in enumerate(tables))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Speedrun leaderboard</title>
<style>{css}</style>
</head>
<body>
<h1>Speedrun leaderboard</h1>
<p class="source">{len(runs)} runs from <code>{html.escape(source)}</code></p>
<section>
<h2>{html.escape(quality_label(track))} against FLOPs</h2>
<div class="controls">
<span>x-axis:
<label><input type="radio" name="x-axis" value="hardware"{checked["hardware"]}> hardware FLOPs</label>
<label><input type="radio" name="x-axis" value="model"{checked["model"]}> model FLOPs</label></span>
<span><span id="frontier-count">0</span> runs on the Pareto frontier</span>
<button type="button" id="reset-zoom">reset zoom</button>
</div>
<div id="chart-box">
<svg id="chart" viewBox="0 0 960 520" role="img" aria-label="BPB against FLOPs, Pareto frontier highlighted"></svg>
<div id="tooltip" role="tooltip" hidden></div>
</div>
</section>
{sections}
<script type="application/json" id="leaderboard-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""
