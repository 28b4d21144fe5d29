"""Leaderboard runs: the `Run` and `Table` records, and loading results files (`RESULTS_FILE`).

Files in our shape and in Marin's (`{"runs": [{"run_info": ...}]}`, or one `{"run_info": ...}`,
without our additions) both load; a file that does not is skipped with one line on stderr.
Exact duplicates (the same run_info found twice) collapse into one, and stderr says so.

Every run knows what its numbers mean: the dataset its BPB was measured on (from the
`eval/<dataset>/bpb` key), the BPB definition (`bpb_definition`; Marin's files, which have none,
are levanter's), the tokenizer and the val-loss definition, so ranking never mixes them.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speedrun_api.metric_definitions import (
    LEVANTER_BPB,
    MARIN_BPB_KEY,
    MEAN_LOSS,
    NANOCHAT_BPB,
    PALOMA_C4_EN,
    dataset_from_bpb_key,
)
from speedrun_api.run_contract import RESULTS_FILE
from speedrun_trainer.data.storage import DataError, open_storage
from speedrun_trainer.leaderboard.run_checks import (
    MAX_SITE_BYTES,
    is_bpb_key,
    parse_results,
    printable,
    problems,
    read_results,
    shown,
    target_of,
    too_big,
)

BPB_KEY = MARIN_BPB_KEY
MARIN_TRACK = "marin"
FLOPS_AXES = ("hardware", "model")
DEFAULT_BAND_WIDTH = 0.1
HIGHER_IS_BETTER = {"core"}
EXIT_ERROR = 2
SHOWN_REASONS = 3  # per skipped file on stderr; the rest counted
MARIN_RUNS = Path(__file__).with_name("marin_speedrun") / "runs.json"  # Marin's published runs: --demo


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
    dataset: str | None = None  # what the BPB was measured on
    bpb_definition: str | None = None
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
        if metric == "val_bpb":
            return self.bpb
        key = {"val_loss": "val_loss", "core": "core_metric"}.get(metric, metric)
        return as_number(self.info.get(key))

    def flops(self, axis: str) -> float | None:
        """Training hardware FLOPs, or model FLOPs (Marin's site toggles between the two)."""
        return self.hardware_flops if axis == "hardware" else as_number(self.info.get("model_flops"))

    @property
    def partial(self) -> bool:
        """True when the results say the BPB scored only part of its set (`eval_set.partial`)."""
        evaluated = self.info.get("eval_set")
        return isinstance(evaluated, dict) and evaluated.get("partial") is True

    @property
    def bpb_group(self) -> tuple[str, str] | None:
        """(dataset, definition): only BPBs of one group are ranked together; a BPB over part of
        its set is its own group, named so ("<dataset> (partial)")."""
        if self.bpb is None or self.dataset is None:
            return None
        dataset = f"{self.dataset} (partial)" if self.partial else self.dataset
        return dataset, self.bpb_definition or LEVANTER_BPB

    @property
    def target_context(self) -> str:
        """What a target's value means besides metric and value: its data, definition, tokenizer,
        and a clock other than nanochat's (`clock_rule`: times of different clocks differ).

        Empty for files that record none of it (they rank together, as before)."""
        if self.target is None:
            return ""
        clock = self.info.get("clock_rule")
        context = self._value_context()
        if clock and clock != "nanochat":  # files without clock_rule timed by nanochat's rule
            return f"{context}, {clock} clock" if context else f"{clock} clock"
        return context

    def _value_context(self) -> str:
        assert self.target is not None
        metric, info = self.target[0], self.info
        data = info.get("eval_set", {}).get("dataset") if isinstance(info.get("eval_set"), dict) else None
        if metric == "val_bpb":
            return "" if data is None else f"{data}, {self.bpb_definition or LEVANTER_BPB}"
        if metric == "val_loss":
            if data is None:
                return ""
            tokens = info["eval_set"].get("tokens_scored")
            definition = info.get("val_loss_definition") or MEAN_LOSS
            return f"{data}, {info.get('tokenizer')}, {definition} over {tokens} tokens"
        cap = info.get("core_max_per_task")
        return f"CORE capped at {cap} per task" if cap else ""


@dataclass
class Table:
    title: str
    note: str
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]  # right-aligned columns
    highlight: list[bool] = field(default_factory=list)  # rows drawn out (the Pareto frontier)
    narrow: list[str] = field(default_factory=list)  # per column, to fit 80 columns: "drop", "fold" or "" (table_text)


