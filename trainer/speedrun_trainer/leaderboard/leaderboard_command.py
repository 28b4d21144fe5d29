"""`speedrun leaderboard URI`: rank every run's results file under a file:// or s3:// prefix.

speedrun leaderboard runs/                                  a table per track
speedrun leaderboard s3://bucket/speedruns --plot board.png --html board.html
speedrun leaderboard runs/ --json                           the ranked runs as JSON
speedrun leaderboard runs/ --flops model --plot board.png   model FLOPs on the x axis and frontier
speedrun leaderboard --demo                                 Marin's published runs (shipped with the package)
speedrun leaderboard --demo --view scaling [--fit marin]    groups' scaling laws and forecasts
speedrun leaderboard --demo --view runs --x model --relative   BPB vs the baseline's law
speedrun leaderboard --demo --view scaling --plot s.png --html s.html   the view drawn, the page on it
speedrun leaderboard runs/ --wide                           every column (tables fit 80 columns by default)
python -m speedrun_trainer.leaderboard URI [...]            the same without the CLI
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from speedrun_api.run_contract import RESULTS_FILE
from speedrun_trainer.data.storage import DataError
from speedrun_trainer.leaderboard import scaling, scaling_views
from speedrun_trainer.leaderboard.ranking import (
    FLOPS_FIELD,
    build_tables,
    is_bpb_track,
    left_out,
    rank_runs,
    runs_json,
)
from speedrun_trainer.leaderboard.run_checks import MAX_BPB, MAX_FLOPS
from speedrun_trainer.leaderboard.runs import (
    DEFAULT_BAND_WIDTH,
    EXIT_ERROR,
    FLOPS_AXES,
    MARIN_RUNS,
    Run,
    is_site_file,
    load_runs,
    load_site_runs,
)
from speedrun_trainer.leaderboard.table_text import TABLE_WIDTH, format_table

MIN_BAND_WIDTH = 1e-4  # BPBs are shown to 4 decimals: a narrower band cannot be told apart

# ---- the command ----------------------------------------------------------------------------


def _within(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a number from {low:g} to {high:g}, got {text}")
        return value

    parse.__name__ = "number"  # argparse's "invalid number value: 'x'"
    return parse


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def _band_points(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else -1
    if value != 0 and not 2 <= value <= 200:
        raise argparse.ArgumentTypeError(f"must be 0 (no band) or 2-200, got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("uri", nargs="?", help=f"file:// or s3:// prefix (or a directory) holding {RESULTS_FILE} files")
    p.add_argument(
        "--demo",
        action="store_true",
        help="rank Marin's 96 published runs (the site's data file, shipped with this package) instead of a URI",
    )
    p.add_argument(
        "--wide",
        action="store_true",
        help=f"tables with every column, whole (default: fitted to {TABLE_WIDTH} columns: details left out,"
        " long names wrapped)",
    )
    p.add_argument(
        "--plot",
        metavar="PNG",
        help="draw BPB vs FLOPs (--flops), the Pareto frontier highlighted;"
        " with --view: that view (laws, bands and forecasts; or relative BPB)",
    )
    p.add_argument(
        "--html",
        metavar="HTML",
        help="write one self-contained interactive page: All runs (chart with tooltips, zoom, FLOPs axis,"
        " relative toggle; tables) and Scaling (laws, bands, forecasts at any FLOPs); --view opens it there",
    )
    p.add_argument("--json", action="store_true", help="print the ranked runs as JSON instead of tables")
    p.add_argument(
        "--band-width", type=_within(MIN_BAND_WIDTH, MAX_BPB), default=DEFAULT_BAND_WIDTH, help="BPB band width (0.1)"
    )
    p.add_argument(
        "--flops",
        "--x",
        choices=FLOPS_AXES,
        default="hardware",
        help="the cost axis of the Pareto frontier, bands, plot and views: training hardware FLOPs"
        " (default) or model FLOPs",
    )
    p.add_argument("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    views = p.add_argument_group("views (scaling_views.py); URI may also be a Marin site data file (runs.json)")
    views.add_argument(
        "--view", choices=scaling_views.VIEWS, help="scaling: groups' laws ranked by forecast; runs: all runs"
    )
    views.add_argument(
        "--relative",
        action="store_true",
        help="runs view: BPB relative to the baseline's law (the page: All runs starts so)",
    )
    views.add_argument(
        "--baseline", default=scaling_views.BASELINE_GROUP, help="baseline group for --relative (adamw_llama_scaling)"
    )
    views.add_argument(
        "--forecast-flops",
        type=_within(1.0, MAX_FLOPS),
        default=scaling.DEFAULT_FORECAST_FLOPS,
        metavar="FLOPS",
        help="where the scaling view forecasts (1e22)",
    )
    views.add_argument(
        "--fit",
        choices=scaling.FITS,
        default="converged",
        help="converged least squares with intervals (default), or Marin's site fit",
    )
    views.add_argument(
        "--bpb-track",
        metavar="TRACK",
        help="which BPB the views compare, a track of the tables (default marin, else the only one)",
    )
    views.add_argument("--confidence", type=_fraction, default=scaling.DEFAULT_CONFIDENCE, help="interval level (0.95)")
    views.add_argument(
        "--band-points",
        type=_band_points,
        default=0,
        metavar="N",
        help="scaling --json/--plot: each group's law at N FLOPs up to the forecast, with intervals"
        " (a band; the PNG draws 12 by default)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("leaderboard", help=f"rank the {RESULTS_FILE} files under a URI")
    add_arguments(p)
    p.set_defaults(func=handler)


def _write(path: str, data: bytes) -> None:
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    print(f"wrote {target}", file=sys.stderr)


def handler(args: argparse.Namespace) -> int:
    width = None if args.wide else TABLE_WIDTH
    try:
        if args.demo == bool(args.uri):
            raise DataError("give a URI of results files, or --demo for Marin's published runs (not both)")
        if args.demo:
            args.uri = str(MARIN_RUNS)
        runs = load_site_runs(args.uri) if is_site_file(args.uri) else load_runs(args.uri, args.endpoint_url)
        if not runs:
            raise DataError(f"{args.uri}: no {RESULTS_FILE} found")
        if args.view:
            if args.band_points and not (args.view == "scaling" and (args.json or args.plot)):
                raise DataError("--band-points: only with --view scaling --json or --plot (the table has no band)")
            root = scaling_views.storage_root(args.uri, args.endpoint_url)
            print(
                scaling_views.render_view(
                    runs,
                    args.view,
                    args.flops,
                    args.relative,
                    args.fit,
                    args.forecast_flops,
                    args.confidence,
                    args.baseline,
                    args.json,
                    root,
                    args.band_points if args.json else 0,
                    args.bpb_track,
                    width,
                )
            )
            if args.plot:
                from speedrun_trainer.leaderboard import view_plots

                _write(args.plot, view_plots.view_png(runs, args, root))
            if args.html:
                _write(args.html, _page(args, runs, root).encode())
            return 0
        tracks = rank_runs(runs, args.band_width, args.flops)
        missing = left_out(runs, args.flops)
        if missing:
            print(
                f"{sum(missing.values())} run(s) with a BPB left out of the {args.flops}-FLOPs ranking: no"
                f" {FLOPS_FIELD[args.flops]} recorded",
                file=sys.stderr,
            )
        tables = build_tables(tracks, args.band_width, args.flops, missing)
        if args.json:
            print(json.dumps(runs_json(runs), indent=2))
        elif tables:
            print("\n\n".join(format_table(t, width) for t in tables))
        else:
            print(f"{len(runs)} runs, none with a BPB or a target: nothing to rank", file=sys.stderr)
        if args.plot:
            from speedrun_trainer.leaderboard import frontier_plot

            first_bpb = next((name for name in tracks if is_bpb_track(name)), None)  # marin first when present
            png = frontier_plot.plot_png(tracks[first_bpb], args.flops, first_bpb) if first_bpb else None
            if png is None:
                raise DataError(f"{args.uri}: no run has both a BPB and {args.flops} FLOPs to plot")
            _write(args.plot, png)
        if args.html:
            _write(args.html, _page(args, runs, scaling_views.storage_root(args.uri, args.endpoint_url)).encode())
    except BrokenPipeError:  # `speedrun leaderboard URI | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (DataError, OSError) as e:
        print(f"speedrun leaderboard: {e}".replace("\n", " "), file=sys.stderr)
        return EXIT_ERROR
    return 0


def _page(args: argparse.Namespace, runs: list[Run], root: str) -> str:
    """The interactive page: one BPB track's runs (--bpb-track, else marin first) in All runs and
    Scaling, every table below the All-runs chart; it opens on --view (default All runs), relative
    with --relative."""
    from speedrun_trainer.leaderboard import page, page_data

    tracks = rank_runs(runs, args.band_width, args.flops)
    tables = build_tables(tracks, args.band_width, args.flops, left_out(runs, args.flops))
    bpb_tracks = [name for name in tracks if is_bpb_track(name)]
    track = args.bpb_track or next(iter(bpb_tracks), None)
    if track is not None and track not in bpb_tracks:
        raise DataError(
            f"--bpb-track {track}: no run has that BPB with {args.flops} FLOPs (tracks here: "
            f"{', '.join(bpb_tracks) or 'none'})"
        )
    chart = [r for r in tracks[track] if r.bpb is not None] if track else []
    scaling = relative = None
    if chart:
        scaling = page_data.scaling_data(chart, args.flops, args.fit, args.forecast_flops, args.confidence, root)
        relative = page_data.relative_data(chart, args.fit, args.baseline, root)
    return page.html_page(
        args.uri,
        runs,
        tables,
        chart,
        axis=args.flops,
        track=track,
        scaling=scaling,
        relative=relative,
        view=args.view or "runs",
        relative_on=args.relative,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="speedrun leaderboard", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return handler(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
