"""The leaderboard as one self-contained, interactive HTML page: views "All runs" and "Scaling".

    speedrun leaderboard runs/ --html board.html [--view scaling] [--x model] [--fit marin]

One file, nothing fetched (a Content-Security-Policy forbids any request): the runs as embedded
JSON, page.css, page.js and page_scaling.js inlined. All runs: an SVG chart drawn by page.js, BPB
(or, a toggle, BPB relative to the baseline group's law) against training hardware FLOPs or model
FLOPs (a toggle; Marin's site shows both), log x, the Pareto frontier as a staircase, a tooltip per
run (name, author, BPB, both FLOPs, links to its W&B run and results file), box zoom (drag;
double-click resets). Below it every table of `speedrun_trainer.leaderboard.ranking`, sortable by
a click on a header and filterable by text, with a links column (W&B run, results file) on rows
that name a run. Scaling: the frame written here, filled by page_scaling.js from page_data.py's
data (each group's law, band and forecast; the ranking at any forecast FLOPs).

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
    points = sorted(
        ((flops, r.bpb, r.name) for r in runs if (flops := _x(r, x)) and r.bpb is not None), key=lambda p: p[0]
    )  # a stable sort: ties keep their order
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


def chart_data(
    runs: list[Run],
    axis: str = "hardware",
    track: str | None = "marin",
    relative: tuple[dict[str, list[float | None]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The All-runs chart's data; `relative` (page_data.relative_data of the same `runs`) adds each
    run's BPB relative to the baseline's law on either axis."""
    on = {axis: frontier(runs, axis) for axis in AXES}
    percents, baseline = relative or ({a: [None] * len(runs) for a in AXES}, None)
    return {
        "axes": AXES,
        "axis": axis,
        "quality": quality_label(track),
        "baseline": baseline,
        "runs": [
            {
                "name": r.name,
                "author": r.author,
                "bpb": r.bpb,
                "hardwareFlops": r.hardware_flops,
                "modelFlops": _x(r, "model"),
                "hardwareFrontier": r.name in on["hardware"],
                "modelFrontier": r.name in on["model"],
                "hardwareRelative": percents["hardware"][i],
                "modelRelative": percents["model"][i],
                "wandb": wandb_link(r),
                "results": r.source if r.source.startswith(BROWSABLE) else None,
            }
            for i, r in enumerate(runs)
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
    head = "".join(
        f'<th class="num">{html.escape(h)}</th>' if num else f"<th>{html.escape(h)}</th>"
        for h, num in zip(table.headers, table.numeric, strict=True)
    )
    if run_col is not None:
        head += "<th>links</th>"
    flags = table.highlight or [False] * len(table.rows)
    rows = []
    for row, flag in zip(table.rows, flags, strict=True):
        cells = "".join(
            f'<td class="num">{html.escape(v)}</td>' if num else f"<td>{html.escape(v)}</td>"
            for v, num in zip(row, table.numeric, strict=True)
        )
        if run_col is not None:
            cells += f"<td>{_links_html(by_name.get(row[run_col]))}</td>"
        rows.append(f'<tr class="highlight">{cells}</tr>' if flag else f"<tr>{cells}</tr>")
    tid = f"table-{index}"
    return (
        f'<section>\n<h2>{html.escape(table.title)}</h2>\n<p class="note">{html.escape(table.note)}</p>\n'
        f'<input class="filter" id="{tid}-filter" type="search" placeholder="filter rows" '
        f'aria-label="filter {html.escape(table.title)}">\n'
        f'<table class="board" id="{tid}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody>\n</table>\n</section>"
    )


def _scaling_section(scaling: dict[str, Any] | None) -> str:
    """The Scaling view's frame (page_scaling.js fills it from the embedded data)."""
    if scaling is None or not scaling["groups"]:
        why = "no scaling data" if scaling is None else scaling["reason"]
        return f'<p class="note" id="scaling-empty">{html.escape(str(why))}</p>'
    x_star = f"{scaling['xStar']:.0e}".replace("e+", "e")
    how = (
        f"{scaling['confidence']:.0%} interval: {scaling['method']}"
        if scaling["fit"] == "converged"
        else "Marin's site fit (its Levenberg-Marquardt recipe): no interval"
    )
    return f"""<p class="note">L = a · x<sup>−b</sup> + c per group (runs named group/size), x = {
        html.escape(scaling["axisLabel"])
    }; fit: {html.escape(scaling["fit"])}; {html.escape(how)}. Intervals between the
computed FLOPs (half decades) are interpolated in log FLOPs, marked ≈.</p>
<div class="controls">
<label>forecast at <input id="forecast-flops" type="text" value="{x_star}" size="9" inputmode="decimal"
 aria-label="forecast FLOPs"> FLOPs</label>
<span id="forecast-error" class="error" role="alert" hidden></span>
<label>highlight top <input id="top-n" type="number" min="1" max="20" value="5" size="3"> groups</label>
</div>
<div id="scaling-box">
<svg id="scaling-chart" viewBox="0 0 960 520" role="img" aria-label="each group's law, band and forecast"></svg>
</div>
<table class="board" id="scaling-table">
<thead><tr><th class="num">rank</th><th>group</th><th class="num">runs</th><th class="num">R²</th>
<th class="num" id="forecast-head">BPB at {x_star}</th><th class="num">interval</th><th class="num">Marin's</th>
<th>overlaps ranks</th><th>note</th></tr></thead>
<tbody></tbody>
</table>"""


def html_page(
    source: str,
    runs: list[Run],
    tables: list[Table],
    chart_runs: list[Run] | None = None,
    axis: str = "hardware",
    track: str | None = "marin",
    scaling: dict[str, Any] | None = None,
    relative: tuple[dict[str, list[float | None]], dict[str, Any]] | None = None,
    view: str = "runs",
    relative_on: bool = False,
) -> str:
    """The page: "All runs" with `chart_runs` (one BPB track's; default every run with a BPB) on the
    chart, starting on `axis`, and `tables` below it; "Scaling" with `scaling` (page_data.scaling_data);
    `relative`: page_data.relative_data of the plotted runs (those with a BPB, in order); `view`: the
    one shown first; `relative_on`: All runs starts relative to the baseline (where it has a law)."""
    plotted = [r for r in (runs if chart_runs is None else chart_runs) if r.bpb is not None]
    board = {**chart_data(plotted, axis, track, relative), "scaling": scaling, "view": view, "relative": relative_on}
    data = json.dumps(board, allow_nan=False).replace("</", "<\\/")  # no `</script>` in the JSON
    asset = files("speedrun_trainer.leaderboard")
    css = asset.joinpath("page.css").read_text()
    js = asset.joinpath("page.js").read_text() + "\n" + asset.joinpath("page_scaling.js").read_text()
    by_name = {r.name: r for r in runs}
    checked = {name: " checked" if name == axis else "" for name in AXES}
    selected = {name: "true" if name == view else "false" for name in ("runs", "scaling")}
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
<nav class="views" role="tablist">
<button type="button" role="tab" id="tab-runs" data-view="runs" aria-selected="{selected["runs"]}">All runs</button>
<button type="button" role="tab" id="tab-scaling" data-view="scaling"
 aria-selected="{selected["scaling"]}">Scaling</button>
</nav>
<div id="view-runs" class="view"{"" if view == "runs" else " hidden"}>
<section>
<h2>{html.escape(quality_label(track))} against FLOPs</h2>
<div class="controls">
<span>x-axis:
<label><input type="radio" name="x-axis" value="hardware"{checked["hardware"]}> hardware FLOPs</label>
<label><input type="radio" name="x-axis" value="model"{checked["model"]}> model FLOPs</label></span>
<label><input type="checkbox" id="relative"> relative to the baseline's law</label>
<span id="relative-note" class="note"></span>
<span><span id="frontier-count">0</span> runs on the Pareto frontier</span>
<button type="button" id="reset-zoom">reset zoom</button>
</div>
<div id="chart-box">
<svg id="chart" viewBox="0 0 960 520" role="img" aria-label="BPB against FLOPs, Pareto frontier highlighted"></svg>
<div id="tooltip" role="tooltip" hidden></div>
</div>
</section>
{sections}
</div>
<div id="view-scaling" class="view"{"" if view == "scaling" else " hidden"}>
<section>
<h2>Scaling: {html.escape(quality_label(track))}, each group's law and its forecast</h2>
{_scaling_section(scaling)}
</section>
</div>
<script type="application/json" id="leaderboard-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""
