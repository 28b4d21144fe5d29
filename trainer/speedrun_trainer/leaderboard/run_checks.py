"""What a results file must be before the leaderboard ranks it: a size, a depth, and a range for
every number the leaderboard reads.

`read_results` reads one results file of at most MAX_RESULTS_BYTES, judged from the object's size
before it is read (a bounded read where the backend reports no size), so a huge file costs nothing.
`problems` lists, one short line each, why a run_info cannot be ranked: a number that is not a
finite number in its range (a BPB of 1e308 or NaN, negative FLOPs), a text field that is not text,
a target without a metric. runs.py skips such runs and says so on stderr, once per file.

The bounds are wide: each is what no real run can pass (the reason beside it), so that every
results file a run of ours or of Marin's writes is ranked, and nothing absurd is.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from speedrun_api.metric_definitions import MARIN_BPB_KEY, dataset_from_bpb_key
from speedrun_trainer.data.storage import DataError, Storage, errors

# Ours are ~10 KB (the run_info with its resolved manifest), Marin's ~1 KB: 1 MiB is 100x ours.
MAX_RESULTS_BYTES = 1 << 20
# Marin's site data file holds every run, ~740 bytes each (71 KB for 96 runs): 16 MiB is 20,000 runs.
MAX_SITE_BYTES = 16 << 20
# Ours nest 6 deep (runs, run_info, spec, spec, model, ...), Marin's 4.
MAX_DEPTH = 32
# Bits per byte: a model that knows nothing scores log2(vocab) <= 18 bits per token, and a token
# is at least a byte; a diverged run scores worse, but 100 bits (p = 2^-100 per byte) ranks nothing.
MAX_BPB = 100.0
# Nats per token: ln(vocab) <= 12.5 knowing nothing; 100 as for BPB.
MAX_LOSS = 100.0
# The largest training runs to date used ~1e26 FLOPs; 1e30 is 10,000 times that.
MAX_FLOPS = 1e30
# Peak FLOP/s of one device: an H100's dense FP8 is ~2e15; 1e18 is 500 times that.
MAX_DEVICE_FLOPS = 1e18
# Devices in one run: the largest clusters hold ~1e5.
MAX_DEVICES = 1e7
# Seconds (training time, time to target): 1e9 is 32 years.
MAX_SECONDS = 1e9
# nanochat's CORE is a centered accuracy averaged over tasks: 1 is perfect, -1 the floor (a binary task).
CORE_RANGE = (-1.0, 1.0)
# Model FLOPs / peak hardware FLOPs: above 1 when device_flops understates the device (an
# override can); 100 times the peak is no measurement.
MAX_MFU = 100.0
TEXT_FIELDS = ("name", "bpb_dataset", "bpb_definition", "tokenizer", "val_loss_definition")
SHOWN_CHARS = 40  # of a bad value or key in a message


@dataclass(frozen=True)
class Bound:
    low: float
    high: float
    low_open: bool = False  # > low, not >= low

    def holds(self, x: float) -> bool:  # False for NaN
        return (x > self.low if self.low_open else x >= self.low) and x <= self.high

    def describe(self) -> str:
        return f"a number {'>' if self.low_open else '>='} {self.low:g} and <= {self.high:g}"


BPB = Bound(0.0, MAX_BPB, low_open=True)
FLOPS = Bound(0.0, MAX_FLOPS, low_open=True)
SECONDS = Bound(0.0, MAX_SECONDS)
LOSS = Bound(0.0, MAX_LOSS)
CORE = Bound(*CORE_RANGE)
NUMBERS = {
    "training_hardware_flops": FLOPS,
    "model_flops": FLOPS,
    "device_flops": Bound(0.0, MAX_DEVICE_FLOPS, low_open=True),
    "num_devices": Bound(1.0, MAX_DEVICES),
    "training_time": SECONDS,
    "time_to_target": SECONDS,
    "val_loss": LOSS,
    "core_metric": CORE,
    "mfu": Bound(0.0, MAX_MFU),
}
TARGETS = {"val_bpb": BPB, "val_loss": LOSS, "core": CORE}  # the spec's target metrics


def printable(text: str) -> str:
    """`text` with control characters (newlines, escapes) written as escapes: one line, no terminal tricks."""
    return text if text.isprintable() else "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def shown(value: Any) -> str:
    """A value, short, for a message (a huge string or integer is cut)."""
    if isinstance(value, bool):
        text = "true" if value else "false"  # as the JSON says it
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, int):  # str() refuses integers of 4,300+ digits
        text = str(value) if abs(value) < 10**SHOWN_CHARS else f"an integer of over {SHOWN_CHARS} digits"
    elif isinstance(value, str):
        text = repr(value[: SHOWN_CHARS + 1])
    else:
        text = type(value).__name__  # a list or an object: its type says enough
    text = printable(text)
    return text if len(text) <= SHOWN_CHARS + 2 else text[:SHOWN_CHARS] + "…"


def _key(key: str) -> str:
    text = printable(key)
    return text if len(text) <= 2 * SHOWN_CHARS else text[: 2 * SHOWN_CHARS] + "…"


def number_problem(key: str, value: Any, bound: Bound) -> str | None:
    """Why `value` of `key` is not a number within `bound` (None: it is, or it is null: not recorded)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{_key(key)}: not a number ({shown(value)})"
    try:
        ok = bound.holds(float(value))
    except OverflowError:  # an integer beyond any float
        ok = False
    return None if ok else f"{_key(key)} = {shown(value)}: must be {bound.describe()}"


