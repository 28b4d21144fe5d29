"""Runs for the scaling views' tests: Marin's published runs, synthetic groups on a known power law,
and our own results files written as a sweep would leave them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from speedrun_trainer.leaderboard.marin_fit import PowerLaw
from speedrun_trainer.leaderboard.runs import MARIN_RUNS
from speedrun_trainer.leaderboard.scaling import Point

SITE_RUNS = MARIN_RUNS  # Marin's data/runs.json, shipped with the package (`--demo`)

TRUE_LAW = PowerLaw(400.0, 0.155, 0.68)
SIZES = np.geomspace(3e17, 3e20, 6)


def synthetic(seed: int, sigma: float, sizes: np.ndarray = SIZES) -> list[Point]:
    rng = np.random.default_rng(seed)
    return [
        Point(f"syn/{i}", float(x), TRUE_LAW.predict(float(x)) + float(rng.normal(0.0, sigma)))
        for i, x in enumerate(sizes)
    ]


def write_results(
    root: Path, folder: str, name: str, flops: float, bpb: float, bpb_key: str = "eval/paloma/c4_en/bpb"
) -> None:
    info = {
        "name": name,
        "author": {"name": "me"},
        bpb_key: bpb,
        "training_time": 100.0,
        "training_hardware_flops": flops,
        "model_flops": flops / 2,
        "device_flops": 1e11,
        "num_devices": 1,
    }
    target = root / folder / "speedrun_results.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps({"runs": [{"run_info": info}]}))


def depth_sweep(root: Path) -> None:
    """Our own results: a depth sweep (5 sizes) and a width sweep with only 2 runs so far."""
    law = PowerLaw(50.0, 0.12, 0.9)
    wiggle = [0.002, -0.003, 0.001, 0.002, -0.002]
    for i, depth in enumerate((4, 6, 8, 10, 12)):
        flops = 1e15 * depth**3
        write_results(root, f"sweep/d{depth}", f"sweep-d{depth}", flops, law.predict(flops) + wiggle[i])
    for width in (128, 256):
        write_results(root, f"wide/w{width}", f"wide-w{width}", 1e15 * width, 1.9)
