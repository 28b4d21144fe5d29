"""Ranking leaderboard runs into tracks, and laying the tracks out as tables.

Tracks:
- `marin`: every run with a C4-EN BPB and hardware FLOPs. Ranked by BPB (ties: fewer FLOPs,
  then shorter training); `pareto` marks the frontier of (hardware FLOPs, BPB), the runs no
  other run beats on both. BPB bands (width --band-width) rank the runs of similar quality by
  hardware FLOPs: the cheapest way to reach each level.
- `time-to-<metric>:<value>` (val_loss, val_bpb, core): runs with that target; those that reached
  it ranked by time_to_target (ties: shorter total training), the others listed unranked.
"""

from __future__ import annotations

import math
from typing import Any

from speedrun_trainer.leaderboard.runs import (
    BPB_KEY,
    DEFAULT_BAND_WIDTH,
    HIGHER_IS_BETTER,
    MARIN_TRACK,
    Run,
    Table,
    as_number,
)

# ---- ranking --------------------------------------------------------------------------------


def _inf(x: float | None) -> float:
    return math.inf if x is None else x


def dominates(a: Run, b: Run) -> bool:
    """a is no worse than b on FLOPs and BPB, and better on one."""
    assert a.hardware_flops is not None and a.bpb is not None and b.hardware_flops is not None and b.bpb is not None
    return (a.hardware_flops <= b.hardware_flops and a.bpb <= b.bpb
            and (a.hardware_flops < b.hardware_flops or a.bpb < b.bpb))


def band_of(bpb: float, width: float) -> str:
    """The half-open band [low, low + width) holding `bpb`, e.g. "1.1-1.2"."""
    index = math.floor(bpb / width + 1e-9)  # 0.9 / 0.1 is 8.999...: it belongs to 0.9-1.0
    decimals = len(f"{width:g}".partition(".")[2])
    return f"{index * width:.{decimals}f}-{(index + 1) * width:.{decimals}f}"


def track_name(metric: str, value: float) -> str:
    return f"time-to-{metric}:{value:g}"


def _closest(run: Run, metric: str) -> tuple[float, str]:
    """Runs that missed their target: the closest final value first."""
    final = run.value(metric)
    if final is None:
        return math.inf, run.name
    return (-final if metric in HIGHER_IS_BETTER else final), run.name


def rank_runs(runs: list[Run], band_width: float = DEFAULT_BAND_WIDTH) -> dict[str, list[Run]]:
    """Fill each run's ranks, pareto and band; returns the runs of each track in table order."""
    marin = [r for r in runs if r.bpb is not None and r.hardware_flops]
    marin.sort(key=lambda r: (r.bpb, r.hardware_flops, _inf(r.training_time), r.name))
    tracks: dict[str, list[Run]] = {MARIN_TRACK: marin} if marin else {}
    for i, run in enumerate(marin, 1):
        run.ranks[MARIN_TRACK] = i
        run.pareto = not any(dominates(other, run) for other in marin)
        run.band = band_of(run.bpb, band_width)  # type: ignore[arg-type]
    for metric, value in sorted({r.target for r in runs if r.target}):
        name = track_name(metric, value)
        entrants = [r for r in runs if r.target == (metric, value)]
        reached = sorted((r for r in entrants if r.time_to_target is not None),
                         key=lambda r: (r.time_to_target, _inf(r.training_time), r.name))
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


def build_tables(tracks: dict[str, list[Run]], band_width: float = DEFAULT_BAND_WIDTH) -> list[Table]:
    tables = []
    marin = tracks.get(MARIN_TRACK, [])
    if marin:
        tables.append(Table(
            "marin: C4-EN bits per byte vs training hardware FLOPs",
            "ranked by BPB (ties: fewer FLOPs, then shorter training); * = on the Pareto frontier",
            ["rank", "pareto", "run", "author", "BPB", "hardware FLOPs", "model FLOPs", "MFU", "time"],
            [[str(r.ranks[MARIN_TRACK]), "*" if r.pareto else "", r.name, r.author, _fmt(r.bpb, ".4f"),
              _fmt(r.hardware_flops, ".3e"), _fmt(as_number(r.info.get("model_flops")), ".3e"),
              _fmt(mfu(r), ".1%"), human_time(r.training_time)] for r in marin],
            [True, False, False, False, True, True, True, True, True], [r.pareto for r in marin],
        ))
        rows, flags = [], []
        for band in dict.fromkeys(r.band for r in marin):  # from the best quality down
            members = sorted((r for r in marin if r.band == band),
                             key=lambda r: (r.hardware_flops, _inf(r.training_time), r.name))
            for i, r in enumerate(members, 1):
                rows.append([band if i == 1 else "", str(i), r.name, _fmt(r.bpb, ".4f"),
                             _fmt(r.hardware_flops, ".3e"), human_time(r.training_time)])
                flags.append(i == 1)
        tables.append(Table(
            f"marin: BPB bands of {band_width:g}", "within a band, fewest hardware FLOPs first (ties: time)",
            ["BPB band", "rank", "run", "BPB", "hardware FLOPs", "time"], rows,
            [False, True, False, True, True, True], flags,
        ))
    for name, entrants in tracks.items():
        if name == MARIN_TRACK:
            continue
        metric, value = name[len("time-to-"):].split(":")
        better = ">=" if metric in HIGHER_IS_BETTER else "<="
        tables.append(Table(
            f"{name}: training time until {metric} {better} {value}",
            "ranked by time to target among runs that reached it (ties: shorter total training)",
            ["rank", "run", "author", "time to target", f"final {metric}", "training time", "hardware FLOPs"],
            [[str(r.ranks[name] or "-"), r.name, r.author,
              human_time(r.time_to_target) if r.time_to_target is not None else "not reached",
              _fmt(r.value(metric), ".4f"), human_time(r.training_time), _fmt(r.hardware_flops, ".3e")]
             for r in entrants],
            [True, False, False, True, True, True, True], [r.ranks[name] == 1 for r in entrants],
        ))
    return tables


def format_table(table: Table) -> str:
    widths = [max(len(c) for c in col) for col in zip(table.headers, *table.rows, strict=True)]

    def line(cells: list[str]) -> str:
        pairs = zip(cells, widths, table.numeric, strict=True)
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in pairs).rstrip()

    return "\n".join([f"== {table.title}", f"   {table.note}", line(table.headers),
                      line(["-" * w for w in widths]), *(line(r) for r in table.rows)])


def runs_json(runs: list[Run]) -> list[dict[str, Any]]:
    """The ranked runs: marin order first, then the rest by name; each with tracks and pareto."""
    ordered = sorted(runs, key=lambda r: (r.ranks.get(MARIN_TRACK) or math.inf, r.name))
    return [{
        "name": r.name, "source": r.source, "author": r.info.get("author"),
        "description": r.info.get("description"), BPB_KEY: r.bpb, "training_hardware_flops": r.hardware_flops,
        "model_flops": as_number(r.info.get("model_flops")), "training_time": r.training_time,
        "core_metric": r.value("core"), "val_loss": r.value("val_loss"), "time_to_target": r.time_to_target,
        "target": None if r.target is None else {"metric": r.target[0], "value": r.target[1]},
        "tracks": r.tracks, "ranks": r.ranks, "pareto": r.pareto, "bpb_band": r.band,
    } for r in ordered]
