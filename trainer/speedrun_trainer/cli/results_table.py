"""The text `speedrun run` prints around a run, folded to fit 80 columns: the results table and
the header's labelled rows (run dir, storage, logs).

A terminal wraps a line that is too wide onto the next row at column 0, which breaks the table's
columns apart; so every row is folded here instead (`fit_rows`). A value wraps at its spaces
under its own column; a value with a word too wide for that column (a long URI or path) goes
onto lines of its own under the label, unbroken where it fits the width and cut into pieces of
the width where it does not: no character is dropped, so the full path is always on screen.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

from speedrun_api.metric_definitions import LEVANTER_BPB, bpb_key
from speedrun_trainer.leaderboard.table_text import TABLE_WIDTH


def text_width(stream: Any = None) -> int:
    """80, or the terminal's width when `stream` is a narrower terminal."""
    stream = sys.stdout if stream is None else stream
    if hasattr(stream, "isatty") and stream.isatty():
        return max(20, min(TABLE_WIDTH, shutil.get_terminal_size((TABLE_WIDTH, 24)).columns))
    return TABLE_WIDTH


def fold_row(label: str, value: str, label_width: int, width: int = TABLE_WIDTH) -> list[str]:
    """`  label  value` as lines of at most `width` characters (see the module docstring)."""
    indent = " " * (2 + label_width + 2)
    room = width - len(indent)
    lines = textwrap.wrap(value, room, break_long_words=False, break_on_hyphens=False) or [""]
    if all(len(line) <= room for line in lines):
        return [f"  {label.ljust(label_width)}  {lines[0]}".rstrip(), *(indent + line for line in lines[1:])]
    # A word wider than the value column: the label alone, the value under it, 4 columns in.
    pieces = textwrap.wrap(value, width - 4, break_long_words=True, break_on_hyphens=False)
    return [f"  {label}", *("    " + piece for piece in pieces)]


def fit_rows(rows: list[tuple[str, str]], width: int = TABLE_WIDTH) -> list[str]:
    """Labelled rows, labels in one column, each row folded to `width`."""
    label_width = max((len(label) for label, _ in rows), default=0)
    return [line for label, value in rows for line in fold_row(label, value, label_width, width)]


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _bpb_row(info: dict[str, Any]) -> str:
    """The headline BPB, saying which evaluation made it: the one after training, of the final
    step, on how many tokens of which set (the live line showed in-loop evaluations)."""
    dataset = info.get("bpb_dataset")
    definition = info.get("bpb_definition", LEVANTER_BPB)
    rules = info.get("bpb_rules")  # Marin's key only when every rule of levanter's BPB held
    key = bpb_key(str(dataset), definition, rules if isinstance(rules, dict) else None)
    scored = (info.get("eval_set") or {}).get("tokens_scored")
    tokens = f"{scored:,} tokens of " if isinstance(scored, int) else ""
    return (
        f"{_fmt(info.get(key), '.4f')}, the final evaluation of step {info['training_steps']:,}"
        f" on {tokens}{dataset} ({definition})"
    )


def results_rows(
    info: dict[str, Any], uri: str, wall_seconds: float, summary: Path | None = None
) -> list[tuple[str, str]]:
    rows = [
        ("run", info["name"]),
        ("steps", f"{info['training_steps']:,}"),
        ("tokens", f"{info['total_tokens']:,}"),
        (
            "training time",
            f"{info['training_time']:.1f} s (eval, checkpoints, logging and"
            f" {info.get('warmup_steps') or 0} warm-up steps excluded)",
        ),
        ("wall time", f"{wall_seconds:.1f} s (start-up, training, evaluation)"),
        ("tokens/s", _fmt(info.get("tokens_per_second"), ",.0f")),
        ("MFU", f"{_fmt(info.get('mfu'), '.2%')} of {info['num_devices']} x {info['device_flops']:.2e} FLOP/s"),
        ("model FLOPs", f"{info['model_flops']:.3e}"),
        ("hardware FLOPs", f"{info['training_hardware_flops']:.3e}"),
        ("val loss", _fmt(info.get("val_loss"), ".4f")),
        ("BPB untrained", _fmt(info.get("initial_bpb"), ".4f")),
        ("BPB", _bpb_row(info)),
    ]
    if info.get("core_metric") is not None:
        rows.append(("CORE", f"{info['core_metric']:.4f}"))
    if info.get("target"):
        t = info["target"]
        reached = info.get("time_to_target")
        rows.append(
            (
                "target",
                f"{t['metric']} {t['value']}: "
                + (f"reached in {reached:.1f} s" if reached is not None else "not reached"),
            )
        )
    if info.get("wandb_run_link"):
        rows.append(("W&B run", str(info["wandb_run_link"])))
    rows.append(("results", uri))
    if summary is not None:
        rows.append(("summary", str(summary)))
    return rows


def format_results_table(
    info: dict[str, Any], uri: str, wall_seconds: float, width: int = TABLE_WIDTH, summary: Path | None = None
) -> str:
    """The results as `speedrun run` prints them, every line at most `width` characters; `summary`
    is the local copy `speedrun run` keeps."""
    rows = results_rows(info, uri, wall_seconds, summary)
    return "\n".join(["", "speedrun results", *fit_rows(rows, width)])
