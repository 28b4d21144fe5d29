"""`speedrun leaderboard URI`: rank every speedrun_results.json under a file:// or s3:// prefix.

    speedrun leaderboard runs/                                  a table per track
    speedrun leaderboard s3://bucket/speedruns --plot board.png --html board.html
    speedrun leaderboard runs/ --json                           the ranked runs as JSON
    python -m speedrun_trainer.leaderboard URI [...]            the same without the CLI

Files in our shape and in Marin's (`{"runs": [{"run_info": ...}]}`, or one `{"run_info": ...}`,
without our additions) both load; a file that does not is skipped with one line on stderr.
Tracks:
- `marin`: every run with a C4-EN BPB and hardware FLOPs. Ranked by BPB (ties: fewer FLOPs,
  then shorter training); `pareto` marks the frontier of (hardware FLOPs, BPB), the runs no
  other run beats on both. BPB bands (width --band-width) rank the runs of similar quality by
  hardware FLOPs: the cheapest way to reach each level.
- `time-to-<metric>:<value>` (val_loss, val_bpb, core): runs with that target; those that reached
  it ranked by time_to_target (ties: shorter total training), the others listed unranked.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speedrun_trainer.storage import DataError, open_storage

RESULTS_NAME = "speedrun_results.json"
BPB_KEY = "eval/paloma/c4_en/bpb"
MARIN_TRACK = "marin"
DEFAULT_BAND_WIDTH = 0.1
HIGHER_IS_BETTER = {"core"}
EXIT_ERROR = 2


@dataclass
class Run:
    name: str
    source: str  # URI of the results file
    info: dict[str, Any] = field(repr=False)
    bpb: float | None = None
    hardware_flops: float | None = None
    training_time: float | None = None
    target: tuple[str, float] | None = None
    time_to_target: float | None = None
    pareto: bool = False
    band: str | None = None
    ranks: dict[str, int | None] = field(default_factory=dict)

    @property
    def author(self) -> str:
        author = self.info.get("author")
        return str(author.get("name", "")) if isinstance(author, dict) else str(author or "")

    @property
    def tracks(self) -> list[str]:
        return list(self.ranks)

    def value(self, metric: str) -> float | None:
        """The run's final value of a target metric."""
        key = {"val_loss": "val_loss", "val_bpb": BPB_KEY, "core": "core_metric"}.get(metric, metric)
        return _num(self.info.get(key))


@dataclass
class Table:
    title: str
    note: str
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]  # right-aligned columns
    highlight: list[bool] = field(default_factory=list)  # rows drawn out (the Pareto frontier)


# ---- loading --------------------------------------------------------------------------------


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _target(info: dict[str, Any]) -> tuple[str, float] | None:
    target = info.get("target")
    if target is None and isinstance(info.get("spec"), dict):  # the resolved manifest, or its spec
        spec = info["spec"].get("spec", info["spec"])
        target = spec.get("target") if isinstance(spec, dict) else None
    if not isinstance(target, dict) or _num(target.get("value")) is None or not target.get("metric"):
        return None
    return str(target["metric"]), float(target["value"])


def run_from_info(info: dict[str, Any], name: str, source: str) -> Run:
    """A `Run` from one run_info (ours or Marin's); hardware FLOPs derived when absent."""
    flops = _num(info.get("training_hardware_flops"))
    seconds = _num(info.get("training_time"))
    if flops is None and seconds is not None:
        per_device, devices = _num(info.get("device_flops")), _num(info.get("num_devices"))
        flops = per_device * devices * seconds if per_device and devices else None
    return Run(
        name=str(info.get("name") or name), source=source, info=info, bpb=_num(info.get(BPB_KEY)),
        hardware_flops=flops, training_time=seconds, target=_target(info),
        time_to_target=_num(info.get("time_to_target")),
    )


def runs_from_document(doc: Any, name: str, source: str) -> list[Run]:
    """Every run of one results file: {"runs": [{"run_info"}...]}, {"run_info"} or a bare run_info."""
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    entries = doc.get("runs", [doc])
    if not isinstance(entries, list) or not entries:
        raise ValueError("'runs' is not a non-empty list")
    runs = []
    for i, entry in enumerate(entries):
        info = entry.get("run_info", entry) if isinstance(entry, dict) else None
        if not isinstance(info, dict) or not ({BPB_KEY, "training_time", "time_to_target"} & set(info)):
            raise ValueError(f"run {i} has no run_info with results")
        runs.append(run_from_info(info, name if len(entries) == 1 else f"{name}#{i + 1}", source))
    return runs


