"""The `--view` pictures (PNG): the scaling view's laws, bands and forecasts; the all-runs view.

    speedrun leaderboard runs.json --view scaling --plot scaling.png [--band-points 20] [--x model]
    speedrun leaderboard runs.json --view runs --relative --plot relative.png

Scaling: the top groups (`TOP_GROUPS`, by the ranking of scaling_views) in colour, each with its
runs, its law drawn from its smallest run to the forecast FLOPs, the band of the law's profile
intervals (scaling.forecast_band at `--band-points` FLOPs, 12 by default; none for the site's fit,
which has no interval) and the forecast with its interval as an error bar; every other group faint
grey (its runs and law, no band), so Marin's 20 groups stay legible. The legend gives the top
groups' ranks, forecasts and intervals. All runs: BPB (or with `--relative` percent above or below
the baseline's law) against FLOPs, the Pareto frontier highlighted as in frontier_plot.py.
Both draw on matplotlib's Agg canvas directly (no pyplot), as frontier_plot.py does.
"""

from __future__ import annotations

import argparse
import io
import math
from typing import TYPE_CHECKING, Any

from speedrun_trainer.leaderboard.frontier_plot import FRONTIER_COLOR, RUN_COLOR, place_labels
from speedrun_trainer.leaderboard.scaling import GroupFit, forecast_band
from speedrun_trainer.leaderboard.scaling_views import AXES, comparable_runs, runs_view, scaling_view

if TYPE_CHECKING:
    from speedrun_trainer.leaderboard.runs import Run

TOP_GROUPS = 5
DEFAULT_BAND_POINTS = 12
COLORS = ["#d9480f", "#1c7ed6", "#2b8a3e", "#ae3ec9", "#0b7285", "#c2255c", "#5c940d", "#364fc7"]
FAINT = "#adb5bd"


def _figure() -> tuple[Any, Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6), dpi=110)
    return fig, FigureCanvasAgg(fig), fig.add_subplot()


def _png(fig: Any, canvas: Any) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    canvas.print_png(buf)
    return buf.getvalue()


def _curve(group: GroupFit, x_star: float, steps: int = 80) -> tuple[list[float], list[float]]:
    assert group.law is not None
    lo, hi = math.log(group.points[0].x), math.log(max(x_star, group.points[-1].x))
    xs = [math.exp(lo + (hi - lo) * i / steps) for i in range(steps + 1)]
    return xs, [group.law.predict(x) for x in xs]


def _interval_text(group: GroupFit) -> str:
    if group.interval is None:
        return ""
    low, high = group.interval
    return f" [{low:.3f}, {'inf' if math.isinf(high) else format(high, '.3f')}]"


