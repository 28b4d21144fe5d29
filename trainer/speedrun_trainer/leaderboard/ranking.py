"""Ranking leaderboard runs into tracks, and laying the tracks out as tables.

Tracks (numbers of different datasets, definitions or tokenizers are never ranked together):
- `marin`: every run with levanter's BPB on Paloma C4-EN (Marin's `eval/paloma/c4_en/bpb`) and
  FLOPs. Ranked by BPB (ties: fewer FLOPs, then shorter training); `pareto` marks the frontier of
  (FLOPs, BPB), the runs no other run beats on both, on the chosen axis: training hardware FLOPs
  (default) or model FLOPs (Marin's site offers both). BPB bands (width --band-width) rank the
  runs of similar quality by FLOPs: the cheapest way to reach each level.
- `bpb:<dataset> [<definition>]`: the same for BPBs measured on any other data, or by another
  definition (nanochat's), one track each. BPB is per byte, so one track may mix tokenizers.
- `time-to-<metric>:<value>` (val_loss, val_bpb, core), followed by ` @ <context>` when the
  results record what the number means (dataset, definition, and for val_loss the tokenizer and
  token count; a CORE cap; a clock other than nanochat's, `clock_rule`): runs with that target;
  those that reached it ranked by time_to_target (ties: shorter total training), the others
  listed unranked.
"""

from __future__ import annotations

import math
from typing import Any

from speedrun_api.metric_definitions import LEVANTER_BPB, PALOMA_C4_EN
from speedrun_trainer.leaderboard.runs import (
    BPB_KEY,
    DEFAULT_BAND_WIDTH,
    HIGHER_IS_BETTER,
    MARIN_TRACK,
    Run,
    Table,
    as_number,
)

# the results field each FLOPs axis reads (hardware FLOPs are derived when absent: runs.run_from_info)
FLOPS_FIELD = {"hardware": "training_hardware_flops", "model": "model_flops"}

# ---- ranking --------------------------------------------------------------------------------


def _inf(x: float | None) -> float:
    return math.inf if x is None else x


def dominates(a: Run, b: Run, axis: str = "hardware") -> bool:
    """a is no worse than b on FLOPs (of `axis`) and BPB, and better on one."""
    fa, fb = a.flops(axis), b.flops(axis)
    assert fa is not None and a.bpb is not None and fb is not None and b.bpb is not None
    return fa <= fb and a.bpb <= b.bpb and (fa < fb or a.bpb < b.bpb)


def bpb_track_name(group: tuple[str, str]) -> str:
    dataset, definition = group
    return MARIN_TRACK if group == (PALOMA_C4_EN, LEVANTER_BPB) else f"bpb:{dataset} [{definition}]"


def is_bpb_track(name: str) -> bool:
    return name == MARIN_TRACK or name.startswith("bpb:")


def band_of(bpb: float, width: float) -> str:
    """The half-open band [low, low + width) holding `bpb`, e.g. "1.1-1.2"."""
    index = math.floor(bpb / width + 1e-9)  # 0.9 / 0.1 is 8.999...: it belongs to 0.9-1.0
    decimals = len(f"{width:g}".partition(".")[2])
    return f"{index * width:.{decimals}f}-{(index + 1) * width:.{decimals}f}"


def track_name(metric: str, value: float, context: str = "") -> str:
    return f"time-to-{metric}:{value:g}" + (f" @ {context}" if context else "")


def _closest(run: Run, metric: str) -> tuple[float, str]:
    """Runs that missed their target: the closest final value first."""
    final = run.value(metric)
    if final is None:
        return math.inf, run.name
    return (-final if metric in HIGHER_IS_BETTER else final), run.name