def load_runs(uri: str, endpoint_url: str | None = None) -> list[Run]:
    """Every run under `uri`; files that do not parse are reported on stderr and skipped."""
    if uri.rstrip("/").rsplit("/", 1)[-1] == RESULTS_NAME:  # one file
        uri, _, only = uri.rstrip("/").rpartition("/")
        storage = open_storage(uri or ".", endpoint_url)
        keys = [only] if storage.exists(only) else []
    else:
        storage = open_storage(uri, endpoint_url)
        keys = [k for k in storage.list("") if k.rsplit("/", 1)[-1] == RESULTS_NAME]
    runs: list[Run] = []
    for key in keys:
        source = storage.url(key)
        name = key.rsplit("/", 1)[0] if "/" in key else uri.rstrip("/").rsplit("/", 1)[-1]
        try:
            runs.extend(runs_from_document(storage.read_json(key), name, source))
        except (DataError, ValueError, AttributeError) as e:
            print(f"skipping {source}: {e}", file=sys.stderr)
    names = [r.name for r in runs]
    for run in runs:  # the same manifest run twice: tell them apart by where they live
        if names.count(run.name) > 1:
            run.name = f"{run.name} ({run.source.rsplit('/', 2)[-2]})"
    return runs


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
    recorded, model_flops = _num(run.info.get("mfu")), _num(run.info.get("model_flops"))
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
              _fmt(r.hardware_flops, ".3e"), _fmt(_num(r.info.get("model_flops")), ".3e"),
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
        "model_flops": _num(r.info.get("model_flops")), "training_time": r.training_time,
        "core_metric": r.value("core"), "val_loss": r.value("val_loss"), "time_to_target": r.time_to_target,
        "target": None if r.target is None else {"metric": r.target[0], "value": r.target[1]},
        "tracks": r.tracks, "ranks": r.ranks, "pareto": r.pareto, "bpb_band": r.band,
    } for r in ordered]


# ---- the command ----------------------------------------------------------------------------


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("uri", help="file:// or s3:// prefix (or a directory) holding speedrun_results.json files")
    p.add_argument("--plot", metavar="PNG", help="draw BPB vs hardware FLOPs, the Pareto frontier highlighted")
    p.add_argument("--html", metavar="HTML", help="write a static page with the tables and the plot")
    p.add_argument("--json", action="store_true", help="print the ranked runs as JSON instead of tables")
    p.add_argument("--band-width", type=_positive, default=DEFAULT_BAND_WIDTH, help="BPB band width (0.1)")
    p.add_argument("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("leaderboard", help="rank the speedrun_results.json files under a URI")
    add_arguments(p)
    p.set_defaults(func=handler)


def _write(path: str, data: bytes) -> None:
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    print(f"wrote {target}", file=sys.stderr)


def handler(args: argparse.Namespace) -> int:
    try:
        runs = load_runs(args.uri, args.endpoint_url)
        if not runs:
            raise DataError(f"{args.uri}: no {RESULTS_NAME} found")
        tracks = rank_runs(runs, args.band_width)
        tables = build_tables(tracks, args.band_width)
        if args.json:
            print(json.dumps(runs_json(runs), indent=2))
        elif tables:
            print("\n\n".join(format_table(t) for t in tables))
        else:
            print(f"{len(runs)} runs, none with a BPB or a target: nothing to rank", file=sys.stderr)
        if args.plot or args.html:
            from speedrun_trainer import leaderboard_render as render

            png = render.plot_png(tracks.get(MARIN_TRACK, []))
            if args.plot:
                if png is None:
                    raise DataError(f"{args.uri}: no run has both a BPB and hardware FLOPs to plot")
                _write(args.plot, png)
            if args.html:
                _write(args.html, render.html_page(args.uri, len(runs), tables, png).encode())
    except BrokenPipeError:  # `speedrun leaderboard URI | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (DataError, OSError) as e:
        print(f"speedrun leaderboard: {e}".replace("\n", " "), file=sys.stderr)
        return EXIT_ERROR
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="speedrun leaderboard", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return handler(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
