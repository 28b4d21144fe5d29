"""Marin's scaling-law fit, reproduced: the numbers its leaderboard site shows.

Marin's site (github.com/marin-community/speedrun, website/src/utils/regression.ts,
`computePowerLawWithOffset`) fits L = a * x^(-b) + c to each group of runs with the npm package
ml-levenberg-marquardt 5.0.0 and a fixed recipe:
- initial guess: c0 = min(0.7, 0.7 * min(y)); (a0, b0) from a straight line through
  (ln x, ln(y - c0)) (b0 = max(0.01, -slope), a0 = exp(intercept)), else (1, 0.1);
- bounds a in [1e-10, 1e30], b in [1e-6, 2], c in [0, 0.999 * min(y)];
- damping 1.5, forward finite differences with an absolute step of 1e-6, 200 iterations,
  error tolerance 1e-8, improvement threshold 1e-3, damping x 1/9 after a good step and x 11
  after a poor one (clamped to [1e-7, 1e7]).
The package's step is (damping * I + G G^T)^-1 G r, with G the finite-difference gradient of the
model (rows = parameters) and r the residuals; the parameters move by minus that step, clipped
to the bounds, and stay there even when the error grew: only the best parameters seen are kept
and returned. 200 iterations of this usually stop short of the least-squares optimum, which is why
speedrun_trainer.leaderboard.scaling also offers the converged fit. This module re-implements
that method from its description in plain Python floats (no numpy, so sums run in the package's
order); tests/unit/leaderboard/test_scaling.py pins the site's own figures.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

# The site's settings (regression.ts) and the package's defaults (ml-levenberg-marquardt 5.0.0,
# src/check_options.ts) that the site leaves alone.
ENTROPY_FLOOR_ESTIMATE = 0.7
DAMPING = 1.5
GRADIENT_DIFFERENCE = 1e-6
MAX_ITERATIONS = 200
ERROR_TOLERANCE = 1e-8
IMPROVEMENT_THRESHOLD = 1e-3
DAMPING_STEP_UP = 11.0
DAMPING_STEP_DOWN = 9.0
A_BOUNDS = (1e-10, 1e30)
B_BOUNDS = (1e-6, 2.0)
FLOOR_MARGIN = 0.999  # c <= 0.999 * min(y): the floor stays below every observed loss


@dataclass(frozen=True)
class PowerLaw:
    """L = a * x^(-b) + c: a scale, b exponent (> 0), c the irreducible floor."""

    a: float
    b: float
    c: float

    def predict(self, x: float) -> float:
        return self.a * math.pow(x, -self.b) + self.c


def site_bounds(ys: Sequence[float]) -> tuple[list[float], list[float]]:
    """Lower and upper bounds of (a, b, c), as Marin's site sets them."""
    return [A_BOUNDS[0], B_BOUNDS[0], 0.0], [A_BOUNDS[1], B_BOUNDS[1], min(ys) * FLOOR_MARGIN]


def _line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Least-squares line (slope, intercept) by the normal sums, the site's way."""
    n = len(xs)
    sx, sy = sum(xs), sum(ys)
    sxy, sxx = sum(x * y for x, y in zip(xs, ys, strict=True)), sum(x * x for x in xs)
    den = n * sxx - sx * sx
    if den == 0:
        return None
    slope = (n * sxy - sx * sy) / den
    return slope, (sy - slope * sx) / n


def site_initial_guess(xs: Sequence[float], ys: Sequence[float]) -> PowerLaw:
    c0 = min(ENTROPY_FLOOR_ESTIMATE, min(ys) * 0.7)
    above = [(x, y - c0) for x, y in zip(xs, ys, strict=True) if y - c0 > 0]
    a0, b0 = 1.0, 0.1
    if len(above) >= 2:
        line = _line([math.log(x) for x, _ in above], [math.log(y) for _, y in above])
        if line is not None:
            b0, a0 = max(0.01, -line[0]), math.exp(line[1])
    return PowerLaw(a0, b0, c0)


def _dot(u: Sequence[float], v: Sequence[float]) -> float:
    total = 0.0
    for p, q in zip(u, v, strict=True):
        total += p * q
    return total


def _inverse(m: list[list[float]]) -> list[list[float]]:
    """Inverse by LU with partial pivoting, solved against the identity (as ml-matrix's `inverse`)."""
    n = len(m)
    lu, pivots = [row[:] for row in m], list(range(n))
    for j in range(n):
        column = [lu[i][j] for i in range(n)]
        for i in range(n):
            s = 0.0
            for k in range(min(i, j)):
                s += lu[i][k] * column[k]
            column[i] -= s
            lu[i][j] = column[i]
        p = max(range(j, n), key=lambda i: (abs(column[i]), -i))  # first of the largest
        if p != j:
            lu[p], lu[j] = lu[j], lu[p]
            pivots[p], pivots[j] = pivots[j], pivots[p]
        if lu[j][j] != 0:
            for i in range(j + 1, n):
                lu[i][j] /= lu[j][j]
    if any(lu[j][j] == 0 for j in range(n)):
        raise ZeroDivisionError("singular matrix")
    x = [[1.0 if pivots[i] == c else 0.0 for c in range(n)] for i in range(n)]
    for k in range(n):
        for i in range(k + 1, n):
            for c in range(n):
                x[i][c] -= x[k][c] * lu[i][k]
    for k in range(n - 1, -1, -1):
        for c in range(n):
            x[k][c] /= lu[k][k]
        for i in range(k):
            for c in range(n):
                x[i][c] -= x[k][c] * lu[i][k]
    return x