def left_out(runs: list[Run], axis: str = "hardware") -> dict[str, int]:
    """Per BPB track, how many runs with a BPB have no FLOPs on `axis` and so are not ranked
    (files without `model_flops` under --flops model, Marin's among them when old)."""
    counts: dict[str, int] = {}
    for r in runs:
        if r.bpb_group is not None and not r.flops(axis):
            name = bpb_track_name(r.bpb_group)
            counts[name] = counts.get(name, 0) + 1
    return counts


def rank_runs(runs: list[Run], band_width: float = DEFAULT_BAND_WIDTH, axis: str = "hardware") -> dict[str, list[Run]]:
    """Fill each run's ranks, pareto and band; returns the runs of each track in table order."""
    tracks: dict[str, list[Run]] = {}
    groups = sorted(
        {g for r in runs if (g := r.bpb_group) is not None}, key=lambda g: (bpb_track_name(g) != MARIN_TRACK, g)
    )
    for group in groups:
        name = bpb_track_name(group)
        board = [r for r in runs if r.bpb_group == group and r.flops(axis)]
        board.sort(key=lambda r: (r.bpb, r.flops(axis), _inf(r.training_time), r.name))
        if board:
            tracks[name] = board
        for i, run in enumerate(board, 1):
            run.ranks[name] = i
            run.pareto = not any(dominates(other, run, axis) for other in board)
            run.band = band_of(run.bpb, band_width)  # type: ignore[arg-type]
    for metric, value, context in sorted({(*r.target, r.target_context) for r in runs if r.target}):
        name = track_name(metric, value, context)
        entrants = [r for r in runs if r.target == (metric, value) and r.target_context == context]
        reached = sorted(
            (r for r in entrants if r.time_to_target is not None),
            key=lambda r: (r.time_to_target, _inf(r.training_time), r.name),
        )
        missed = sorted((r for r in entrants if r.time_to_target is None), key=lambda r: _closest(r, metric))
        for i, run in enumerate(reached, 1):
            run.ranks[name] = i
        for run in missed:
            run.ranks[name] = None
        tracks[name] = reached + missed
    return tracks


# ---- output ---------------------------------------------------------------------------------


def human_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if round(seconds) < 3600:
        minutes, secs = divmod(round(seconds), 60)
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours}h{minutes:02d}m"


def mfu(run: Run) -> float | None:
    """Model FLOPs utilization: as recorded, else model FLOPs / hardware FLOPs (Marin's files)."""
    recorded, model_flops = as_number(run.info.get("mfu")), as_number(run.info.get("model_flops"))
    if recorded is None and model_flops is not None and run.hardware_flops:
        return model_flops / run.hardware_flops
    return recorded


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _bpb_tables(
    name: str, board: list[Run], band_width: float, axis: str, others: int, missing: int = 0
) -> list[Table]:
    what = "C4-EN bits per byte" if name == MARIN_TRACK else name[len("bpb:") :] + " bits per byte"
    apart = f"; {others} other BPB track(s) (other data or definitions) are ranked apart" if others else ""
    if missing:
        apart += f"; {missing} run(s) left out: no {FLOPS_FIELD[axis]} recorded"
    tables = [
        Table(
            f"{name}: {what} vs training {axis} FLOPs",
            f"ranked by BPB (ties: fewer {axis} FLOPs, then shorter training); * = on the Pareto frontier{apart}",
            ["rank", "pareto", "run", "author", "BPB", "hardware FLOPs", "model FLOPs", "MFU", "time"],
            [
                [
                    str(r.ranks[name]),
                    "*" if r.pareto else "",
                    r.name,
                    r.author,
                    _fmt(r.bpb, ".4f"),
                    _fmt(r.hardware_flops, ".3e"),
                    _fmt(as_number(r.info.get("model_flops")), ".3e"),
                    _fmt(mfu(r), ".1%"),
                    human_time(r.training_time),
                ]
                for r in board
            ],
            [True, False, False, False, True, True, True, True, True],
            [r.pareto for r in board],
            ["", "", "", "drop", "", "", "drop", "drop", ""],
        )
    ]
    rows, flags = [], []
    for band in dict.fromkeys(r.band for r in board):  # from the best quality down
        members = sorted(
            (r for r in board if r.band == band), key=lambda r: (r.flops(axis), _inf(r.training_time), r.name)
        )
        for i, r in enumerate(members, 1):
            rows.append(
                [
                    band if i == 1 else "",
                    str(i),
                    r.name,
                    _fmt(r.bpb, ".4f"),
                    _fmt(r.flops(axis), ".3e"),
                    human_time(r.training_time),
                ]
            )
            flags.append(i == 1)
    tables.append(
        Table(
            f"{name}: BPB bands of {band_width:g}",
            f"within a band, fewest {axis} FLOPs first (ties: time)",
            ["BPB band", "rank", "run", "BPB", f"{axis} FLOPs", "time"],
            rows,
            [False, True, False, True, True, True],
            flags,
        )
    )
    return tables


