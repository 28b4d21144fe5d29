"""What `speedrun run` shows: one live progress line, the notices above it, the results table.

The numbers come from the trainer's Prometheus endpoint (`scrape`), the same ones the operator
puts into `status.progress`. On a terminal, rich draws one line that fits the terminal's width
and is redrawn in place (fields drop out right to left when the terminal is narrow, never
wrapping onto a second line); notices (resumed step, W&B, warnings from the nodes, the results
path) print above it, each once. Elsewhere (a pipe, CI logs) every update worth a line is a
plain line: a progress line at every tenth of the run, and each notice as `note: ...`.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from speedrun_api.metric_definitions import LEVANTER_BPB, bpb_key
from speedrun_api.trainer_metrics import parse_metrics
from speedrun_trainer.cli.notices import LogWatcher, Notice

MIN_BAR_WIDTH = 10
STYLES = {"resumed": "cyan", "wandb": "magenta", "warning": "yellow", "results": "green", "info": ""}


def scrape(url: str, timeout: float = 1.0) -> dict[str, float]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return parse_metrics(resp.read().decode())
    except (urllib.error.URLError, OSError, ValueError):
        return {}


def human_eta(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def stats(m: dict[str, float]) -> list[str]:
    """The progress fields after the bar, most important first (ETA, loss, throughput, BPB)."""
    out = []
    if "eta_seconds" in m:
        out.append(f"ETA {human_eta(m['eta_seconds'])}")
    if "train_loss" in m:
        out.append(f"loss {m['train_loss']:.4f}")
    if "tokens_per_second" in m:
        out.append(f"{m['tokens_per_second']:,.0f} tok/s")
    if "val_bpb" in m:
        out.append(f"bpb {m['val_bpb']:.3f}")
    return out


def plain_line(step: int, total: int, m: dict[str, float]) -> str:
    return " | ".join([f"step {step}/{total}", *stats(m)])


class LiveDisplay:
    """The progress line and the notices; `finish()` leaves the last line on screen."""

    def __init__(self, total_steps: int, stream: TextIO, *, force_terminal: bool | None = None) -> None:
        self.total = total_steps
        self.console = Console(file=stream, force_terminal=force_terminal, highlight=False, soft_wrap=False)
        self.tty = self.console.is_terminal
        self.metrics: dict[str, float] = {}
        self.last_decile = -1
        self.live: Live | None = None
        self.notes: list[Notice] = []

    # ---- input ----------------------------------------------------------------------------

    def update(self, metrics: dict[str, float]) -> None:
        if not metrics:
            return
        self.metrics = metrics
        step = int(metrics.get("step", 0))
        if self.tty:
            self._live().update(self._render(), refresh=True)
            return
        decile = int(10 * step / max(1, self.total))
        if decile > self.last_decile:
            self.last_decile = decile
            self.console.print(plain_line(step, self.total, metrics), markup=False)

    def note(self, notice: Notice) -> None:
        """Show one notice above the live line (or as a plain `note:` line)."""
        self.notes.append(notice)
        if self.tty:
            text = Text(notice.text, style=STYLES.get(notice.kind, ""))
            (self.live.console if self.live else self.console).print(text, overflow="fold")
        else:
            self.console.print(f"note: {notice.text}", markup=False, soft_wrap=True)

    def finish(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    # ---- drawing --------------------------------------------------------------------------

    def _live(self) -> Live:
        if self.live is None:
            self.live = Live(
                console=self.console, auto_refresh=False, transient=False, redirect_stdout=False, redirect_stderr=False
            )
            self.live.start()
        return self.live

    def _render(self) -> Table:
        """One row as wide as the terminal: `step N/T [bar] ETA .. | loss .. | tok/s | bpb`."""
        step = int(self.metrics.get("step", 0))
        width = self.console.width
        head = f"step {step}/{self.total}"
        fields = stats(self.metrics)
        # Drop the least important fields until head + bar + fields fit on one line.
        while fields and len(head) + MIN_BAR_WIDTH + len(" | ".join(fields)) + 2 > width:
            fields.pop()
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.add_column(no_wrap=True)
        grid.add_column(ratio=1, min_width=MIN_BAR_WIDTH)
        grid.add_column(no_wrap=True, overflow="ellipsis")
        bar = ProgressBar(total=max(1, self.total), completed=min(step, self.total))
        grid.add_row(head, bar, " | ".join(fields))
        return grid


class RunScreen:
    """The display fed by both sources: the trainer's metrics and the notices in the node logs."""

    def __init__(self, display: LiveDisplay, watcher: LogWatcher) -> None:
        self.display, self.watcher = display, watcher

    def update(self, metrics: dict[str, float]) -> None:
        for notice in self.watcher.poll():
            self.display.note(notice)
        self.display.update(metrics)

    def note(self, kind: str, text: str) -> None:
        self.display.note(Notice(kind, text))

    def finish(self) -> None:
        for notice in self.watcher.poll():
            self.display.note(notice)
        self.display.finish()


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_results_table(info: dict[str, Any], uri: str, wall_seconds: float) -> str:
    dataset = info.get("bpb_dataset")
    definition = info.get("bpb_definition", LEVANTER_BPB)
    key = bpb_key(str(dataset), definition)  # Marin's key only for levanter's exact number on C4-EN
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
        ("BPB", f"{_fmt(info.get(key), '.4f')} on {dataset} ({definition})"),
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
    width = max(len(k) for k, _ in rows)
    return "\n".join(["", "speedrun results", *(f"  {k.ljust(width)}  {v}" for k, v in rows)])
