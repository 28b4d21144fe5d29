"""Leaderboard runs: the `Run` and `Table` records, and loading speedrun_results.json files.

Files in our shape and in Marin's (`{"runs": [{"run_info": ...}]}`, or one `{"run_info": ...}`,
without our additions) both load; a file that does not is skipped with one line on stderr.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

from speedrun_trainer.data.storage import DataError, open_storage

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
        return as_number(self.info.get(key))


@dataclass
class Table:
    title: str
    note: str
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]  # right-aligned columns
    highlight: list[bool] = field(default_factory=list)  # rows drawn out (the Pareto frontier)


# ---- loading --------------------------------------------------------------------------------


def as_number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _target(info: dict[str, Any]) -> tuple[str, float] | None:
    target = info.get("target")
    if target is None and isinstance(info.get("spec"), dict):  # the resolved manifest, or its spec
        spec = info["spec"].get("spec", info["spec"])
        target = spec.get("target") if isinstance(spec, dict) else None
    if not isinstance(target, dict) or as_number(target.get("value")) is None or not target.get("metric"):
        return None
    return str(target["metric"]), float(target["value"])


def run_from_info(info: dict[str, Any], name: str, source: str) -> Run:
    """A `Run` from one run_info (ours or Marin's); hardware FLOPs derived when absent."""
    flops = as_number(info.get("training_hardware_flops"))
    seconds = as_number(info.get("training_time"))
    if flops is None and seconds is not None:
        per_device, devices = as_number(info.get("device_flops")), as_number(info.get("num_devices"))
        flops = per_device * devices * seconds if per_device and devices else None
    return Run(
        name=str(info.get("name") or name), source=source, info=info, bpb=as_number(info.get(BPB_KEY)),
        hardware_flops=flops, training_time=seconds, target=_target(info),
        time_to_target=as_number(info.get("time_to_target")),
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