def build_tables(
    tracks: dict[str, list[Run]],
    band_width: float = DEFAULT_BAND_WIDTH,
    axis: str = "hardware",
    missing: dict[str, int] | None = None,
) -> list[Table]:
    """The tables of every track; `missing` (from `left_out`) counts the runs each BPB track lost."""
    tables = []
    bpb_tracks = [n for n in tracks if is_bpb_track(n)]
    for name in bpb_tracks:
        lost = (missing or {}).get(name, 0)
        tables.extend(_bpb_tables(name, tracks[name], band_width, axis, len(bpb_tracks) - 1, lost))
    for name, entrants in tracks.items():
        if is_bpb_track(name):
            continue
        metric, _, rest = name[len("time-to-") :].partition(":")
        value, _, context = rest.partition(" @ ")
        better = ">=" if metric in HIGHER_IS_BETTER else "<="
        on = f" ({context})" if context else ""
        tables.append(
            Table(
                f"{name.partition(' @ ')[0]}: training time until {metric} {better} {value}{on}",
                "ranked by time to target among runs that reached it (ties: shorter total training)",
                ["rank", "run", "author", "time to target", f"final {metric}", "training time", "hardware FLOPs"],
                [
                    [
                        str(r.ranks[name] or "-"),
                        r.name,
                        r.author,
                        human_time(r.time_to_target) if r.time_to_target is not None else "not reached",
                        _fmt(r.value(metric), ".4f"),
                        human_time(r.training_time),
                        _fmt(r.hardware_flops, ".3e"),
                    ]
                    for r in entrants
                ],
                [True, False, False, True, True, True, True],
                [r.ranks[name] == 1 for r in entrants],
                ["", "", "drop", "", "", "", ""],
            )
        )
    return tables


def runs_json(runs: list[Run]) -> list[dict[str, Any]]:
    """The ranked runs: marin order first, then the rest by name; each with tracks and pareto."""
    ordered = sorted(runs, key=lambda r: (r.ranks.get(MARIN_TRACK) or math.inf, r.name))
    return [
        {
            "name": r.name,
            "source": r.source,
            "author": r.info.get("author"),
            "description": r.info.get("description"),
            "bpb": r.bpb,
            "bpb_dataset": r.dataset,
            "bpb_definition": r.bpb_definition,
            BPB_KEY: r.bpb if r.bpb_group == (PALOMA_C4_EN, LEVANTER_BPB) else None,
            "training_hardware_flops": r.hardware_flops,
            "model_flops": as_number(r.info.get("model_flops")),
            "training_time": r.training_time,
            "core_metric": r.value("core"),
            "val_loss": r.value("val_loss"),
            "time_to_target": r.time_to_target,
            "target": None if r.target is None else {"metric": r.target[0], "value": r.target[1]},
            "tracks": r.tracks,
            "ranks": r.ranks,
            "pareto": r.pareto,
            "bpb_band": r.band,
        }
        for r in ordered
    ]
