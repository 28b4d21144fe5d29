"""Scaling laws of groups of runs: L = a * x^(-b) + c fitted per group, forecasts with intervals.

Runs named `group/size` form a group (Marin's site: website/src/utils/scaling.ts, everything but
the last path part). Each group with 3 or more distinct FLOPs values is fitted with the power law
with an irreducible floor, in one of two ways:
- `converged` (default): the least-squares optimum under the site's bounds (a in [1e-10, 1e30],
  b in [1e-6, 2], c in [0, 0.999 * min BPB]), by scipy.optimize.least_squares (trust-region
  reflective) in (ln a, b, c), started from the best point of a scan over b in which (a, c) are
  solved exactly (the model is linear in them), and from the site's initial guess;
- `marin`: the site's own Levenberg-Marquardt recipe (marin_fit.py), which stops early.

The forecast at x* (default 1e22 FLOPs) comes with a profile-likelihood interval (Bates & Watts,
"Nonlinear Regression Analysis", 1988, ch. 6; Venzon & Moolgavkar 1988): reparametrized by the
forecast F = a x*^-b + c, the profile S(F) = min SSE over (b, c) with F fixed, and the interval
is {F : (S(F) - S_min) / (S_min / (n - 3)) <= F-quantile(level; 1, n - 3)}. Why profile and not
the parameter covariance or a bootstrap: a forecast two decades past the data is far from linear
in the parameters and the floor often sits on its bound, where a covariance ellipse means nothing;
with 4 runs a bootstrap resample rarely holds 3 distinct sizes. The profile respects the bounds,
needs no linearization and no random numbers. The noise is each group's own: with 4 runs that is
one degree of freedom, and the interval is (rightly) wide. Groups with 3 distinct sizes fit
exactly and get no interval; under 3, no fit. Both are flagged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

from speedrun_trainer.data.storage import DataError
from speedrun_trainer.leaderboard.marin_fit import (
    A_BOUNDS,
    B_BOUNDS,
    PowerLaw,
    fit_marin,
    site_bounds,
    site_initial_guess,
)

if TYPE_CHECKING:
    import numpy as np

DEFAULT_FORECAST_FLOPS = 1e22  # the site's FORECAST_TARGET_FLOPS (hooks/useSpeedrunData.ts)
DEFAULT_CONFIDENCE = 0.95
FITS = ("converged", "marin")
B_GRID_POINTS = 800
_LN_A = (math.log(A_BOUNDS[0]), math.log(A_BOUNDS[1]))


def _numeric() -> tuple[ModuleType, ModuleType, ModuleType]:
    """numpy, scipy.optimize and scipy.stats, imported when a converged fit needs them (the `train`
    extra, which `make speedrun` installs, has both): `--fit marin` and the rest of `speedrun
    leaderboard` run without them."""
    try:
        import numpy
        from scipy import optimize, stats
    except ImportError as e:
        raise DataError(
            f"converged fits need numpy and scipy ({e.name} is not installed): "
            "pip install 'speedrun-operator[train]', or use --fit marin"
        ) from None
    return numpy, optimize, stats


def _b_grid() -> np.ndarray:
    np, _, _ = _numeric()
    return np.geomspace(B_BOUNDS[0], B_BOUNDS[1], B_GRID_POINTS)


def group_name(run_name: str) -> str | None:
    """The group of `group/size` (everything but the last part); None for a name without a folder."""
    parts = [p for p in run_name.split("/") if p]
    return "/".join(parts[:-1]) if len(parts) > 1 else None


@dataclass(frozen=True)
class Point:
    name: str
    x: float  # FLOPs on the chosen axis
    bpb: float


@dataclass
class GroupFit:
    """One group's law, its quality, and its forecast at x* with the interval (converged fits)."""

    name: str
    points: list[Point]
    fit: str
    law: PowerLaw | None = None
    sse: float | None = None
    r2: float | None = None
    forecast: float | None = None
    interval: tuple[float, float] | None = None
    flag: str | None = None  # why the forecast is missing or has no interval
    at_bounds: list[str] = field(default_factory=list)  # parameters the fit pressed against a bound
    rank: int | None = None
    overlaps: list[str] = field(default_factory=list)  # groups whose intervals overlap this one's

    @property
    def distinct_sizes(self) -> int:
        return len({p.x for p in self.points})


