"""The leaderboard's scaling and all-runs views (`speedrun leaderboard URI --view scaling|runs`).

- scaling: each `group/size` group's law fitted (scaling.py) and ranked by its forecast at x*
  FLOPs, beside Marin's own forecast (`--fit marin`: the site's numbers; its runs.json loads too).
- runs: every run with a BPB, ranked, with the Pareto frontier and, with `--relative`, each BPB
  against the baseline group's law (docs/scaling.md). A run's scaling name is its folder's
  `group/size`, so a sweep run with `--storage <prefix>/<sweep>/<point>` groups by itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speedrun_api.run_contract import RESULTS_FILE
from speedrun_trainer.data.storage import DataError, open_storage
from speedrun_trainer.leaderboard.marin_fit import PowerLaw, fit_marin, site_baseline_predict
from speedrun_trainer.leaderboard.ranking import bpb_track_name
from speedrun_trainer.leaderboard.runs import MARIN_TRACK, Run, Table, is_site_file
from speedrun_trainer.leaderboard.scaling import (
    DEFAULT_CONFIDENCE,
    DEFAULT_FORECAST_FLOPS,
    GroupFit,
    Point,
    fit_converged,
    fit_groups,
    forecast_band,
    group_name,
    rank_groups,
)
from speedrun_trainer.leaderboard.table_text import TABLE_WIDTH, format_table

AXES = {"hardware": "training hardware FLOPs", "model": "model FLOPs"}
VIEWS = ("scaling", "runs")
BASELINE_GROUP = "adamw_llama_scaling"  # the site's baseline (hooks/useSpeedrunData.ts)
SITE_MIN_FLOPS = 3e20  # the site ranks groups with a run above this many hardware FLOPs
INTERVAL_METHOD = "profile likelihood (F test, each group's own residual variance, n - 3 dof)"


# ---- inputs ---------------------------------------------------------------------------------


def storage_root(uri: str, endpoint_url: str | None = None) -> str:
    """The URL that load_runs' sources start with for `uri` (a file's folder for one file)."""
    if is_site_file(uri):
        return Path(uri).resolve().parent.as_uri()
    if uri.rstrip("/").rsplit("/", 1)[-1] == RESULTS_FILE:
        uri = uri.rstrip("/").rpartition("/")[0] or "."
    return open_storage(uri, endpoint_url).url()


def scaling_name(run: Run, root: str | None = None) -> str:
    """`group/size`: the run's name when it has a folder, else the last two folders of its results
    file below `root` (the leaderboard's URI), else its name."""
    if "/" in run.name or root is None or not run.source.startswith(root.rstrip("/") + "/"):
        return run.name
    folders = run.source[len(root.rstrip("/")) + 1 :].split("/")[:-1]
    return "/".join(folders[-2:]) if len(folders) >= 2 else run.name


def comparable_runs(runs: list[Run], track: str | None = None) -> tuple[list[Run], str]:
    """The runs whose BPBs may be compared: one dataset and definition (a BPB track of ranking.py).
    Default: `marin` (levanter's BPB on Paloma C4-EN) when present, else the only track there is."""
    by_track: dict[str, list[Run]] = {}
    for run in runs:
        if run.bpb_group is not None:
            by_track.setdefault(bpb_track_name(run.bpb_group), []).append(run)
    if not by_track:
        raise DataError("no run has a BPB to compare")
    known = ", ".join(sorted(by_track))
    if track is None:
        if MARIN_TRACK not in by_track and len(by_track) > 1:
            raise DataError(
                f"these runs measure BPB on several datasets or definitions: choose one with --bpb-track ({known})"
            )
        track = MARIN_TRACK if MARIN_TRACK in by_track else next(iter(by_track))
    if track not in by_track:
        raise DataError(f"--bpb-track {track}: no run has that BPB (tracks here: {known})")
    return by_track[track], track


def _points(runs: list[Run], axis: str, root: str | None = None) -> list[tuple[Run, Point]]:
    out = []
    for run in runs:
        x = run.flops(axis)
        if run.bpb is not None and run.bpb > 0 and x is not None and x > 0:
            out.append((run, Point(scaling_name(run, root), x, run.bpb)))
    return out


def groups_of(runs: list[Run], axis: str, root: str | None = None) -> tuple[dict[str, list[Point]], dict[str, bool]]:
    """Points by group, and whether the site would list each group (a run above 3e20 hardware FLOPs)."""
    points: dict[str, list[Point]] = {}
    listed: dict[str, bool] = {}
    for run, point in _points(runs, axis, root):
        name = group_name(point.name)
        if name is not None:
            points.setdefault(name, []).append(point)
            listed[name] = listed.get(name, False) or (run.hardware_flops or 0.0) > SITE_MIN_FLOPS
    return points, listed


# ---- the scaling view -----------------------------------------------------------------------


@dataclass
class ScalingView:
    """The scaling view: groups in rank order, and what it was fitted with."""

    groups: list[GroupFit]
    listed: dict[str, bool]  # by group: whether Marin's site ranks it (a run above SITE_MIN_FLOPS)
    marin: dict[str, float | None]  # by group: the site's own fit's forecast at x_star
    axis: str
    fit: str
    x_star: float
    confidence: float


def scaling_view(
    runs: list[Run],
    axis: str = "hardware",
    fit: str = "converged",
    x_star: float = DEFAULT_FORECAST_FLOPS,
    confidence: float = DEFAULT_CONFIDENCE,
    root: str | None = None,
) -> ScalingView:
    """The groups' fits in rank order, with what the site lists and forecasts for each."""
    points, listed = groups_of(runs, axis, root)
    if not points:
        raise DataError("no run is named group/size (or stored under <group>/<size>/) with a BPB and FLOPs")
    groups = fit_groups(points, fit, x_star, confidence)
    marin: dict[str, float | None] = {}
    for g in groups:
        law = fit_marin([p.x for p in g.points], [p.bpb for p in g.points])
        marin[g.name] = None if law is None else law.predict(x_star)
    if fit == "marin":  # the site's leaderboard leaves out groups without a large run
        shown = rank_groups([g for g in groups if listed[g.name]])
        rest = [g for g in groups if not listed[g.name]]
        for g in rest:
            g.rank = None
        groups = shown + rest
    return ScalingView(groups, listed, marin, axis, fit, x_star, confidence)


def _ranges(ranks: list[int]) -> str:
    spans: list[list[int]] = []
    for r in sorted(ranks):
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, spec)