# ---- loading --------------------------------------------------------------------------------


def as_number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _target(info: dict[str, Any]) -> tuple[str, float] | None:
    target = target_of(info)  # `target`, or the resolved manifest's
    if not isinstance(target, dict) or as_number(target.get("value")) is None or not target.get("metric"):
        return None
    return str(target["metric"]), float(target["value"])


def _bpb_of(info: dict[str, Any]) -> tuple[float | None, str | None, str | None]:
    """(BPB, dataset, definition) of a run_info.

    Marin's key means Paloma C4-EN and levanter's definition, except in our results written
    before definitions were recorded, where `bpb_dataset` named other data and the BPB was
    nanochat's; any other `eval/<dataset>/bpb` key names its dataset.
    """
    definition = info.get("bpb_definition")
    if MARIN_BPB_KEY in info:
        recorded = info.get("bpb_dataset")
        if recorded not in (None, PALOMA_C4_EN) and definition is None:
            return as_number(info[MARIN_BPB_KEY]), str(recorded), NANOCHAT_BPB
        return as_number(info[MARIN_BPB_KEY]), PALOMA_C4_EN, definition or LEVANTER_BPB
    for key, value in info.items():
        dataset = dataset_from_bpb_key(key) if isinstance(key, str) else None
        if dataset is not None:
            return as_number(value), dataset, _unmatched(definition or LEVANTER_BPB, info.get("bpb_rules"))
    return None, None, None


def _unmatched(definition: str, rules: Any) -> str:
    """levanter's definition with the rules of `bpb_rules` that failed named, so such a BPB never
    ranks with Marin's (a partial set is named in the group's dataset instead: Run.partial)."""
    failed = [r for r, held in rules.items() if not held and r != "whole_set"] if isinstance(rules, dict) else []
    return f"{definition} without {', '.join(failed)}" if definition == LEVANTER_BPB and failed else definition


def run_from_info(info: dict[str, Any], name: str, source: str) -> Run:
    """A `Run` from one run_info (ours or Marin's); hardware FLOPs derived when absent."""
    flops = as_number(info.get("training_hardware_flops"))
    seconds = as_number(info.get("training_time"))
    if flops is None and seconds is not None:
        per_device, devices = as_number(info.get("device_flops")), as_number(info.get("num_devices"))
        flops = per_device * devices * seconds if per_device and devices else None
    bpb, dataset, definition = _bpb_of(info)
    return Run(
        name=str(info.get("name") or name),
        source=source,
        info=info,
        bpb=bpb,
        hardware_flops=flops,
        training_time=seconds,
        target=_target(info),
        time_to_target=as_number(info.get("time_to_target")),
        dataset=dataset,
        bpb_definition=definition,
    )


def checked_run(info: dict[str, Any], name: str, source: str) -> Run:
    """`run_from_info` of a run_info that run_checks passes and that has something to rank by;
    ValueError (the reasons, one line) otherwise."""
    found = problems(info)
    if found:
        raise ValueError("; ".join(found))
    run = run_from_info(info, name, source)
    if run.bpb is None and run.target is None:
        raise ValueError("no BPB and no target: nothing to rank it by")
    return run


def runs_from_document(doc: Any, name: str, source: str) -> tuple[list[Run], list[str]]:
    """Every rankable run of one results file ({"runs": [{"run_info"}...]}, {"run_info"} or a bare
    run_info), and why each other run is not; ValueError when the file is none of these."""
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    entries = doc.get("runs", [doc])
    if not isinstance(entries, list) or not entries:
        raise ValueError("'runs' is not a non-empty list")
    runs, refused = [], []
    for i, entry in enumerate(entries):
        which = "" if len(entries) == 1 else f"run {i + 1}: "
        info = entry.get("run_info", entry) if isinstance(entry, dict) else None
        if not isinstance(info, dict) or not (
            any(map(is_bpb_key, info)) or {"training_time", "time_to_target"} & set(info)
        ):
            refused.append(f"{which}no run_info with results")
            continue
        try:
            runs.append(checked_run(info, name if len(entries) == 1 else f"{name}#{i + 1}", source))
        except ValueError as e:
            refused.append(f"{which}{e}")
    return runs, refused