# ---- least squares --------------------------------------------------------------------------


def sse(law: PowerLaw, xs: Sequence[float], ys: Sequence[float]) -> float:
    return float(sum((y - law.predict(x)) ** 2 for x, y in zip(xs, ys, strict=True)))


def r_squared(law: PowerLaw, xs: Sequence[float], ys: Sequence[float]) -> float:
    mean = sum(ys) / len(ys)
    total = sum((y - mean) ** 2 for y in ys)
    return 1.0 if total == 0 else 1.0 - sse(law, xs, ys) / total


def _scan_start(x: np.ndarray, y: np.ndarray, c_max: float) -> tuple[float, float, float]:
    """Best (ln a, b, c) over the b grid, (a, c) solved exactly under a >= 0, 0 <= c <= c_max."""
    np, _, _ = _numeric()
    grid = _b_grid()
    x_ref = math.exp(float(np.mean(np.log(x))))
    w = (x[None, :] / x_ref) ** -grid[:, None]  # (grid, n)
    n, sw, sww, sy, swy = len(y), w.sum(1), (w * w).sum(1), y.sum(), w @ y
    candidates = []
    with np.errstate(divide="ignore", invalid="ignore"):
        det = sww * n - sw * sw
        alpha = (swy * n - sw * sy) / det
        c = (sww * sy - sw * swy) / det
        candidates.append((alpha, c, (alpha > 0) & (c >= 0) & (c <= c_max)))
    for c_edge in (0.0, c_max):  # on an edge of the box, alpha solves a 1-D least squares
        alpha = np.maximum((swy - c_edge * sw) / sww, 0.0)
        candidates.append((alpha, np.full_like(alpha, c_edge), np.ones_like(alpha, dtype=bool)))
    best = (math.inf, 0.0, 0.0, 0.0)
    for alpha, c, ok in candidates:
        err = ((alpha[:, None] * w + c[:, None] - y[None, :]) ** 2).sum(1)
        err = np.where(ok & np.isfinite(err), err, np.inf)
        i = int(np.argmin(err))
        if err[i] < best[0]:
            best = (float(err[i]), float(alpha[i]), float(grid[i]), float(c[i]))
    _, alpha, b, c = best
    ln_a = math.log(max(alpha, 1e-300)) + b * math.log(x_ref)
    return min(max(ln_a, _LN_A[0]), _LN_A[1]), b, c


def fit_converged(xs: Sequence[float], ys: Sequence[float]) -> PowerLaw:
    """The least-squares optimum of L = a x^-b + c under the site's bounds (scipy least_squares)."""
    np, optimize, _ = _numeric()
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    lx = np.log(x)
    lower, upper = site_bounds(ys)
    lo, hi = np.array([_LN_A[0], lower[1], lower[2]]), np.array([_LN_A[1], upper[1], upper[2]])

    def residuals(p: np.ndarray) -> np.ndarray:
        return np.exp(p[0] - p[1] * lx) + p[2] - y

    def jacobian(p: np.ndarray) -> np.ndarray:
        e = np.exp(p[0] - p[1] * lx)
        return np.stack([e, -lx * e, np.ones_like(e)], axis=1)

    guess = site_initial_guess(xs, ys)
    starts = [_scan_start(x, y, upper[2]), (math.log(guess.a), guess.b, guess.c)]
    best = None
    for start in starts:
        p0 = np.clip(np.array(start, float), lo, hi)
        result = optimize.least_squares(
            residuals,
            p0,
            jac=jacobian,
            bounds=(lo, hi),
            method="trf",
            x_scale="jac",
            ftol=1e-14,
            xtol=1e-14,
            gtol=1e-14,
            max_nfev=5000,
        )
        if best is None or result.cost < best.cost:
            best = result
    assert best is not None
    ln_a, b, c = (float(v) for v in best.x)
    return PowerLaw(math.exp(ln_a), b, c)