def group_notes(g: GroupFit, listed: dict[str, bool]) -> str:
    """The table's note: the too-few flag, parameters on a bound, and what Marin's site leaves out."""
    notes = [g.flag] if g.flag else []
    notes += [", ".join(g.at_bounds)] if g.at_bounds else []
    if any(listed.values()) and not listed.get(g.name, False):  # Marin-scale data: say what the site hides
        notes.append("not ranked on Marin's site (no run > 3e20 hardware FLOPs)")
    return "; ".join(notes)


def scaling_table(view: ScalingView) -> Table:
    groups, x_star, confidence = view.groups, view.x_star, view.confidence
    by_name = {g.name: g for g in groups}
    converged = view.fit == "converged"
    headers = ["rank", "group", "runs", "a", "b", "c", "R²", f"BPB at {x_star:.0e}"]
    if converged:
        headers += [f"{confidence:.0%} interval", "Marin's", "overlaps ranks"]
    headers.append("note")
    rows = []
    for g in groups:
        law = g.law
        row = [
            str(g.rank or "-"),
            g.name,
            str(len(g.points)),
            _fmt(law and law.a, ".4g"),
            _fmt(law and law.b, ".4f"),
            _fmt(law and law.c, ".4f"),
            _fmt(g.r2, ".4f"),
            _fmt(g.forecast, ".4f"),
        ]
        if converged:
            interval = "-" if g.interval is None else f"{_fmt(g.interval[0], '.3f')}-{_fmt(g.interval[1], '.3f')}"
            ranks = [r for r in (by_name[o].rank for o in g.overlaps) if r is not None]
            others = sum(1 for o in groups if o is not g and o.interval is not None)
            overlap = (
                "-"
                if g.interval is None
                else "none"
                if not ranks
                else (f"all {others} others" if len(ranks) == others else _ranges(ranks))
            )
            row += [interval, _fmt(view.marin.get(g.name), ".4f"), overlap]
        rows.append([*row, group_notes(g, view.listed)])
    numeric = [True, False, True, True, True, True, True, True] + ([True, True, False] if converged else []) + [False]
    narrow = ["", "", "", "drop", "drop", "drop", "fold", ""] + (["", "", "fold"] if converged else []) + ["fold"]
    how = (
        f"least-squares optimum (scipy least_squares, the site's bounds); interval: {INTERVAL_METHOD}"
        if converged
        else "Marin's site: its Levenberg-Marquardt recipe, 200 iterations, no interval"
    )
    return Table(
        f"scaling: L = a * x^(-b) + c per group, x = {AXES[view.axis]}, ranked by the forecast at {x_star:.0e}",
        how,
        headers,
        rows,
        numeric,
        [g.rank == 1 for g in groups],
        narrow,
    )


