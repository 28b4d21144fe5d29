"""Property test: `speedrun leaderboard` over hostile results trees.

Hypothesis (fixed seed, derandomized, no example database) writes a tree of 1-8 results files,
each drawn from: a good run (in our shape, Marin's `{"run_info"}` or a bare run_info; with huge
strings, unknown keys nested a little, and numbers on their ranges' edges); the same with one
number replaced by a hostile value (NaN, ±inf, 1e308, negative, an integer of 400 digits, text,
a boolean, a list, an object); a text field that is not text; garbage (not JSON, not UTF-8,
empty, a JSON scalar or list, `runs` of the wrong shape); nesting past any parser; no results
at all, or a null BPB without a target; a file over the size cap; a file of several runs, one bad.

The rules, for every tree:
- the leaderboard never raises: exit 0 with the ranked runs, or 2 with one line when no run can
  be ranked;
- it ranks exactly the valid runs: `--json` holds them and no other, and ranks the marin track
  1..n;
- it names every file holding a run it cannot rank exactly once on stderr, and no other file;
- its tables (the default, fitted output) have no line over 80 columns.
MAX_EXAMPLES trees run in `make test`.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, seed
from hypothesis import strategies as st

from speedrun_trainer.cli.speedrun import main as speedrun
from speedrun_trainer.leaderboard.run_checks import MAX_BPB, MAX_FLOPS, MAX_RESULTS_BYTES
from speedrun_trainer.leaderboard.runs import BPB_KEY
from speedrun_trainer.leaderboard.table_text import TABLE_WIDTH
from tests.support.helpers import property_settings

MAX_EXAMPLES = 200
NUMBER_FIELDS = [
    BPB_KEY,
    "training_hardware_flops",
    "model_flops",
    "training_time",
    "time_to_target",
    "val_loss",
    "core_metric",
    "mfu",
    "device_flops",
    "num_devices",
]
HOSTILE_NUMBERS = st.sampled_from(
    [math.nan, math.inf, -math.inf, 1e308, -5.0, -(10**400), 10**400, "1.2", "", True, [1.0], {"v": 1.0}]
)
GARBAGE = st.sampled_from(
    [b"", b"{not json", b"\xff\xfe\x00{", b"null", b"42", b'"text"', b"[1, 2]", b"{}", b'{"runs": []}',
     b'{"runs": "x"}', b'{"runs": [5]}', b'{"runs": [{"run_info": [1]}]}', b'{"run_info": "x"}',
     b"[" * 50_000 + b"]" * 50_000, b'{"a": ' * 40 + b"1" + b"}" * 40]
)  # fmt: skip
HUGE_TEXT = st.sampled_from(["", "ü\u2028\x1b[31m", "n" * 300, "d" * 200_000])


def nested(levels: int) -> Any:
    node: Any = "leaf"
    for _ in range(levels):
        node = {"k": [node]}
    return node


@st.composite
def good_info(draw: st.DrawFn, name: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": name,
        "author": draw(st.sampled_from([{"name": "me"}, "someone", None, {"name": draw(HUGE_TEXT)}])),
        BPB_KEY: draw(st.one_of(st.floats(0.5, 3.0), st.sampled_from([MAX_BPB, 5e-324]))),
        "training_hardware_flops": draw(st.one_of(st.floats(1e15, 1e22), st.sampled_from([MAX_FLOPS, 5e-324]))),
        "training_time": draw(st.one_of(st.floats(0, 1e6), st.none())),
        "description": draw(HUGE_TEXT),
    }
    if draw(st.booleans()):
        info["unknown"] = nested(draw(st.integers(0, 5)))
    if draw(st.booleans()):
        info["core_metric"] = draw(st.sampled_from([-1.0, 0.0, 1.0, None]))
    return info


def wrap(info: Any, shape: str) -> Any:
    return {"runs": [{"run_info": info}]} if shape == "ours" else {"run_info": info} if shape == "marin" else info


@st.composite
def results_file(draw: st.DrawFn, i: int) -> tuple[bytes, list[str], bool]:
    """(the file's bytes, the names of its valid runs, whether the file must be named on stderr)."""
    kind = draw(st.sampled_from(["good", "good", "good", "number", "text", "garbage", "empty", "huge", "several"]))
    event(kind)
    name, shape = f"run-{i}", draw(st.sampled_from(["ours", "marin", "bare"]))
    info = draw(good_info(name))
    if kind == "number":
        target = draw(st.sampled_from([*NUMBER_FIELDS, "target"]))
        value = draw(HOSTILE_NUMBERS)
        info[target] = {"metric": "val_loss", "value": value} if target == "target" else value
    elif kind == "text":
        info[draw(st.sampled_from(["name", "bpb_definition", "bpb_dataset", "tokenizer"]))] = draw(
            st.sampled_from([[1], {"a": 1}, 5, True])
        )
    elif kind == "garbage":
        return draw(GARBAGE), [], True
    elif kind == "empty":
        info = draw(st.sampled_from([{"name": name}, {"name": name, BPB_KEY: None, "training_time": 1.0}]))
    elif kind == "huge":
        info["description"] = "h" * (MAX_RESULTS_BYTES + 1)
    elif kind == "several":
        bad = {**draw(good_info(f"{name}-bad")), "training_hardware_flops": draw(HOSTILE_NUMBERS)}
        runs = [{"run_info": info}, {"run_info": bad}]
        return json.dumps({"runs": runs[:: draw(st.sampled_from([1, -1]))]}).encode(), [name], True
    valid = kind == "good"
    return json.dumps(wrap(info, shape)).encode(), [name] if valid else [], not valid


@st.composite
def trees(draw: st.DrawFn) -> list[tuple[bytes, list[str], bool]]:
    return [draw(results_file(i)) for i in range(draw(st.integers(1, 8)))]


def _lines(capsys: pytest.CaptureFixture[str]) -> tuple[str, list[str]]:
    out, err = capsys.readouterr()
    return out, err.splitlines()


@seed(28)
@property_settings(MAX_EXAMPLES)
@given(tree=trees())
def test_hostile_trees_rank_the_valid_runs_and_name_each_bad_file_once(
    tree: list[tuple[bytes, list[str], bool]], capsys: pytest.CaptureFixture[str]
) -> None:
    valid = {name for _, names, _ in tree for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (data, _, _) in enumerate(tree):
            (Path(tmp) / f"f{i}").mkdir()
            (Path(tmp) / f"f{i}" / "speedrun_results.json").write_bytes(data)
        capsys.readouterr()
        code = speedrun(["leaderboard", tmp, "--json"])
        out, err = _lines(capsys)
        for i, (_, _, named) in enumerate(tree):
            mentions = sum(f"/f{i}/speedrun_results.json: " in line for line in err)
            assert mentions == (1 if named else 0), (i, err)
        assert all(len(line) < 1000 and "Traceback" not in line for line in err)
        if not valid:
            assert code == 2 and err[-1].startswith("speedrun leaderboard: ") and "can be ranked" in err[-1]
            return
        assert code == 0
        ranked = json.loads(out)
        assert sorted(r["name"] for r in ranked) == sorted(valid)
        assert [r["ranks"]["marin"] for r in ranked] == list(range(1, len(valid) + 1))
        assert speedrun(["leaderboard", tmp]) == 0
        text, _ = _lines(capsys)
        assert all(len(line) <= TABLE_WIDTH for line in text.splitlines())