def report_skipped(source: str, reasons: list[str]) -> None:
    """One stderr line for a file whose runs (some or all) are not ranked, with the first reasons."""
    more = f"; and {len(reasons) - SHOWN_REASONS} more" if len(reasons) > SHOWN_REASONS else ""
    print(f"skipping {printable(source)}: {'; '.join(reasons[:SHOWN_REASONS])}{more}", file=sys.stderr)


def _fingerprint(info: dict[str, Any]) -> str:
    return json.dumps(info, sort_keys=True, default=str)


def load_runs(uri: str, endpoint_url: str | None = None) -> list[Run]:
    """Every rankable run under `uri`; each file with runs that are not is named on stderr, once."""
    if uri.rstrip("/").rsplit("/", 1)[-1] == RESULTS_FILE:  # one file
        uri, _, only = uri.rstrip("/").rpartition("/")
        storage = open_storage(uri or ".", endpoint_url)
        keys = [only] if storage.exists(only) else []
    else:
        storage = open_storage(uri, endpoint_url)
        keys = [k for k in storage.list("") if k.rsplit("/", 1)[-1] == RESULTS_FILE]
    runs: list[Run] = []
    seen: set[str] = set()
    duplicates = 0
    for key in keys:
        source = storage.url(key)
        name = key.rsplit("/", 1)[0] if "/" in key else uri.rstrip("/").rsplit("/", 1)[-1]
        try:
            found, refused = runs_from_document(read_results(storage, key), name, source)
        except DataError as e:
            found, refused = [], [str(e).removeprefix(f"{source}: ")]
        except ValueError as e:
            found, refused = [], [str(e)]
        if refused:
            report_skipped(source, refused)
        for run in found:  # the same results copied to two places count once
            fingerprint = _fingerprint(run.info)
            if fingerprint in seen:
                duplicates += 1
                continue
            seen.add(fingerprint)
            runs.append(run)
    if duplicates:
        print(f"collapsed {duplicates} exact duplicate run(s)", file=sys.stderr)
    if keys and not runs:
        raise DataError(f"{uri}: none of the {len(keys)} {RESULTS_FILE} file(s) holds a run that can be ranked")
    names = [r.name for r in runs]
    for run in runs:  # the same manifest run twice: tell them apart by where they live
        if names.count(run.name) > 1:
            run.name = f"{run.name} ({run.source.rsplit('/', 2)[-2]})"
    return runs


# ---- Marin's site data file -----------------------------------------------------------------


def is_site_file(uri: str) -> bool:
    return uri.endswith(".json") and not uri.endswith(RESULTS_FILE) and Path(uri).is_file()


def load_site_runs(path: str | Path) -> list[Run]:
    """Runs from Marin's site data file (data/runs.json of marin-community/speedrun; MARIN_RUNS is
    the one published); entries that cannot be ranked are named on stderr, in one line."""
    file = Path(path)
    uri = file.resolve().as_uri()
    try:
        size = file.stat().st_size
        if size > MAX_SITE_BYTES:
            raise too_big(str(path), MAX_SITE_BYTES, size)
        entries = parse_results(file.read_bytes(), str(path))
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "run_name" in e for e in entries):
        raise DataError(f"{path}: not Marin's runs list (a JSON list of objects with run_name)")
    runs, refused = [], []
    for entry in entries:
        try:
            runs.append(
                checked_run({**entry, BPB_KEY: entry.get("eval_paloma_c4_en_bpb")}, str(entry["run_name"]), uri)
            )
        except ValueError as e:
            refused.append(f"run {shown(entry['run_name'])}: {e}")
    if refused:
        report_skipped(uri, refused)
    return runs
