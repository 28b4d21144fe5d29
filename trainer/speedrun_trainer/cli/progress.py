"""What `speedrun run` shows: a live one-line progress bar and the final results table.

The bar reads the trainer's Prometheus endpoint (`scrape`), the same numbers the operator puts
into `status.progress`. On a terminal it redraws one line; elsewhere (CI logs) it prints a line
at every tenth of the run.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any, TextIO

from speedrun_api.metrics import parse_metrics
from speedrun_trainer.evaluation.definitions import LEVANTER_BPB, bpb_key


def scrape(url: str, timeout: float = 1.0) -> dict[str, float]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return parse_metrics(resp.read().decode())
    except (urllib.error.URLError, OSError, ValueError):
        return {}


class ProgressBar:
    def __init__(self, total_steps: int, stream: TextIO, width: int = 28) -> None:
        self.total, self.stream, self.width = total_steps, stream, width
        self.tty = stream.isatty()
        self.last_decile = -1
        self.drawn = False

    def line(self, m: dict[str, float]) -> str:
        step = int(m.get("step", 0))
        frac = min(1.0, step / self.total) if self.total else 0.0
        filled = int(frac * self.width)
        parts = [f"[{'#' * filled}{'.' * (self.width - filled)}] step {step}/{self.total}"]
        if "train_loss" in m:
            parts.append(f"loss {m['train_loss']:.4f}")
        if "val_bpb" in m:
            parts.append(f"val bpb {m['val_bpb']:.3f}")
        if "tokens_per_second" in m:
            parts.append(f"{m['tokens_per_second']:,.0f} tok/s")
        if "eta_seconds" in m:
            parts.append(f"ETA {m['eta_seconds']:.0f}s")
        return " | ".join(parts)

    def update(self, metrics: dict[str, float]) -> None:
        if not metrics:
            return
        text = self.line(metrics)
        if self.tty:
            self.stream.write("\r" + text.ljust(100))
            self.drawn = True
        else:
            decile = int(10 * metrics.get("step", 0) / max(1, self.total))
            if decile > self.last_decile:
                self.last_decile = decile
                self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


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
        ("training time", f"{info['training_time']:.1f} s (eval, checkpoints, logging and"
                          f" {info.get('warmup_steps') or 0} warm-up steps excluded)"),
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
        rows.append(("target", f"{t['metric']} {t['value']}: "
                     + (f"reached in {reached:.1f} s" if reached is not None else "not reached")))
    rows.append(("results", uri))
    width = max(len(k) for k, _ in rows)
    return "\n".join(["", "speedrun results", *(f"  {k.ljust(width)}  {v}" for k, v in rows)])