# ---- the forecast's profile interval --------------------------------------------------------


def profile_sse(xs: Sequence[float], ys: Sequence[float], forecast: float, x_star: float) -> float:
    """min SSE over laws with L(x*) = forecast, b and c within the site's bounds.

    With F fixed, a = (F - c) x*^b and the model is F u + c (1 - u), u = (x*/x)^b: for each b
    the best c is a clipped 1-D least squares; b is scanned on a grid, then refined."""
    np, optimize, _ = _numeric()
    grid = _b_grid()
    lx, y = np.log(np.asarray(xs, float)), np.asarray(ys, float)
    ls = math.log(x_star)
    c_max = min(min(ys) * 0.999, forecast)  # a > 0 needs c < F

    def best_c(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = np.exp(b[:, None] * (ls - lx[None, :]))
        v = 1.0 - u
        target = y[None, :] - forecast * u
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.clip((v * target).sum(1) / (v * v).sum(1), 0.0, max(c_max, 0.0))
        c = np.where(np.isfinite(c), c, 0.0)
        err = ((c[:, None] * v - target) ** 2).sum(1)
        ln_a = np.log(np.maximum(forecast - c, 1e-300)) + b * ls
        return np.where((ln_a >= _LN_A[0]) & (ln_a <= _LN_A[1]), err, np.inf), c

    if c_max < 0:
        return math.inf
    err, _ = best_c(grid)
    i = int(np.argmin(err))
    if not np.isfinite(err[i]):
        return math.inf
    left, right = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]

    def at(b: float) -> float:  # infeasible b (a out of bounds): a large finite value keeps Brent's parabolas sane
        value = float(best_c(np.array([b]))[0][0])
        return value if math.isfinite(value) else 1e300

    refined = optimize.minimize_scalar(at, bounds=(left, right), method="bounded", options={"xatol": 1e-12})
    return float(min(err[i], refined.fun))


def forecast_interval(
    xs: Sequence[float], ys: Sequence[float], law: PowerLaw, x_star: float, confidence: float
) -> tuple[float, float]:
    """The profile-likelihood interval of L(x*) at `confidence` (n - 3 >= 1 degrees of freedom).

    An end that the constraints reach before the threshold is reported as that constraint
    (0 below: a > 0 and c >= 0 keep a forecast positive; +inf above)."""
    _, optimize, stats = _numeric()
    n = len(xs)
    forecast = law.predict(x_star)
    at_forecast = profile_sse(xs, ys, forecast, x_star)
    best = min(sse(law, xs, ys), at_forecast)
    # max(): a (near) perfect fit must still leave its own forecast inside the interval
    threshold = max(best * (1.0 + float(stats.f.ppf(confidence, 1, n - 3)) / (n - 3)), at_forecast)

    def excess(f: float) -> float:
        return profile_sse(xs, ys, f, x_star) - threshold

    floor, ceiling = 1e-9, 2.0 * max(ys) + 1.0
    low = 0.0 if excess(floor) <= 0 else optimize.brentq(excess, floor, forecast, xtol=1e-7)
    high = math.inf if excess(ceiling) <= 0 else optimize.brentq(excess, forecast, ceiling, xtol=1e-7)
    return float(low), float(high)


def forecast_band(
    group: GroupFit, x_star: float, points: int, confidence: float = DEFAULT_CONFIDENCE
) -> list[dict[str, float | None]]:
    """The law from the group's smallest run to x*, at `points` log-spaced FLOPs, each with its
    profile interval (what a chart draws as the band; none where the group has no interval)."""
    if group.law is None or points < 2:
        return []
    smallest = group.points[0].x
    start, stop = math.log(smallest), math.log(max(x_star, smallest * 1.01))
    return band_at(group, [math.exp(start + (stop - start) * i / (points - 1)) for i in range(points)], confidence)


