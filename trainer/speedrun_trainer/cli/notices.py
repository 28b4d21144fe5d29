"""What `speedrun run` picks out of its nodes' logs to show on screen, each thing once.

Every process of a local run writes to `<run dir>/logs/*.log` (torchrun agents, their workers,
the evaluation). The screen shows none of that stream, only what a user must see:

- `phase`: a set-up phase has begun (`phase: loading the data`; the launcher's own, the torchrun
  agents' and rank 0's, `PHASE_PREFIX`): the live line shows it until training reports a loss;
- `eval`: an in-loop evaluation (`step 200/300 | val loss .. | val bpb .. on N tokens`,
  train/loop.py), shown with its step and token count;
- `progress`: rank 0's progress line (`step 20/300 | loss .. | .. tok/s | mfu .. | eta ..s`), the
  same numbers as the Prometheus gauges: the run's last step always reaches the screen, even
  when the process exits before the next scrape;
- `resumed`: rank 0 continued from a checkpoint (`resumed from URI at step N`, train/loop.py);
- `wandb`: W&B's state and run link (the `wandb: ...` line of train/tracking.py);
- `warning`: a warning or error line from any process, shown once however many ranks print it
  (four workers without a GPU print the same error four times).

`LogWatcher.poll()` reads what the files gained since the last call (byte offsets, so a long run
is never re-read) and returns the new notices. Timestamps (`[12:00:01]`) and torchx/torchrun
rank prefixes (`[0]:`, `[rank1]:`, `[default0]:`) are stripped before comparing, so the same
message from two ranks is one notice. The patterns are the trainer's log lines, which
tests/unit/trainer/test_live_display.py pins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from speedrun_api.run_contract import PHASE_PREFIX

PHASE = re.compile(rf"^{PHASE_PREFIX}(?P<text>\S.*)$")
EVAL = re.compile(
    r"step\s+(?P<step>\d+)/(?P<total>\d+) \| val loss (?P<loss>\S+) \| val bpb (?P<bpb>[-+\w.]+)"
    r"(?: on (?P<tokens>[\d,]+) tokens)?"
)
PROGRESS = re.compile(
    r"step\s+(?P<step>\d+)/(?P<total>\d+) \| loss (?P<loss>\S+) \| (?P<tps>[\d,.]+) tok/s"
    r" \| mfu \S+ \| eta (?P<eta>\d+)s"
)
RESUMED = re.compile(r"resumed from (?P<uri>\S+) at step (?P<step>\d+)")
WANDB = re.compile(r"^wandb: (?!WARNING|ERROR)(?P<state>.+)$")  # our tracker's state line
WANDB_OWN = re.compile(r"^wandb: (?P<kind>WARNING|ERROR) (?P<text>.+)$")  # wandb's own warnings
# Python warnings (`file.py:12: UserWarning: text`), our `warning:`/`error:` lines, torchrun's
# `WARNING:` logger lines and the trainer's one-line failures (`speedrun_trainer.train: ...`).
# Not the invalid-config lines: they end the run, and `speedrun run` prints that one line last.
WARNING = re.compile(
    r"(?:^|\s)(?P<kind>[A-Z]\w*Warning|warning|error|WARNING|ERROR|speedrun_trainer\.[\w.]+)"
    r":\s*(?P<text>\S.*)$"
)
PREFIXES = re.compile(r"^(?:\s*\[[\w:.-]+\]:?)+")  # [12:00:01] [rank0]: [default1]: [0]:
NOISE = ("FutureWarning", "DeprecationWarning")  # library deprecations: not the user's business
MAX_NOTICE_CHARS = 300


@dataclass(frozen=True)
class Notice:
    kind: str  # "phase" | "eval" | "progress" | "resumed" | "wandb" | "warning"
    text: str
    step: int | None = None  # the resumed-from step; the evaluated step; the step reached
    value: float | None = None  # an evaluation's BPB
    metrics: tuple[tuple[str, float], ...] = ()  # progress: the gauges' names and values


def strip_prefixes(line: str) -> str:
    return PREFIXES.sub("", line.rstrip("\r\n")).strip()


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def classify(line: str) -> Notice | None:
    """The notice a log line carries, or None."""
    text = strip_prefixes(line)
    if not text:
        return None
    if m := PHASE.match(text):
        return Notice("phase", m["text"][:MAX_NOTICE_CHARS])
    if (m := EVAL.search(text)) and (bpb := _number(m["bpb"])) is not None:
        tokens = f" on {m['tokens']} tokens" if m["tokens"] else ""
        return Notice(
            "eval",
            f"in-loop eval at step {m['step']}/{m['total']}: val loss {m['loss']}, bpb {m['bpb']}{tokens}",
            int(m["step"]),
            bpb,
        )
    if (m := PROGRESS.search(text)) and (loss := _number(m["loss"])) is not None:
        metrics = {
            "step": float(m["step"]),
            "train_loss": loss,
            "tokens_per_second": float(m["tps"].replace(",", "")),
            "eta_seconds": float(m["eta"]),
        }
        return Notice("progress", text, int(m["step"]), metrics=tuple(metrics.items()))
    if m := RESUMED.search(text):
        return Notice("resumed", f"resumed from step {m['step']} ({m['uri']})", int(m["step"]))
    if m := WANDB.match(text):
        return Notice("wandb", f"W&B {m['state']}")
    if m := WANDB_OWN.match(text):
        return Notice("warning", f"W&B {m['kind'].lower()}: {m['text']}"[:MAX_NOTICE_CHARS])
    if (m := WARNING.search(text)) and m["kind"] not in NOISE:
        kind = m["kind"]
        label = kind if kind.endswith("Warning") or kind.startswith("speedrun_trainer") else kind.lower()
        return Notice("warning", f"{label}: {m['text']}"[:MAX_NOTICE_CHARS])
    return None


class LogWatcher:
    """New notices from the growing `*.log` files under a directory, each distinct notice once."""

    def __init__(self, root: Path, *, skip_existing: bool = False) -> None:
        """`skip_existing`: only what the files gain from now on (a resumed run appends to the
        logs of its earlier sessions, whose phases and steps are not this session's)."""
        self.root = root
        self.offsets: dict[Path, int] = {}
        self.partial: dict[Path, str] = {}
        self.seen: set[tuple[str, str]] = set()
        if skip_existing:
            self.offsets = {path: path.stat().st_size for path in root.glob("**/*.log")}

    def poll(self) -> list[Notice]:
        out: list[Notice] = []
        for path in sorted(self.root.glob("**/*.log")):  # torchx writes logs/torchx/**/combined.log
            for line in self._new_lines(path):
                notice = classify(line)
                if notice is None or (notice.kind, notice.text) in self.seen:
                    continue
                self.seen.add((notice.kind, notice.text))
                out.append(notice)
        return out

    def _new_lines(self, path: Path) -> list[str]:
        try:
            with path.open("rb") as f:
                f.seek(self.offsets.get(path, 0))
                data = f.read()
        except OSError:
            return []
        self.offsets[path] = self.offsets.get(path, 0) + len(data)
        text = self.partial.pop(path, "") + data.decode("utf-8", errors="replace")
        lines = text.split("\n")
        if lines[-1]:  # a line still being written: keep it for the next poll
            self.partial[path] = lines[-1]
        return lines[:-1]
