"""What the interactive page's Scaling view and relative toggle embed (page.py writes it as JSON).

    speedrun leaderboard runs.json --html board.html [--x model] [--fit marin] [--forecast-flops 1e21]

The page never fits anything. From here it gets each group's law (a, b, c), R², runs, too-few
flag and notes (scaling.py, scaling_views.py: the same fits as `--view scaling`), and the profile
interval of the law (scaling.forecast_interval) on a grid of FLOPs: the group's smallest run, every
half decade above it up to 100 x the forecast FLOPs, and the forecast FLOPs itself. page_scaling.js
evaluates L = a x^-b + c at whatever FLOPs the reader types, takes the interval at a grid point as
it is, interpolates it linearly in log FLOPs between two grid points (the page marks those "≈"),
and ranks the groups by that forecast. Each grid point costs one interval (about 0.03 s of CPU):
Marin's 96 runs take a few seconds.

The relative toggle of "All runs" gets each run's BPB relative to the baseline group's law, in
percent, on both FLOPs axes (scaling_views.baseline_of: the converged law, or with `--fit marin`
the site's own baseline), or the one-line reason there is none.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from speedrun_trainer.data.storage import DataError
from speedrun_trainer.leaderboard.marin_fit import PowerLaw, fit_marin
from speedrun_trainer.leaderboard.scaling import GroupFit, band_at
from speedrun_trainer.leaderboard.scaling_views import (
    AXES,
    INTERVAL_METHOD,
    baseline_of,
    group_notes,
    scaling_view,
)

if TYPE_CHECKING:
    from speedrun_trainer.leaderboard.runs import Run

GRID_STEPS_PER_DECADE = 2
GRID_DECADES_PAST_FORECAST = 2  # the typed forecast keeps an interval up to 100 x the forecast FLOPs


def forecast_grid(smallest: float, x_star: float) -> list[float]:
    """The FLOPs at which a group's interval is computed: its smallest run, each half decade above
    it up to 100 x x*, and x* (even below the smallest run; sorted, without near-duplicates)."""
    top = math.log10(x_star) + GRID_DECADES_PAST_FORECAST
    first = math.floor(math.log10(smallest) * GRID_STEPS_PER_DECADE) + 1
    last = math.floor(top * GRID_STEPS_PER_DECADE + 1e-9)
    grid = [smallest, x_star] + [10 ** (k / GRID_STEPS_PER_DECADE) for k in range(first, last + 1)]
    out: list[float] = []
    for x in sorted(v for v in grid if v >= smallest or v == x_star):
        if not out or x > out[-1] * (1 + 1e-9):
            out.append(x)
        elif x == x_star:  # keep x* exactly: the page's default interval is the table's
            out[-1] = x
    return out


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _law(law: PowerLaw | None) -> dict[str, float] | None:
    return None if law is None else {"a": law.a, "b": law.b, "c": law.c}


def group_data(
    g: GroupFit, listed: dict[str, bool], marin: dict[str, float | None], fit: str, x_star: float, confidence: float
) -> dict[str, Any]:
    """One group as the page needs it (bands only where the fit has intervals; Marin's law for the
    "Marin's" column at any forecast FLOPs)."""
    law = _law(g.law)
    site = g.law if fit == "marin" else fit_marin([p.x for p in g.points], [p.bpb for p in g.points])
    band = band_at(g, forecast_grid(g.points[0].x, x_star), confidence) if g.interval is not None else []
    return {
        "name": g.name,
        "law": law,
        "r2": g.r2,
        "forecast": g.forecast,
        "interval": None if g.interval is None else [_finite(v) for v in g.interval],
        "rankable": g.law is not None and (fit != "marin" or listed.get(g.name, False)),
        "marin": marin.get(g.name),
        "marinLaw": _law(site) if marin.get(g.name) is not None else None,
        "flag": g.flag,
        "notes": group_notes(g, listed),
        "runs": [{"name": p.name, "flops": p.x, "bpb": p.bpb} for p in g.points],
        "band": [{"flops": b["flops"], "low": b["low"], "high": b["high"]} for b in band],
    }


def scaling_data(
    runs: list[Run], axis: str, fit: str, x_star: float, confidence: float, root: str | None = None
) -> dict[str, Any]:
    """The Scaling view's data; `groups` empty and `reason` set when no run is named group/size."""
    base: dict[str, Any] = {
        "axis": axis,
        "axisLabel": AXES[axis],
        "fit": fit,
        "xStar": x_star,
        "confidence": confidence if fit == "converged" else None,
        "method": INTERVAL_METHOD if fit == "converged" else None,
        "groups": [],
    }
    try:
        view = scaling_view(runs, axis, fit, x_star, confidence, root)
    except DataError as e:
        return {**base, "reason": str(e)}
    groups = [group_data(g, view.listed, view.marin, fit, x_star, confidence) for g in view.groups]
    return {**base, "reason": None, "groups": groups}


def relative_data(
    runs: list[Run], fit: str, baseline: str, root: str | None = None
) -> tuple[dict[str, list[float | None]], dict[str, Any]]:
    """(percent above (+) or below (-) the baseline's law per run, by axis; what the page says of
    the baseline on each axis: its law, or why there is none)."""
    percents: dict[str, list[float | None]] = {}
    about: dict[str, Any] = {"group": baseline, "fit": fit}
    for axis in AXES:
        try:
            law, predict = baseline_of(runs, axis, fit, baseline, root)
        except DataError as e:
            percents[axis] = [None] * len(runs)
            about[axis] = {"law": None, "reason": str(e)}
            continue
        values: list[float | None] = []
        for run in runs:
            x = run.flops(axis)
            base = predict(x) if x and x > 0 and run.bpb is not None else None
            values.append(None if not base or base <= 0 or run.bpb is None else (run.bpb / base - 1.0) * 100.0)
        percents[axis] = values
        about[axis] = {"law": _law(law), "reason": None}
    return percents, about