def _model(p: Sequence[float], x: float) -> float:
    return p[0] * math.pow(x, -p[1]) + p[2]


def _sse(p: Sequence[float], xs: Sequence[float], ys: Sequence[float]) -> float:
    total = 0.0
    for x, y in zip(xs, ys, strict=True):
        total += (y - _model(p, x)) ** 2
    return total


def levenberg_marquardt(
    xs: Sequence[float], ys: Sequence[float], start: PowerLaw, lower: Sequence[float], upper: Sequence[float]
) -> tuple[PowerLaw, float, int]:
    """The package's iteration with the site's options: (best parameters, their SSE, iterations)."""
    params = [start.a, start.b, start.c]
    error = _sse(params, xs, ys)
    best_error, best = error, params[:]
    damping, iteration = DAMPING, 0
    while iteration < MAX_ITERATIONS and error > ERROR_TOLERANCE:
        previous = error
        fitted = [_model(params, x) for x in xs]
        gradient = []  # rows: parameters; (f(p) - f(p + h e_k)) / h, the package's sign
        for k in range(3):
            shifted = params[:]
            shifted[k] += GRADIENT_DIFFERENCE
            gradient.append([(f - _model(shifted, x)) / GRADIENT_DIFFERENCE for f, x in zip(fitted, xs, strict=True)])
        residuals = [y - f for y, f in zip(ys, fitted, strict=True)]
        normal = [[(damping if i == j else 0.0) + _dot(gradient[i], gradient[j]) for j in range(3)] for i in range(3)]
        g_r = [_dot(row, residuals) for row in gradient]
        step = [_dot(row, g_r) for row in _inverse(normal)]
        params = [min(max(lower[k], params[k] - step[k]), upper[k]) for k in range(3)]
        error = _sse(params, xs, ys)
        iteration += 1
        if math.isnan(error):
            break
        if error < best_error - ERROR_TOLERANCE:
            best_error, best = error, params[:]
        improvement = (previous - error) / sum(step[k] * (step[k] * damping + g_r[k]) for k in range(3))
        if improvement > IMPROVEMENT_THRESHOLD:
            damping = max(damping / DAMPING_STEP_DOWN, 1e-7)
        else:
            damping = min(damping * DAMPING_STEP_UP, 1e7)
    return PowerLaw(*best), best_error, iteration


def fit_marin(xs: Sequence[float], ys: Sequence[float]) -> PowerLaw | None:
    """The site's fit of one group (None where the site shows none: under 3 usable points, or a
    result that is not finite and positive). Points are sorted by x as the site sorts them."""
    points = sorted(
        ((x, y) for x, y in zip(xs, ys, strict=True) if x > 0 and math.isfinite(x) and math.isfinite(y)),
        key=lambda p: p[0],
    )  # stable, as the site's sort
    if len(points) < 3:
        return None
    px, py = [x for x, _ in points], [y for _, y in points]
    lower, upper = site_bounds(py)
    try:
        law, _, _ = levenberg_marquardt(px, py, site_initial_guess(px, py), lower, upper)
    except (ZeroDivisionError, OverflowError, ValueError):  # the site returns null when LM throws
        return None
    if not all(math.isfinite(v) for v in (law.a, law.b, law.c)) or law.a <= 0 or law.b <= 0 or law.c < 0:
        return None
    return law


def site_baseline_predict(law: PowerLaw | None, points: Sequence[tuple[float, float]], x: float) -> float | None:
    """The site's baseline BPB at x (hooks/useSpeedrunData.ts `buildBaselineModel`): a baseline
    run's own BPB at its own FLOPs, straight-line interpolation in log x between baseline runs,
    the fitted law outside them (the nearest run's BPB when there is no law)."""
    if x <= 0 or not points:
        return None
    pts = sorted(points)
    for px, py in pts:
        if abs(px - x) <= max(abs(px), abs(x), 1.0) * 1e-12:
            return py
    (x0, y0), (xn, yn) = pts[0], pts[-1]
    if x0 <= x <= xn:
        for (lx, ly), (rx, ry) in itertools.pairwise(pts):
            if lx <= x <= rx:
                t = (math.log(x) - math.log(lx)) / (math.log(rx) - math.log(lx))
                return ly + t * (ry - ly)
    if law is not None:
        return law.predict(x)
    return y0 if x < x0 else yn