def band_at(
    group: GroupFit, flops: Sequence[float], confidence: float = DEFAULT_CONFIDENCE
) -> list[dict[str, float | None]]:
    """The group's law at each of `flops`, with its profile interval there (None where the group
    has none; `high` None for an end only the constraints bound)."""
    if group.law is None:
        return []
    xs, ys = [p.x for p in group.points], [p.bpb for p in group.points]
    band: list[dict[str, float | None]] = []
    for x in flops:
        low, high = (None, None)
        if group.interval is not None:
            low, high = forecast_interval(xs, ys, group.law, x, confidence)
        band.append(
            {
                "flops": x,
                "bpb": group.law.predict(x),
                "low": low,
                "high": None if high is None or math.isinf(high) else high,
            }
        )
    return band


# ---- groups ---------------------------------------------------------------------------------


def _at_bounds(law: PowerLaw, ys: Sequence[float]) -> list[str]:
    lower, upper = site_bounds(ys)
    names = []
    for name, value, lo, hi in zip("abc", (law.a, law.b, law.c), lower, upper, strict=True):
        if abs(value - lo) <= 1e-9 * max(1.0, abs(lo)) or abs(value - hi) <= 1e-9 * max(1.0, abs(hi)):
            names.append(f"{name}={'lower' if abs(value - lo) <= abs(value - hi) else 'upper'} bound")
    return names


def fit_group(
    name: str,
    points: Sequence[Point],
    fit: str = "converged",
    x_star: float = DEFAULT_FORECAST_FLOPS,
    confidence: float = DEFAULT_CONFIDENCE,
) -> GroupFit:
    """Fit one group; flag it when its runs cannot determine three parameters."""
    usable = sorted(
        (p for p in points if p.x > 0 and p.bpb > 0 and math.isfinite(p.x) and math.isfinite(p.bpb)), key=lambda p: p.x
    )
    group = GroupFit(name, usable, fit)
    xs, ys = [p.x for p in usable], [p.bpb for p in usable]
    sizes = group.distinct_sizes
    if sizes < 3:
        group.flag = f"too few runs: {sizes} distinct FLOPs for 3 parameters (no fit)"
        return group
    law = fit_marin(xs, ys) if fit == "marin" else fit_converged(xs, ys)
    if law is None:
        group.flag = "the site's fit fails on these runs"
        return group
    group.law, group.sse, group.r2 = law, sse(law, xs, ys), r_squared(law, xs, ys)
    group.forecast, group.at_bounds = law.predict(x_star), _at_bounds(law, ys)
    if sizes == 3:
        group.flag = "too few runs: 3 distinct FLOPs for 3 parameters (no degree of freedom left, no interval)"
    elif fit == "converged":  # the site's fit comes without an uncertainty
        group.interval = forecast_interval(xs, ys, law, x_star, confidence)
    return group


def rank_groups(groups: list[GroupFit]) -> list[GroupFit]:
    """Order by forecast (no forecast last), number them, and note whose intervals overlap."""
    ordered = sorted(groups, key=lambda g: (g.forecast is None, g.forecast or 0.0, g.name))
    for i, group in enumerate(ordered, 1):
        group.rank = i if group.forecast is not None else None
    for group in ordered:
        if group.interval is None:
            continue
        low, high = group.interval
        group.overlaps = [
            o.name
            for o in ordered
            if o is not group and o.interval is not None and o.interval[0] <= high and low <= o.interval[1]
        ]
    return ordered


def fit_groups(
    points: dict[str, list[Point]],
    fit: str = "converged",
    x_star: float = DEFAULT_FORECAST_FLOPS,
    confidence: float = DEFAULT_CONFIDENCE,
) -> list[GroupFit]:
    """Every group fitted and ranked by its forecast at x*."""
    return rank_groups([fit_group(name, pts, fit, x_star, confidence) for name, pts in points.items()])