def scaling_png(
    groups: list[GroupFit],
    axis: str,
    x_star: float,
    track: str,
    band_points: int = DEFAULT_BAND_POINTS,
    confidence: float = 0.95,
    top: int = TOP_GROUPS,
) -> bytes:
    """Groups in rank order (scaling_views.scaling_view): the top `top` ranked ones in colour."""
    fig, canvas, ax = _figure()
    leaders = [g for g in groups if g.rank is not None and g.law is not None][:top]
    others = [g for g in groups if g not in leaders]
    ys = [p.bpb for g in groups for p in g.points] + [g.forecast for g in leaders if g.forecast is not None]
    ys += [v for g in leaders if g.interval is not None for v in g.interval if math.isfinite(v)]
    for g in others:
        ax.scatter([p.x for p in g.points], [p.bpb for p in g.points], s=10, color=FAINT, alpha=0.6, zorder=1)
        if g.law is not None:
            ax.plot(*_curve(g, x_star), color=FAINT, alpha=0.5, linewidth=0.9, zorder=1)
    y_low, y_high = min(ys), max(ys)
    pad = max(0.01, (y_high - y_low) * 0.06)
    entries: dict[int, Any] = {}
    for i, g in reversed(list(enumerate(leaders))):  # the leader drawn last, on top
        color = COLORS[i % len(COLORS)]
        if g.interval is not None and band_points >= 2:
            band = forecast_band(g, x_star, band_points, confidence)
            lows = [b["low"] if b["low"] is not None else y_low - pad for b in band]
            highs = [b["high"] if b["high"] is not None else y_high + pad for b in band]
            ax.fill_between([b["flops"] for b in band], lows, highs, color=color, alpha=0.1, linewidth=0, zorder=2)
        ax.plot(*_curve(g, x_star), color=color, linewidth=2, zorder=3)
        ax.scatter(
            [p.x for p in g.points],
            [p.bpb for p in g.points],
            s=28,
            color=color,
            edgecolors="white",
            linewidths=0.6,
            zorder=4,
        )
        assert g.forecast is not None
        err = None
        if g.interval is not None:
            low, high = g.interval
            err = [[g.forecast - low], [(y_high + pad if math.isinf(high) else high) - g.forecast]]
        dodge = x_star * 10 ** (0.04 * (i - (len(leaders) - 1) / 2))  # error bars side by side, not on top
        entries[i] = ax.errorbar(
            [dodge],
            [g.forecast],
            yerr=err,
            fmt="D",
            color=color,
            markersize=6,
            capsize=4,
            markeredgecolor="black",
            markeredgewidth=0.6,
            zorder=5,
            label=f"{g.rank}. {g.name}: {g.forecast:.4f}{_interval_text(g)}",
        )
    ax.axvline(x_star, color="#495057", linestyle="--", linewidth=1, zorder=0)
    ax.set_xscale("log")
    ax.set_ylim(y_low - pad, y_high + pad)
    ax.set_xlabel(f"{AXES[axis]} (log scale); dashed: the forecast at {x_star:.0e}")
    quality = "C4-EN bits per byte" if track == "marin" else f"{track.removeprefix('bpb:')} bits per byte"
    ax.set_ylabel(f"{quality} (lower is better)")
    fit = leaders[0].fit if leaders else "converged"
    how = f"band: {confidence:.0%} profile intervals" if fit == "converged" else "Marin's site fit, no interval"
    ax.set_title(f"Scaling: L = a·x^(-b) + c per group, ranked by the forecast at {x_star:.0e} ({how})", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    handles = [entries[i] for i in sorted(entries)]
    if others:
        handles += ax.plot(
            [],
            [],
            color=FAINT,
            linewidth=0.9,
            marker="o",
            markersize=3,
            label=f"{len(others)} other groups (law and runs)",
        )
    ax.legend(handles=handles, loc="upper right", fontsize=7.5)
    return _png(fig, canvas)


def runs_png(view: dict[str, Any], track: str) -> bytes:
    """The all-runs view (scaling_views.runs_view): BPB, or percent vs the baseline, against FLOPs."""
    fig, canvas, ax = _figure()
    relative = view["relative"]
    rows = [r for r in view["runs"] if not relative or r.get("relative_percent") is not None]
    y_of = (lambda r: r["relative_percent"]) if relative else (lambda r: r["bpb"])
    others = [r for r in rows if not r["pareto"]]
    frontier = sorted((r for r in rows if r["pareto"]), key=lambda r: (r["flops"], r["bpb"]))
    ax.scatter([r["flops"] for r in others], [y_of(r) for r in others], s=30, color=RUN_COLOR, label="run", zorder=2)
    if not relative:  # a staircase: a BPB reached with some FLOPs stays reachable with more
        ax.step(
            [r["flops"] for r in frontier],
            [r["bpb"] for r in frontier],
            where="post",
            color=FRONTIER_COLOR,
            linewidth=2,
            zorder=3,
        )
    else:
        law = view["baseline"]["law"]
        ax.axhline(
            0.0,
            color="#1f2933",
            linewidth=1.2,
            zorder=1,
            label=f"baseline {view['baseline']['group']} ({view['fit']})"
            + (f": a={law['a']:.4g} b={law['b']:.4f} c={law['c']:.4f}" if law else ""),
        )
    ax.scatter(
        [r["flops"] for r in frontier],
        [y_of(r) for r in frontier],
        s=70,
        color=FRONTIER_COLOR,
        edgecolors="black",
        linewidths=0.8,
        label="Pareto frontier (BPB vs FLOPs)",
        zorder=4,
    )
    ax.set_xscale("log")
    ax.set_xlabel(f"{AXES[view['x']]} (log scale)")
    quality = "C4-EN BPB" if track == "marin" else f"{track.removeprefix('bpb:')} BPB"
    ax.set_ylabel(
        f"{quality} vs the baseline's law, % (lower is better)" if relative else f"{quality} (lower is better)"
    )
    ax.set_title(
        f"All runs: {len(rows)} runs, {len(frontier)} on the Pareto frontier"
        + (" (relative to the baseline's law)" if relative else "")
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    place_labels(ax, canvas, [(r["name"], float(r["flops"]), float(y_of(r)), 7, "#1f2933") for r in frontier])
    buf = io.BytesIO()
    canvas.print_png(buf)
    return buf.getvalue()


def view_png(runs: list[Run], args: argparse.Namespace, root: str | None = None) -> bytes:
    """The picture of `args.view` on the runs of one BPB track (as the view's table)."""
    comparable, track = comparable_runs(runs, args.bpb_track)
    if args.view == "scaling":
        groups = scaling_view(comparable, args.flops, args.fit, args.forecast_flops, args.confidence, root).groups
        return scaling_png(
            groups, args.flops, args.forecast_flops, track, args.band_points or DEFAULT_BAND_POINTS, args.confidence
        )
    view = runs_view(comparable, args.flops, args.relative, args.fit, args.baseline, root)
    return runs_png(view, track)