def target_of(info: dict[str, Any]) -> Any:
    """The run's target as recorded: `target`, else the resolved manifest's (older files); None if none."""
    target = info.get("target")
    if target is None and isinstance(info.get("spec"), dict):
        spec = info["spec"].get("spec", info["spec"])
        target = spec.get("target") if isinstance(spec, dict) else None
    return target


def _target_problem(target: Any) -> str | None:
    if target is None:
        return None
    if not isinstance(target, dict) or not isinstance(target.get("metric"), str) or not target["metric"]:
        return "target: needs a metric (text) and a value"
    return number_problem(
        "target.value", target.get("value"), TARGETS.get(target["metric"], Bound(-math.inf, math.inf))
    )


def is_bpb_key(key: Any) -> bool:
    return isinstance(key, str) and (key == MARIN_BPB_KEY or dataset_from_bpb_key(key) is not None)


def problems(info: dict[str, Any]) -> list[str]:
    """Why this run_info cannot be ranked (empty: it can): each number in range, text where text is keyed on."""
    found = [p for key, bound in NUMBERS.items() if (p := number_problem(key, info.get(key), bound))]
    found += [p for key, value in info.items() if is_bpb_key(key) and (p := number_problem(key, value, BPB))]
    found += [
        f"{key}: not text ({shown(info[key])})"
        for key in TEXT_FIELDS
        if info.get(key) is not None and not isinstance(info[key], str)
    ]
    if (target := _target_problem(target_of(info))) is not None:
        found.append(target)
    if (marin := _marin_key_problem(info)) is not None:
        found.append(marin)
    parts = [info.get(k) for k in ("device_flops", "num_devices", "training_time")]
    derived = not found and info.get("training_hardware_flops") is None and None not in parts  # runs.run_from_info
    if derived and math.prod(float(p) for p in parts) > MAX_FLOPS:
        found.append(f"device_flops x num_devices x training_time: must be <= {MAX_FLOPS:g}")
    return found


def _marin_key_problem(info: dict[str, Any]) -> str | None:
    """Marin's key on a file that records one of levanter's rules failing (`bpb_rules`) or a partial
    set (`eval_set.partial`): Marin's track takes only whole-set levanter numbers. Marin's own
    files record neither, and pass."""
    if MARIN_BPB_KEY not in info:
        return None
    rules, evaluated = info.get("bpb_rules"), info.get("eval_set")
    failed = {r for r, held in rules.items() if held is not True} if isinstance(rules, dict) else set()
    if isinstance(evaluated, dict) and evaluated.get("partial") is True:
        failed.add("whole_set")
    if not failed:
        return None
    return f"{MARIN_BPB_KEY}: recorded with levanter's rules not held ({', '.join(sorted(failed))})"


def depth(doc: Any) -> int:
    """How deep lists and objects nest in `doc` (counted without recursion: any depth is safe)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def parse_results(data: bytes, url: str) -> Any:
    """A results file's JSON; DataError (one line) for anything else, nesting too deep included."""
    try:
        doc = json.loads(data)
    except RecursionError:
        raise DataError(f"{url}: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # not JSON, not UTF-8, an integer of more digits than Python converts
        raise DataError(f"{url}: not valid JSON ({printable(str(e))[:120]})") from None
    if depth(doc) > MAX_DEPTH:
        raise DataError(f"{url}: nested deeper than {MAX_DEPTH} levels")
    return doc


def _mib(limit: int) -> str:
    return f"{limit / 2**20:g} MiB"


def too_big(url: str, limit: int, size: int | None = None) -> DataError:
    how = f"{size:,} bytes" if size is not None else f"over {limit:,} bytes"
    return DataError(f"{url}: {how}; a results file may hold {_mib(limit)}")


def read_results(storage: Storage, key: str, limit: int = MAX_RESULTS_BYTES) -> Any:
    """The JSON of one results file, refused unread when the object's size is over `limit`."""
    url, path = storage.url(key), storage.path(key)
    with errors(url, storage.fs):
        size = storage.fs.info(path).get("size")
        if isinstance(size, int) and size > limit:
            raise too_big(url, limit, size)
        if storage.scheme != "file" and isinstance(size, int):  # one GET of an object this size
            data = bytes(storage.fs.cat_file(path)) if size else b""
        else:  # a local file may grow or be a device; no size: read one byte past the limit, no more
            with storage.fs.open(path, "rb", block_size=limit + 1) as f:
                data = f.read(limit + 1)
    if len(data) > limit:
        raise too_big(url, limit)
    return parse_results(data, url)