def scaling_json(view: ScalingView, band_points: int = 0) -> dict[str, Any]:
    def law(g: GroupFit) -> dict[str, float] | None:
        return None if g.law is None else {"a": g.law.a, "b": g.law.b, "c": g.law.c}

    converged = view.fit == "converged"
    return {
        "view": "scaling",
        "x": view.axis,
        "fit": view.fit,
        "forecast_flops": view.x_star,
        "confidence": view.confidence if converged else None,
        "interval_method": INTERVAL_METHOD if converged else None,
        "groups": [
            {
                "name": g.name,
                "rank": g.rank,
                "law": law(g),
                "r2": g.r2,
                "sse": g.sse,
                "forecast": g.forecast,
                "interval": None if g.interval is None else [v if math.isfinite(v) else None for v in g.interval],
                "overlaps": g.overlaps,
                "flag": g.flag,
                "at_bounds": g.at_bounds,
                "marin_forecast": view.marin.get(g.name),
                "site_listed": view.listed.get(g.name, False),
                "runs": [{"name": p.name, "flops": p.x, "bpb": p.bpb} for p in g.points],
                **({"curve": forecast_band(g, view.x_star, band_points, view.confidence)} if band_points else {}),
            }
            for g in view.groups
        ],
    }


# ---- the all-runs view ----------------------------------------------------------------------


def baseline_of(
    runs: list[Run], axis: str, fit: str, baseline: str, root: str | None = None
) -> tuple[PowerLaw | None, Callable[[float], float | None]]:
    """(law, predict(x)) of the baseline runs (names containing `baseline`, as the site matches)."""
    points = [(p.x, p.bpb) for _, p in _points(runs, axis, root) if baseline.lower() in p.name.lower()]
    if len({x for x, _ in points}) < 3:
        raise DataError(f"--baseline {baseline}: needs runs at 3 or more FLOPs values, found {len(points)} runs")
    xs, ys = [x for x, _ in points], [y for _, y in points]
    law: PowerLaw | None = fit_marin(xs, ys) if fit == "marin" else fit_converged(xs, ys)
    if fit == "marin":
        return law, lambda x: site_baseline_predict(law, points, x)
    return law, (lambda x: None if law is None else law.predict(x))


def pareto_names(points: list[tuple[Run, Point]]) -> set[str]:
    """The site's frontier: sorted by FLOPs (stable), a run joins when its BPB beats every cheaper one."""
    frontier, best = set(), math.inf
    for run, p in sorted(points, key=lambda rp: rp[1].x):
        if p.bpb < best:
            best = p.bpb
            frontier.add(run.name)
    return frontier


