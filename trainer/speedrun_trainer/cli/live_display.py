"""What `speedrun run` shows: one live line, and the notices above it.

Before the first step the live line is the set-up phase under way (`phase` notices: starting
the agents, rendezvous, loading the data, building the model...) with the seconds it has taken
so far, so the screen moves from the first second; a finished phase stays above the line with
its duration. From the trainer's first metrics on, it is the progress line: step, bar, ETA,
train loss, throughput and the newest in-loop evaluation, labelled with its step (`bpb@200`);
each in-loop evaluation also prints above the line once, saying which step and how many tokens,
so no number on screen is left to be confused with the final evaluation's.

Progress numbers come from the trainer's Prometheus endpoint (`scrape`), the same ones the
operator puts into `status.progress`; phases and evaluations from the nodes' log lines
(cli/notices.py), which exist before rank 0's metrics server does and are never lost when a
process exits between two scrapes. On a terminal, rich draws one line that fits the terminal's
width and is redrawn in place (fields drop out right to left when the terminal is narrow, never
wrapping onto a second line). Elsewhere (a pipe, CI logs) every update worth a line is a plain
line: each phase as `phase: ...`, a progress line at every tenth of the run, each notice as
`note: ...`.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TextIO

from rich.console import Console, RenderableType
from rich.constrain import Constrain
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from speedrun_api.trainer_metrics import parse_metrics
from speedrun_trainer.cli.notices import LogWatcher, Notice

MIN_BAR_WIDTH = 10
STYLES = {"resumed": "cyan", "wandb": "magenta", "warning": "yellow", "eval": "blue", "phase": "dim"}


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


def stats(m: dict[str, float], evaluation: Notice | None = None) -> list[str]:
    """The progress fields after the bar, most important first (ETA, loss, throughput, BPB).

    The BPB is the newest in-loop evaluation's, with the step it was measured at (`bpb@200`):
    the gauge alone carries no step, and the run can end between an evaluation and the next scrape.
    """
    out = []
    if "eta_seconds" in m:
        out.append(f"ETA {human_eta(m['eta_seconds'])}")
    if "train_loss" in m:
        out.append(f"loss {m['train_loss']:.4f}")
    if "tokens_per_second" in m:
        out.append(f"{m['tokens_per_second']:,.0f} tok/s")
    if evaluation is not None and evaluation.value is not None:
        out.append(f"bpb@{evaluation.step} {evaluation.value:.3f}")
    return out


def plain_line(step: int, total: int, m: dict[str, float], evaluation: Notice | None = None) -> str:
    return " | ".join([f"step {step}/{total}", *stats(m, evaluation)])


class LiveDisplay:
    """The live line and the notices; `finish()` leaves the last line on screen."""

    def __init__(
        self,
        total_steps: int,
        stream: TextIO,
        *,
        force_terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total_steps
        self.console = Console(file=stream, force_terminal=force_terminal, highlight=False, soft_wrap=False)
        self.tty = self.console.is_terminal
        self.clock = clock
        self.metrics: dict[str, float] = {}
        self.last_decile = -1
        self.live: Live | None = None
        self.notes: list[Notice] = []
        self.phase: str | None = None  # the set-up phase under way, until training reports a loss
        self.phase_started = 0.0
        self.evaluation: Notice | None = None  # the newest in-loop evaluation

    # ---- input ----------------------------------------------------------------------------

    def update(self, metrics: dict[str, float]) -> None:
        """New metrics from a scrape ({} when the endpoint is not up yet: the phase line ticks),
        or from rank 0's progress log line; never back to a step older than one already shown."""
        if metrics and metrics.get("step", 0) >= self.metrics.get("step", 0):
            self.metrics = metrics
            if "train_loss" in metrics:  # steps are being timed: set-up is over
                self._end_phase()
        if self.tty:
            if self.metrics or self.phase:
                self._live().update(self._render(), refresh=True)
            return
        if not metrics:
            return
        step = int(metrics.get("step", 0))
        decile = int(10 * step / max(1, self.total))
        if decile > self.last_decile:
            self.last_decile = decile
            self.console.print(plain_line(step, self.total, metrics, self.evaluation), markup=False)

    def note(self, notice: Notice) -> None:
        """Show one notice above the live line (or as a plain `note:` line); a phase becomes the
        live line's text (or a plain `phase:` line)."""
        if notice.kind == "phase":
            self.start_phase(notice.text)
            return
        if notice.kind == "progress":
            self.update(dict(notice.metrics))
            return
        self.notes.append(notice)
        if notice.kind == "eval":  # steps were taken: set-up is over
            self.evaluation = notice
            self._end_phase()
        if self.tty:
            self._print_above(Text(notice.text, style=STYLES.get(notice.kind, "")))
            if self.live is not None and self.metrics:  # the progress line's bpb@step follows at once
                self.live.update(self._render(), refresh=True)
        else:
            self.console.print(f"note: {notice.text}", markup=False, soft_wrap=True)

    def start_phase(self, text: str) -> None:
        if text == self.phase:
            return
        self._end_phase()
        if "train_loss" in self.metrics:  # after training (its last line stays): the phase's own line
            self._stop_live()
            self.metrics = {}
        self.phase, self.phase_started = text, self.clock()
        if self.tty:
            self._live().update(self._render(), refresh=True)
        else:
            self.console.print(f"phase: {text}", markup=False, soft_wrap=True)

    def finish(self) -> None:
        """Stop the live line where it is; the next update starts a new one (the evaluation's)."""
        if self.live is not None and self.phase and not self.metrics:  # a phase line: leave it with its duration
            self.live.update(self._finished_phase(), refresh=True)
            self.phase = None
        self._stop_live()
        self._end_phase()
        self.metrics, self.last_decile = {}, -1

    # ---- drawing --------------------------------------------------------------------------

    def _print_above(self, text: Text) -> None:
        (self.live.console if self.live else self.console).print(text, overflow="fold")

    def _seconds(self) -> float:
        return self.clock() - self.phase_started

    def _finished_phase(self) -> Text:
        return Text(f"{self.phase} ({self._seconds():.1f} s)", style=STYLES["phase"], no_wrap=True, overflow="ellipsis")

    def _end_phase(self) -> None:
        """A terminal keeps each finished phase above the live line, with how long it took."""
        if self.phase is None:
            return
        if self.tty:
            self._print_above(self._finished_phase())
        self.phase = None

    def _stop_live(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _live(self) -> Live:
        if self.live is None:
            self.live = Live(
                console=self.console, auto_refresh=False, transient=False, redirect_stdout=False, redirect_stderr=False
            )
            self.live.start()
        return self.live

    def _render(self) -> RenderableType:
        """One row as wide as the terminal: the phase under way before the trainer's first
        metrics, then `step N/T [bar] ETA .. | loss .. | tok/s | bpb@S ..`."""
        ticking = f"{self.phase} {self._seconds():.0f}s" if self.phase else ""
        # One column short of the terminal: a line that fills the last column leaves the cursor
        # waiting to wrap, and terminals differ in what the next redraw then does to it.
        width = self.console.width - 1
        if not self.metrics:
            return Constrain(Text(ticking, no_wrap=True, overflow="ellipsis"), width)
        step = int(self.metrics.get("step", 0))
        head = f"step {step}/{self.total}"
        fields = stats(self.metrics, self.evaluation)
        # Drop the least important fields until head + bar + fields fit on one line.
        while fields and len(head) + MIN_BAR_WIDTH + len(" | ".join(fields)) + 2 > width:
            fields.pop()
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.width = width
        grid.add_column(no_wrap=True)
        grid.add_column(ratio=1, min_width=MIN_BAR_WIDTH)
        grid.add_column(no_wrap=True, overflow="ellipsis")
        bar = ProgressBar(total=max(1, self.total), completed=min(step, self.total))
        grid.add_row(head, bar, " | ".join(fields) if fields else ticking)  # no numbers yet: the phase
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
