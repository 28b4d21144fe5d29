"""Tests of the scaling views: Marin's site numbers reproduced, converged fits, intervals, the CLI.

    pytest tests/unit/leaderboard/test_scaling.py

How the site's numbers below were obtained (2026-11-30, outside this repository, nothing of it
committed): the public repository marin-community/speedrun at commit 8c942e9 (the commit that
trainer/speedrun_trainer/leaderboard/marin_speedrun/runs.json was taken from) was fetched; its
website/src/utils/regression.ts was transpiled as is with esbuild 0.24.0 to an ES module, and a
scratch Node.js 20 script imported it with the npm package ml-levenberg-marquardt 5.0.0 (the
version website/package-lock.json pins; ml-matrix 6.12.1) and replayed what
website/src/hooks/useSpeedrunData.ts does on that runs.json: runs whose name has a `/` grouped by
utils/scaling.ts `getScalingGroupName`, each group's (x, BPB) points with x > 0 and BPB > 0 passed
to `computePowerLawWithOffset`, the forecast `predictWithPowerLaw(fit, 1e22)`; the baseline fitted
to the runs whose lower-cased name contains "adamw_llama_scaling"; the relative view's percentages
by `buildBaselineModel(...).predict` and `getRelativePercent`. Once with x = training_hardware_flops,
once with x = model_flops (the site's default axis). Figures printed with 10 significant digits.
A hand-port of the same calls gave identical numbers.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from speedrun_trainer.cli.speedrun import main as speedrun
from speedrun_trainer.leaderboard.marin_fit import PowerLaw, fit_marin
from speedrun_trainer.leaderboard.runs import load_site_runs
from speedrun_trainer.leaderboard.scaling import Point, fit_converged, fit_group, fit_groups, sse
from speedrun_trainer.leaderboard.scaling_views import groups_of, runs_view
from tests.support.scaling_runs import SITE_RUNS, SIZES, TRUE_LAW, depth_sweep, synthetic, write_results

SITE_FORECASTS = {  # BPB at 1e22 FLOPs, per group, as the site computes it
    "hardware": {
        "adamc_llama_scaling": 0.8279683948,
        "adamh_llama_scaling": 0.8227314013,
        "adamw_llama_scaling": 0.8316006072,
        "c-adamc_llama_scaling": 0.8240254695,
        "cautious_llama_scaling": 0.8249328039,
        "hackable_transformer_starter/attnsink/jax": 0.8368103063,
        "hackable_transformer_starter/attnsink/splash": 0.8357732233,
        "hackable_transformer_starter/attnsink/splash/default_lr": 0.8357732233,
        "hackable_transformer_starter/attnsink/splash/default_x0.25": 0.8604173122,
        "hackable_transformer_starter/attnsink/splash/default_x0.5": 0.8450216154,
        "hackable_transformer_starter/attnsink/splash/default_x2": 0.8329102835,
        "hackable_transformer_starter/attnsink/splash/default_x4": 0.840828928,
        "hackable_transformer_starter/std_attn": 0.8336077077,
        "muon_llama_scaling": 0.8294122217,
        "muon_qwen3_scaling": 0.8297111935,
        "muonh_qwen3_scaling": 0.8259176214,
        "parallel_llama": 0.8355510613,
        "parallel_llama/old_scaling/gpu": 0.8747026649,
        "parallel_llama/old_scaling/tpu": 0.8418016457,
    },
    "model": {
        "adamc_llama_scaling": 0.8351227572,
        "adamh_llama_scaling": 0.8275526964,
        "adamw_llama_scaling": 0.8409630258,
        "c-adamc_llama_scaling": 0.8291011178,
        "cautious_llama_scaling": 0.8295228166,
        "hackable_transformer_starter/attnsink/jax": 0.8374153951,
        "hackable_transformer_starter/attnsink/splash": 0.837209832,
        "hackable_transformer_starter/attnsink/splash/default_lr": 0.837209832,
        "hackable_transformer_starter/attnsink/splash/default_x0.25": 0.8643325449,
        "hackable_transformer_starter/attnsink/splash/default_x0.5": 0.8476928319,
        "hackable_transformer_starter/attnsink/splash/default_x2": 0.8302841567,
        "hackable_transformer_starter/attnsink/splash/default_x4": 0.8331304163,
        "hackable_transformer_starter/std_attn": 0.8353732137,
        "muon_llama_scaling": 0.8360635088,
        "muon_qwen3_scaling": 0.8360837984,
        "muonh_qwen3_scaling": 0.8224811607,
        "parallel_llama": 0.8388188766,
        "parallel_llama/old_scaling/gpu": 0.8067362613,
        "parallel_llama/old_scaling/tpu": 0.780526876,
    },
}
SITE_BASELINE = {  # adamw_llama_scaling: a (intercept), b (the site shows slope = -b), c (asymptote), R²
    "hardware": (524.2486659, 0.1586216958, 0.6618309679, 0.9995933404),
    "model": (355.2002321, 0.1582783688, 0.7239190331, 0.9983435746),
}
SITE_RELATIVE_PERCENT = {  # the relative view: BPB / baseline - 1, in percent
    "hardware": {
        "adamh_llama_scaling/1_2b": -1.217586825,
        "muonh_qwen3_scaling/1_2b": -0.916972919,
        "hackable_transformer_starter/attnsink/splash/default_x2/1_2b": -0.1207475693,
        "llama_75m": 7.736639095,
        "adamw_llama_scaling/300m": 0.0,
    },
    "model": {
        "adamh_llama_scaling/1_2b": -1.22880856,
        "muonh_qwen3_scaling/1_2b": -1.790963542,
        "hackable_transformer_starter/attnsink/splash/default_x2/1_2b": -0.7412456512,
        "llama_75m": 3.089337471,
        "adamw_llama_scaling/300m": 0.0,
    },
}
TOLERANCE = 1e-3


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = speedrun(["leaderboard", *args])
    out, err = capsys.readouterr()
    return code, out, err


# ---- Marin's numbers ------------------------------------------------------------------------


@pytest.mark.parametrize("axis", ["hardware", "model"])
def test_marin_mode_reproduces_the_sites_forecasts_and_baseline(axis: str) -> None:
    runs = load_site_runs(str(SITE_RUNS))
    points, _ = groups_of(runs, axis)
    assert set(points) == set(SITE_FORECASTS[axis])
    for group in fit_groups(points, fit="marin"):
        assert group.forecast == pytest.approx(SITE_FORECASTS[axis][group.name], abs=TOLERANCE), group.name
    baseline = points["adamw_llama_scaling"]
    law = fit_marin([p.x for p in baseline], [p.bpb for p in baseline])
    assert law is not None
    a, b, c, r2 = SITE_BASELINE[axis]
    assert (law.a, law.b, law.c) == pytest.approx((a, b, c), abs=TOLERANCE)
    assert fit_group("adamw_llama_scaling", baseline, "marin").r2 == pytest.approx(r2, abs=TOLERANCE)
    view = runs_view(runs, axis, relative=True, fit="marin")
    relative = {r["name"]: r["relative_percent"] for r in view["runs"]}
    for name, percent in SITE_RELATIVE_PERCENT[axis].items():
        assert relative[name] == pytest.approx(percent, abs=TOLERANCE), name


def test_converged_fit_beats_the_sites_fit_on_adamh() -> None:
    points, _ = groups_of(load_site_runs(str(SITE_RUNS)), "hardware")
    marin = fit_group("adamh_llama_scaling", points["adamh_llama_scaling"], "marin")
    converged = fit_group("adamh_llama_scaling", points["adamh_llama_scaling"], "converged")
    assert marin.sse is not None and converged.sse is not None
    assert converged.sse < marin.sse / 4  # about 5x lower squared error
    assert converged.r2 is not None and marin.r2 is not None and converged.r2 > marin.r2
    assert converged.forecast is not None and marin.forecast is not None
    assert marin.forecast - converged.forecast > 0.05  # the forecast moves by about 0.06 BPB
    lo, hi = converged.interval or (math.nan, math.nan)
    assert lo < converged.forecast < hi and lo < marin.forecast < hi  # ... within its wide interval
    for name, group in points.items():  # converged is never worse than the site's fit
        xs, ys = [p.x for p in group], [p.bpb for p in group]
        site = fit_marin(xs, ys)
        assert site is not None
        assert sse(fit_converged(xs, ys), xs, ys) <= sse(site, xs, ys) * (1 + 1e-9), name


# ---- intervals and flags on synthetic groups ------------------------------------------------


def test_intervals_cover_the_true_forecast_on_synthetic_groups() -> None:
    truth = TRUE_LAW.predict(1e22)
    seeds = range(30)
    groups = [fit_group("syn", synthetic(seed, sigma=0.004)) for seed in seeds]
    intervals = [g.interval for g in groups]
    assert all(i is not None for i in intervals)
    covered = sum(lo <= truth <= hi for lo, hi in intervals)  # type: ignore[misc]
    assert covered >= 0.85 * len(seeds)  # nominal 95%; 29 of these 30 fixed seeds
    assert all(lo < g.forecast < hi for g, (lo, hi) in zip(groups, intervals, strict=True))  # type: ignore[misc]
    widths = [hi - lo for lo, hi in intervals]  # type: ignore[misc]
    assert float(np.median(widths)) < 0.1  # informative, not [0, inf)
    quiet = [fit_group("syn", synthetic(seed, sigma=0.001)).interval for seed in range(5)]
    quiet_widths = [hi - lo for lo, hi in quiet]  # type: ignore[misc]
    assert float(np.median(quiet_widths)) < float(np.median(widths)) / 2  # less noise, narrower
    narrow = fit_group("syn", synthetic(0, sigma=0.004), confidence=0.5).interval
    assert narrow is not None and narrow[1] - narrow[0] < widths[0]


def test_converged_fit_recovers_known_parameters_without_noise() -> None:
    group = fit_group("syn", synthetic(0, sigma=0.0))
    assert group.law is not None and group.sse is not None
    assert group.sse < 1e-20
    assert (group.law.a, group.law.b, group.law.c) == pytest.approx((400.0, 0.155, 0.68), rel=1e-4)


def test_too_few_runs_are_flagged() -> None:
    two = fit_group("g", synthetic(1, 0.004, SIZES[:2]))
    assert two.law is None and two.forecast is None and "too few runs: 2" in (two.flag or "")
    three = fit_group("g", synthetic(1, 0.004, SIZES[:3]))
    assert three.law is not None and three.interval is None and "3 distinct FLOPs" in (three.flag or "")
    repeated = fit_group("g", synthetic(1, 0.004, np.array([SIZES[0]] * 3 + [SIZES[1]])))  # 4 runs, 2 sizes
    assert repeated.law is None and "2 distinct FLOPs" in (repeated.flag or "")
    four = fit_group("g", synthetic(1, 0.004, SIZES[:4]))
    assert four.flag is None and four.interval is not None
    ranked = fit_groups({"two": two.points, "four": four.points, "three": three.points})
    assert [g.name for g in ranked][-1] == "two" and ranked[-1].rank is None


def test_ranking_says_where_intervals_overlap() -> None:
    better = [Point(p.name, p.x, p.bpb - 0.1) for p in synthetic(2, 0.001)]
    ranked = fit_groups({"base": synthetic(3, 0.001), "close": synthetic(4, 0.001), "better": better})
    assert ranked[0].name == "better"
    by_name = {g.name: g for g in ranked}
    assert by_name["better"].overlaps == []
    assert by_name["base"].overlaps == ["close"] or by_name["base"].overlaps == []
    assert ("close" in by_name["base"].overlaps) == ("base" in by_name["close"].overlaps)


# ---- the command ----------------------------------------------------------------------------


def test_cli_scaling_view_on_our_own_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    depth_sweep(tmp_path)
    code, out, _ = run_cli(capsys, str(tmp_path), "--view", "scaling", "--json", "--forecast-flops", "1e19")
    assert code == 0
    view: dict[str, Any] = json.loads(out)
    assert view["forecast_flops"] == 1e19 and view["fit"] == "converged"
    groups = {g["name"]: g for g in view["groups"]}
    assert set(groups) == {"sweep", "wide"}
    sweep = groups["sweep"]
    assert sweep["rank"] == 1 and [r["name"] for r in sweep["runs"]] == [f"sweep/d{d}" for d in (4, 6, 8, 10, 12)]
    assert sweep["forecast"] == pytest.approx(PowerLaw(50.0, 0.12, 0.9).predict(1e19), abs=0.05)
    lo, hi = sweep["interval"]
    assert lo < sweep["forecast"] < hi
    assert groups["wide"]["rank"] is None and "too few runs" in groups["wide"]["flag"]
    code, out, _ = run_cli(
        capsys, str(tmp_path), "--view", "scaling", "--json", "--forecast-flops", "1e19", "--band-points", "5"
    )
    assert code == 0
    curve = json.loads(out)["groups"][0]["curve"]
    assert len(curve) == 5 and curve[0]["flops"] == pytest.approx(64e15) and curve[-1]["flops"] == pytest.approx(1e19)
    assert curve[-1]["bpb"] == pytest.approx(sweep["forecast"]) and [
        curve[-1]["low"],
        curve[-1]["high"],
    ] == pytest.approx([lo, hi], abs=1e-6)
    assert all(c["low"] < c["bpb"] < c["high"] for c in curve)
    assert curve[0]["high"] - curve[0]["low"] < hi - lo  # narrow at the data, wide at the forecast
    code, out, _ = run_cli(capsys, str(tmp_path), "--view", "scaling", "--x", "model")
    assert code == 0
    assert "x = model FLOPs" in out and "sweep" in out and "95% interval" in out and "too few runs" in out


def test_cli_runs_view_relative_to_a_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    depth_sweep(tmp_path)
    code, out, _ = run_cli(capsys, str(tmp_path), "--view", "runs", "--relative", "--baseline", "sweep", "--json")
    assert code == 0
    view = json.loads(out)
    rows = {r["name"]: r for r in view["runs"]}
    assert all(abs(rows[f"sweep-d{d}"]["relative_percent"]) < 0.5 for d in (4, 6, 8, 10, 12))
    assert rows["wide-w256"]["relative_percent"] > 0  # 1.9 BPB is worse than the sweep's law there
    assert [r["rank"] for r in view["runs"]] == list(range(1, 8))
    assert sum(r["pareto"] for r in view["runs"]) >= 1
    code, out, _ = run_cli(capsys, str(tmp_path), "--view", "runs")
    assert code == 0 and "all runs: BPB vs training hardware FLOPs" in out and "vs baseline" not in out


def test_cli_views_on_marins_site_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, str(SITE_RUNS), "--view", "scaling", "--fit", "marin", "--json")
    assert code == 0
    view = json.loads(out)
    ranked = [g for g in view["groups"] if g["rank"] is not None]
    assert ranked[0]["name"] == "adamh_llama_scaling"  # the site's first place on hardware FLOPs
    assert ranked[0]["forecast"] == pytest.approx(SITE_FORECASTS["hardware"]["adamh_llama_scaling"], abs=TOLERANCE)
    assert all(g["site_listed"] for g in ranked) and len(ranked) == 17  # old_scaling/* are not listed
    code, out, _ = run_cli(capsys, str(SITE_RUNS), "--view", "scaling")
    assert code == 0 and "profile likelihood" in out and "adamh_llama_scaling" in out and "Marin's" in out
    code, out, _ = run_cli(capsys, str(SITE_RUNS), "--view", "runs", "--x", "model", "--relative")
    assert code == 0 and "vs baseline" in out and "adamw_llama_scaling" in out
    code, out, _ = run_cli(capsys, str(SITE_RUNS))  # without --view: the usual tracks, from the site's file
    assert code == 0 and "== marin:" in out and "muonh_qwen3_scaling/1_2b" in out


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    depth_sweep(tmp_path)
    code, _, err = run_cli(capsys, str(tmp_path), "--view", "scaling", "--relative")
    assert code == 2 and err.strip().count("\n") == 0 and "--relative: only with --view runs" in err
    code, _, err = run_cli(capsys, str(tmp_path), "--view", "runs", "--relative")  # no adamw_llama_scaling here
    assert code == 2 and err.strip().count("\n") == 0 and "--baseline adamw_llama_scaling" in err
    (tmp_path / "flat" / "x").mkdir(parents=True)
    write_results(tmp_path / "flat", "only", "only", 1e18, 1.0)
    code, _, err = run_cli(capsys, str(tmp_path / "flat" / "only"), "--view", "scaling")
    assert code == 2 and "no run is named group/size" in err
    code, _, err = run_cli(capsys, str(tmp_path), "--view", "scaling", "--band-points", "4")
    assert code == 2 and "--band-points: only with --view scaling --json or --plot" in err
    png = tmp_path / "p.png"
    code, _, err = run_cli(capsys, str(tmp_path), "--view", "runs", "--band-points", "4", "--plot", str(png))
    assert code == 2 and "--band-points: only with --view scaling" in err and not png.exists()
    with pytest.raises(SystemExit) as exit_info:
        speedrun(["leaderboard", str(tmp_path), "--view", "scaling", "--forecast-flops", "-1"])
    assert exit_info.value.code == 2
    assert "--forecast-flops: must be a number from 1 to 1e+30, got -1" in capsys.readouterr().err


def test_without_scipy_marin_mode_works_and_converged_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    depth_sweep(tmp_path)
    monkeypatch.setitem(sys.modules, "scipy", None)  # `from scipy import ...` now raises ImportError
    code, _, err = run_cli(capsys, str(tmp_path), "--view", "scaling")
    assert code == 2 and err.strip().count("\n") == 0 and "speedrun-operator[train]" in err and "--fit marin" in err
    code, out, _ = run_cli(capsys, str(tmp_path), "--view", "scaling", "--fit", "marin", "--json")
    assert code == 0 and json.loads(out)["groups"][0]["name"] == "sweep"


def test_views_compare_one_bpb_at_a_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """BPBs of other data (issue 13's tracks) are never fitted or ranked with Paloma C4-EN's."""
    for depth in (4, 6, 8, 10):
        write_results(
            tmp_path, f"tiny/d{depth}", f"tiny-d{depth}", 1e12 * depth**3, 3.0 - 0.1 * depth, "eval/pydoc/bpb"
        )
    code, out, _ = run_cli(capsys, str(tmp_path), "--view", "scaling", "--json")  # only pydoc: that one
    assert code == 0 and json.loads(out)["bpb_track"] == "bpb:pydoc [levanter-bpb]"
    depth_sweep(tmp_path)
    code, out, _ = run_cli(capsys, str(tmp_path), "--view", "scaling", "--json")  # marin first
    view = json.loads(out)
    assert view["bpb_track"] == "marin" and {g["name"] for g in view["groups"]} == {"sweep", "wide"}
    code, out, _ = run_cli(capsys, str(tmp_path), "--view", "runs", "--bpb-track", "bpb:pydoc [levanter-bpb]")
    assert code == 0 and out.startswith("== bpb:pydoc [levanter-bpb]: all runs") and "sweep-d4" not in out
    code, _, err = run_cli(capsys, str(tmp_path), "--view", "runs", "--bpb-track", "bpb:nothing")
    assert code == 2 and "--bpb-track bpb:nothing: no run has that BPB (tracks here: bpb:pydoc" in err
