"""Tests of the scaling and all-runs views drawn: the PNGs (view_plots.py) and the interactive page's
Scaling view and relative toggle (page_data.py, page_scaling.js), the page in headless Chromium.

    pytest tests/unit/leaderboard/test_scaling_page.py

Marin's 96 published runs (the package's marin_speedrun/runs.json) are the data; the page's figures
are checked against the Python ones (scaling.py) at the precision the page prints them.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from speedrun_trainer.cli.speedrun import main as speedrun
from speedrun_trainer.leaderboard.frontier_plot import FRONTIER_COLOR
from speedrun_trainer.leaderboard.page_data import forecast_grid, relative_data, scaling_data
from speedrun_trainer.leaderboard.runs import load_site_runs
from speedrun_trainer.leaderboard.scaling import fit_group, forecast_interval
from speedrun_trainer.leaderboard.scaling_views import comparable_runs, runs_view, scaling_view
from speedrun_trainer.leaderboard.view_plots import COLORS, FAINT, scaling_png
from tests.support.pixels import load_png, pixels_near, rgb
from tests.support.scaling_runs import SITE_RUNS, depth_sweep, synthetic

if TYPE_CHECKING:
    from tests.support.cdp import Browser


def marin_runs() -> list:
    return comparable_runs(load_site_runs(str(SITE_RUNS)))[0]


def blended(color: str, alpha: float) -> str:
    """`color` drawn at `alpha` over white, as the band's fill lands on the canvas."""
    r, g, b = (round(255 * (1 - alpha) + c * alpha) for c in rgb(color))
    return f"#{r:02x}{g:02x}{b:02x}"


# ---- the PNGs -------------------------------------------------------------------------------