def runs_view(
    runs: list[Run],
    axis: str = "hardware",
    relative: bool = False,
    fit: str = "converged",
    baseline: str = BASELINE_GROUP,
    root: str | None = None,
) -> dict[str, Any]:
    points = sorted(_points(runs, axis, root), key=lambda rp: (rp[1].bpb, rp[1].x, rp[0].name))
    if not points:
        raise DataError(f"no run has both a BPB and {AXES[axis]}")
    frontier = pareto_names(points)
    law, predict = baseline_of(runs, axis, fit, baseline, root) if relative else (None, None)
    rows = []
    for i, (run, p) in enumerate(points, 1):
        row: dict[str, Any] = {
            "rank": i,
            "name": run.name,
            "author": run.author,
            "bpb": p.bpb,
            "flops": p.x,
            "pareto": run.name in frontier,
        }
        if predict is not None:
            base = predict(p.x)
            row["baseline_bpb"] = base
            row["relative_percent"] = None if not base or base <= 0 else (p.bpb / base - 1.0) * 100.0
        rows.append(row)
    return {
        "view": "runs",
        "x": axis,
        "relative": relative,
        "fit": fit,
        "baseline": None
        if not relative
        else {"group": baseline, "law": None if law is None else {"a": law.a, "b": law.b, "c": law.c}},
        "runs": rows,
    }


def runs_table(view: dict[str, Any]) -> Table:
    relative = view["relative"]
    headers = ["rank", "pareto", "run", "author", "BPB", AXES[view["x"]]] + (["vs baseline"] if relative else [])
    rows = [
        [str(r["rank"]), "*" if r["pareto"] else "", r["name"], r["author"], f"{r['bpb']:.4f}", f"{r['flops']:.3e}"]
        + ([_fmt(r["relative_percent"], "+.2f") + "%"] if relative else [])
        for r in view["runs"]
    ]
    note = f"ranked by BPB; * = Pareto frontier on {AXES[view['x']]}"
    if relative:
        law = view["baseline"]["law"]
        note += (
            f"; vs baseline = BPB / baseline - 1, baseline `{view['baseline']['group']}` fitted"
            f" ({view['fit']}): a={law['a']:.4g} b={law['b']:.4f} c={law['c']:.4f}"
            if law
            else ""
        )
    return Table(
        f"all runs: BPB vs {AXES[view['x']]}",
        note,
        headers,
        rows,
        [True, False, False, False, True, True] + [True] * relative,
        [r["pareto"] for r in view["runs"]],
        ["", "", "", "drop", "", ""] + [""] * relative,
    )


# ---- output ---------------------------------------------------------------------------------


def render_view(
    runs: list[Run],
    view: str,
    axis: str = "hardware",
    relative: bool = False,
    fit: str = "converged",
    x_star: float = DEFAULT_FORECAST_FLOPS,
    confidence: float = DEFAULT_CONFIDENCE,
    baseline: str = BASELINE_GROUP,
    as_json: bool = False,
    root: str | None = None,
    band_points: int = 0,
    bpb_track: str | None = None,
    width: int | None = TABLE_WIDTH,
) -> str:
    """The text (a table fitted to `width` columns, None: whole; or JSON) of one view; `root` is
    where the results were found (storage_root)."""
    if relative and view != "runs":
        raise DataError("--relative: only with --view runs (the scaling view fits absolute BPB)")
    if band_points and not (view == "scaling" and as_json):
        raise DataError("--band-points: only with --view scaling --json (the table has no band)")
    runs, track = comparable_runs(runs, bpb_track)
    if view == "runs":
        data = {"bpb_track": track, **runs_view(runs, axis, relative, fit, baseline, root)}
        table = runs_table(data)
    else:
        scaling = scaling_view(runs, axis, fit, x_star, confidence, root)
        data = {"bpb_track": track, **scaling_json(scaling, band_points)}
        table = scaling_table(scaling)
    if as_json:
        return json.dumps(data, indent=2)
    table.title = f"{track}: {table.title}"
    return format_table(table, width)