def test_scaling_png_of_marins_groups(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scaling.png"
    assert speedrun(["leaderboard", str(SITE_RUNS), "--view", "scaling", "--plot", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    image = load_png(out.read_bytes())
    assert image.shape == (660, 1100, 3)  # 10 x 6 inches at 110 dpi
    for color in COLORS[:5]:  # the five leading groups, each in its colour
        assert pixels_near(image, color, 20) > 150, color
    assert pixels_near(image, FAINT, 10) > 300  # the 14 others, faint


def test_scaling_png_draws_the_band_only_where_there_is_an_interval() -> None:
    converged = fit_group("syn", synthetic(0, 0.004))
    marin = fit_group("syn", synthetic(0, 0.004), fit="marin")
    converged.rank = marin.rank = 1
    band = blended(COLORS[0], 0.1)
    with_band = load_png(scaling_png([converged], "hardware", 1e22, "marin"))
    without = load_png(scaling_png([marin], "hardware", 1e22, "marin"))
    assert pixels_near(with_band, band, 3) > 2000  # the band, widening to the forecast
    assert pixels_near(without, band, 3) < 100  # the site's fit has no interval, no band
    assert pixels_near(with_band, COLORS[0], 20) > 300 and pixels_near(without, COLORS[0], 20) > 300


def test_runs_png_relative_to_the_baseline(tmp_path: Path) -> None:
    absolute, relative = tmp_path / "runs.png", tmp_path / "relative.png"
    assert speedrun(["leaderboard", str(SITE_RUNS), "--view", "runs", "--plot", str(absolute)]) == 0
    assert speedrun(["leaderboard", str(SITE_RUNS), "--view", "runs", "--relative", "--plot", str(relative)]) == 0
    a, r = load_png(absolute.read_bytes()), load_png(relative.read_bytes())
    assert pixels_near(a, FRONTIER_COLOR) > 1500 and pixels_near(r, FRONTIER_COLOR) > 1500
    assert (a != r).mean() > 0.01  # another y axis, the baseline's line instead of the staircase


# ---- what the page embeds -------------------------------------------------------------------


def test_forecast_grid_holds_the_forecast_and_half_decades() -> None:
    grid = forecast_grid(3.2e18, 1e22)
    assert grid[0] == 3.2e18 and 1e22 in grid and grid[-1] == pytest.approx(1e24)
    assert grid[1] == pytest.approx(1e19)
    assert all(b / a == pytest.approx(10**0.5) for a, b in itertools.pairwise(grid[1:]))
    odd = forecast_grid(1e18, 3e21)
    assert 3e21 in odd and odd == sorted(odd) and len(odd) == len(set(odd))
    assert forecast_grid(1e20, 1e19)[:2] == [1e19, 1e20]  # a forecast below every run keeps its interval


def test_page_data_matches_the_scaling_and_relative_views() -> None:
    runs = marin_runs()
    data = scaling_data(runs, "hardware", "converged", 1e22, 0.95)
    groups = scaling_view(runs, "hardware").groups
    assert [g["name"] for g in data["groups"]] == [g.name for g in groups]
    for embedded, group in zip(data["groups"], groups, strict=True):
        assert embedded["forecast"] == group.forecast
        if group.interval is None:
            assert embedded["band"] == []
            continue
        at_forecast = [b for b in embedded["band"] if b["flops"] == 1e22]
        assert len(at_forecast) == 1 and at_forecast[0]["low"] == group.interval[0]
    json.dumps(data, allow_nan=False)  # strictly valid JSON: an unbounded end is null
    percents, about = relative_data(runs, "converged", "adamw_llama_scaling")
    view = runs_view(runs, "model", relative=True)
    by_name = {row["name"]: row["relative_percent"] for row in view["runs"]}
    assert about["model"]["law"] == view["baseline"]["law"]
    for run, percent in zip(runs, percents["model"], strict=True):
        assert percent == pytest.approx(by_name[run.name], abs=1e-12)
    _, missing = relative_data(runs, "converged", "no_such_group")
    assert missing["hardware"]["law"] is None and "--baseline no_such_group" in missing["hardware"]["reason"]


def embedded(page: Path) -> dict:
    text = page.read_text()
    start = text.index('<script type="application/json" id="leaderboard-data">') + len(
        '<script type="application/json" id="leaderboard-data">'
    )
    return json.loads(text[start : text.index("</script>", start)].replace("<\\/", "</"))


def test_page_of_our_own_sweep_opens_on_the_view_asked_for(tmp_path: Path) -> None:
    depth_sweep(tmp_path / "results")
    page = tmp_path / "board.html"
    assert (
        speedrun(
            [
                "leaderboard",
                str(tmp_path / "results"),
                "--view",
                "scaling",
                "--forecast-flops",
                "1e19",
                "--html",
                str(page),
            ]
        )
        == 0
    )
    data = embedded(page)
    assert data["view"] == "scaling" and data["scaling"]["xStar"] == 1e19
    groups = {g["name"]: g for g in data["scaling"]["groups"]}
    assert set(groups) == {"sweep", "wide"} and groups["sweep"]["rankable"] and not groups["wide"]["rankable"]
    assert 1e19 in [b["flops"] for b in groups["sweep"]["band"]] and "too few runs" in groups["wide"]["notes"]
    assert 'id="tab-scaling" data-view="scaling"\n aria-selected="true"' in page.read_text()
    assert (
        speedrun(
            [
                "leaderboard",
                str(tmp_path / "results"),
                "--view",
                "runs",
                "--relative",
                "--baseline",
                "sweep",
                "--html",
                str(page),
            ]
        )
        == 0
    )
    data = embedded(page)
    assert data["view"] == "runs" and data["relative"] is True and data["baseline"]["hardware"]["law"] is not None
    assert sum(r["hardwareRelative"] is not None for r in data["runs"]) == 7
    assert speedrun(["leaderboard", str(SITE_RUNS), "--fit", "marin", "--html", str(page)]) == 0
    marin = embedded(page)["scaling"]["groups"]
    assert sum(g["rankable"] for g in marin) == 17 and all(g["band"] == [] for g in marin)  # the site's: no interval


# ---- the page in headless Chromium ----------------------------------------------------------

ROWS = (
    "Array.from(document.querySelectorAll('#scaling-table tbody tr'))"
    ".map(r => Array.from(r.cells).map(c => c.textContent))"
)


def set_forecast(browser: Browser, text: str) -> None:
    browser.click("#forecast-flops")
    browser.evaluate(
        f"(() => {{ const i = document.getElementById('forecast-flops'); i.value = {json.dumps(text)};"
        " i.dispatchEvent(new Event('change')); })()"
    )


def test_page_scaling_view_in_headless_chromium(tmp_path: Path) -> None:
    """Marin's 96 runs: switch to Scaling, read the leader's forecast, forecast elsewhere, switch back."""
    from tests.support.cdp import Browser, find_chromium

    if find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium): the page was not opened")
    page = tmp_path / "board.html"
    assert speedrun(["leaderboard", str(SITE_RUNS), "--html", str(page)]) == 0
    runs = marin_runs()
    groups = scaling_view(runs, "hardware").groups
    with Browser.open(page.as_uri(), tmp_path / "profile") as browser:
        browser.wait_for("document.querySelectorAll('#chart circle.run').length")
        assert browser.evaluate("document.getElementById('view-scaling').hidden") is True
        browser.click("#tab-scaling")
        assert browser.evaluate("document.getElementById('view-runs').hidden") is True
        assert browser.evaluate("document.getElementById('view-scaling').hidden") is False
        rows = browser.evaluate(ROWS)
        leader = groups[0]
        assert leader.interval is not None
        assert rows[0][:2] == ["1", leader.name] and rows[0][4] == f"{leader.forecast:.4f}"
        assert rows[0][5] == f"{leader.interval[0]:.3f}-{leader.interval[1]:.3f}"
        assert [r[1] for r in rows] == [g.name for g in groups]
        assert browser.evaluate("document.querySelectorAll('#scaling-chart g.group').length") == len(groups)

        set_forecast(browser, "1e20")  # a grid point: the interval computed there, not interpolated
        assert browser.evaluate("document.getElementById('forecast-head').textContent") == "BPB at 1e20"
        rows = browser.evaluate(ROWS)
        fitted = sorted((g for g in groups if g.law is not None), key=lambda g: (g.law.predict(1e20), g.name))
        assert [r[1] for r in rows[: len(fitted)]] == [g.name for g in fitted]
        assert [r[1] for r in rows] != [g.name for g in groups]  # re-ranked
        for row, group in zip(rows, fitted, strict=False):
            assert row[4] == f"{group.law.predict(1e20):.4f}", group.name
            if group.interval is not None:
                xs, ys = [p.x for p in group.points], [p.bpb for p in group.points]
                low, high = forecast_interval(xs, ys, group.law, 1e20, 0.95)
                assert row[5] == f"{low:.3f}-{'∞' if math.isinf(high) else format(high, '.3f')}", group.name
        set_forecast(browser, "3e20")  # between grid points: interpolated, and marked so
        assert all(r[5].startswith("≈") for r in browser.evaluate(ROWS) if r[5] != "-")
        set_forecast(browser, "lots")
        assert "forecast FLOPs: a positive number" in browser.evaluate(
            "document.getElementById('forecast-error').textContent"
        )
        assert browser.evaluate("document.getElementById('forecast-head').textContent") == "BPB at 3e20"

        browser.click("#tab-runs")
        assert browser.evaluate("document.getElementById('view-runs').hidden") is False
        cy = "Array.from(document.querySelectorAll('#chart circle.run')).map(c => +c.getAttribute('cy'))"
        before = browser.evaluate(cy)
        browser.click("#relative")
        label = "Array.from(document.querySelectorAll('#chart .label')).map(t => t.textContent).join(' | ')"
        assert "vs the adamw_llama_scaling law, %" in browser.evaluate(label)
        assert browser.evaluate(cy) != before and len(browser.evaluate(cy)) == len(before)
        browser.click("input[name=x-axis][value=model]")  # the relative view on model FLOPs
        assert browser.evaluate(label).startswith("model FLOPs")
        assert "a=" in browser.evaluate("document.getElementById('relative-note').textContent")
