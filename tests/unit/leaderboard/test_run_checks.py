"""The leaderboard reads anything (run_checks.py): every number checked where results are loaded,
each file that cannot be ranked named once on stderr with the reason, a size cap read from the
object's size before any byte is, and Marin's site data file checked the same way.

    pytest tests/unit/leaderboard/test_run_checks.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from speedrun_trainer.cli.speedrun import main as speedrun
from speedrun_trainer.leaderboard.run_checks import MAX_RESULTS_BYTES, problems
from speedrun_trainer.leaderboard.runs import BPB_KEY, MARIN_RUNS

GOOD = {"author": {"name": "me"}, "training_time": 100.0, "model_flops": 5e17}


def write(root: Path, folder: str, info: dict[str, Any] | None = None, raw: bytes | None = None) -> Path:
    path = root / folder / "speedrun_results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw if raw is not None else json.dumps({"runs": [{"run_info": info}]}).encode())
    return path


def good(name: str, bpb: float, flops: float, **extra: Any) -> dict[str, Any]:
    return {**GOOD, "name": name, BPB_KEY: bpb, "training_hardware_flops": flops, **extra}


def board(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, list[str]]:
    code = speedrun(["leaderboard", *args, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err.splitlines()


def test_the_issues_files_are_named_and_the_rest_ranked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "ok-a", good("ok-a", 1.20, 2e18))
    write(tmp_path, "ok-b", good("ok-b", 1.10, 4e18))
    bad = {
        "huge-bpb": good("huge-bpb", 1e308, 1e18),  # was an OverflowError in band_of
        "negative-flops": good("negative-flops", 1.0, -1e20),  # took rank 1 and the frontier
        "nan-bpb": good("nan-bpb", math.nan, 1e18),  # vanished without a note
        "inf-bpb": good("inf-bpb", math.inf, 1e18),
        "text-flops": good("text-flops", 1.0, "1e18"),  # type: ignore[arg-type]
        "int-beyond-float": good("int-beyond-float", 1.0, 10**400),
        "null-bpb": good("null-bpb", None, 1e18),  # type: ignore[arg-type]  # a diverged run of ours
        "list-definition": good("list-definition", 1.0, 1e18, bpb_definition=["x"]),
    }
    for folder, info in bad.items():
        write(tmp_path, folder, info)
    code, ranked, err = board(capsys, str(tmp_path))
    assert code == 0
    assert [(r["name"], r["ranks"]["marin"], r["pareto"]) for r in ranked] == [("ok-b", 1, True), ("ok-a", 2, True)]
    assert len(err) == len(bad) and all(line.startswith("skipping file://") for line in err)
    for folder in bad:
        assert sum(f"/{folder}/speedrun_results.json: " in line for line in err) == 1, folder
    said = {folder: next(line for line in err if f"/{folder}/" in line).split(".json: ", 1)[1] for folder in bad}
    assert said["huge-bpb"] == "eval/paloma/c4_en/bpb = 1e+308: must be a number > 0 and <= 100"
    assert said["negative-flops"] == "training_hardware_flops = -1e+20: must be a number > 0 and <= 1e+30"
    assert said["nan-bpb"] == "eval/paloma/c4_en/bpb = nan: must be a number > 0 and <= 100"
    assert said["text-flops"] == "training_hardware_flops: not a number ('1e18')"
    assert (
        said["int-beyond-float"]
        == "training_hardware_flops = an integer of over 40 digits: must be a number > 0 and <= 1e+30"
    )
    assert said["null-bpb"] == "no BPB and no target: nothing to rank it by"
    assert said["list-definition"] == "bpb_definition: not text (list)"


def test_a_file_over_the_cap_is_refused_unread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "ok", good("ok", 1.2, 2e18))
    big = write(tmp_path, "big", raw=b"")
    with big.open("wb") as f:
        f.truncate(50 * 2**20)  # 50 MB (sparse): read whole, it took 800 MB
    from fsspec.implementations.local import LocalFileSystem

    opened: list[str] = []
    real_open = LocalFileSystem._open
    monkeypatch.setattr(
        LocalFileSystem, "_open", lambda fs, path, *a, **k: opened.append(path) or real_open(fs, path, *a, **k)
    )
    code, ranked, err = board(capsys, str(tmp_path))
    assert code == 0 and [r["name"] for r in ranked] == ["ok"]
    assert err == [f"skipping {big.as_uri()}: 52,428,800 bytes; a results file may hold 1 MiB"]
    assert not any(path.endswith("/big/speedrun_results.json") for path in opened)  # not one byte read


def test_the_cap_on_s3_comes_from_the_objects_size(capsys: pytest.CaptureFixture[str], s3_bucket: Any) -> None:
    client = s3_bucket.client()
    ok = json.dumps({"runs": [{"run_info": good("ok", 1.2, 2e18)}]}).encode()
    client.put_object(Bucket=s3_bucket.name, Key="board/ok/speedrun_results.json", Body=ok)
    client.put_object(Bucket=s3_bucket.name, Key="board/big/speedrun_results.json", Body=b" " * (MAX_RESULTS_BYTES + 1))
    client.put_object(Bucket=s3_bucket.name, Key="board/empty/speedrun_results.json", Body=b"")
    code, ranked, err = board(capsys, f"s3://{s3_bucket.name}/board")
    assert code == 0 and [r["name"] for r in ranked] == ["ok"]
    assert err == [
        f"skipping s3://{s3_bucket.name}/board/big/speedrun_results.json: 1,048,577 bytes;"
        " a results file may hold 1 MiB",
        f"skipping s3://{s3_bucket.name}/board/empty/speedrun_results.json: not valid JSON"
        " (Expecting value: line 1 column 1 (char 0))",
    ]


def test_each_file_is_named_once_whatever_the_views(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i, size in enumerate((1e18, 3e18, 1e19, 3e19)):
        write(tmp_path, f"sweep/s{i}", good(f"sweep/s{i}", 1.5 - 0.1 * i, size))
    write(tmp_path, "sweep/bad", good("sweep/bad", -1.0, 1e18))
    page = tmp_path / "page.html"
    code = speedrun(["leaderboard", str(tmp_path), "--view", "scaling", "--fit", "marin", "--html", str(page)])
    err = capsys.readouterr().err.splitlines()
    assert code == 0 and page.exists()
    assert [line for line in err if "sweep/bad" in line] == [
        f"skipping {(tmp_path / 'sweep/bad/speedrun_results.json').as_uri()}:"
        " eval/paloma/c4_en/bpb = -1: must be a number > 0 and <= 100"
    ]


def test_several_runs_in_one_file_and_one_line_for_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [good("fine", 1.2, 2e18), good("nan", math.nan, 1e18), {"name": "empty"}, 7, good("neg", 1.2, 1e18, mfu=-1)]
    write(tmp_path, "many", raw=json.dumps({"runs": [{"run_info": r} for r in runs]}).encode())
    code, ranked, err = board(capsys, str(tmp_path))
    assert code == 0 and [r["name"] for r in ranked] == ["fine"]
    assert err == [
        f"skipping {(tmp_path / 'many/speedrun_results.json').as_uri()}: run 2: eval/paloma/c4_en/bpb = nan: must be"
        " a number > 0 and <= 100; run 3: no run_info with results; run 4: no run_info with results; and 1 more"
    ]


def test_nothing_rankable_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "a", raw=b"[" * 100_000 + b"]" * 100_000)  # deeper than Python's parser goes
    deep: Any = 1
    for _ in range(30):  # runs, entry, run_info, then 30 lists: 33 levels
        deep = [deep]
    write(tmp_path, "b", good("b", 1.2, 1e18, x=deep))
    write(tmp_path, "c", raw=b"\xff\xfe{")
    code, _, err = board(capsys, str(tmp_path))
    assert code == 2 and len(err) == 4
    assert err[0].endswith("/a/speedrun_results.json: nested deeper than 32 levels")
    assert err[1].endswith("/b/speedrun_results.json: nested deeper than 32 levels")
    assert "/c/speedrun_results.json: not valid JSON" in err[2]
    assert err[3] == (
        f"speedrun leaderboard: {tmp_path}: none of the 3 speedrun_results.json file(s) holds a run that can be ranked"
    )


def test_marins_site_file_is_checked_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entries = json.loads(MARIN_RUNS.read_text())
    assert all(problems({**e, BPB_KEY: e["eval_paloma_c4_en_bpb"]}) == [] for e in entries)  # all 96 rank
    entries[0]["training_hardware_flops"] = -1.0
    entries[1]["eval_paloma_c4_en_bpb"] = 1e308
    site = tmp_path / "runs.json"
    site.write_text(json.dumps(entries))
    code, ranked, err = board(capsys, str(site))
    assert code == 0 and len(ranked) == 94
    assert err == [
        f"skipping {site.as_uri()}: run 'adamc_llama_scaling/130m': training_hardware_flops = -1: must be a number > 0"
        " and <= 1e+30; run 'adamc_llama_scaling/1_2b': eval/paloma/c4_en/bpb = 1e+308: must be a number > 0 and <= 100"
    ]


@pytest.mark.parametrize(
    ("info", "said"),
    [
        ({"training_time": -1.0}, ["training_time = -1: must be a number >= 0 and <= 1e+09"]),
        ({"core_metric": 1.5}, ["core_metric = 1.5: must be a number >= -1 and <= 1"]),
        ({"num_devices": 0}, ["num_devices = 0: must be a number >= 1 and <= 1e+07"]),
        ({"mfu": True}, ["mfu: not a number (true)"]),
        (
            {"target": {"metric": "val_loss", "value": math.inf}},
            ["target.value = inf: must be a number >= 0 and <= 100"],
        ),
        ({"target": {"value": 3.0}}, ["target: needs a metric (text) and a value"]),
        (
            {"spec": {"spec": {"target": {"metric": "val_bpb", "value": 0}}}},
            ["target.value = 0: must be a number > 0 and <= 100"],
        ),
        ({"eval/x\ny/bpb": -2}, ["eval/x\\ny/bpb = -2: must be a number > 0 and <= 100"]),  # one line, always
        (
            {"device_flops": 1e18, "num_devices": 1e7, "training_time": 1e9},
            ["device_flops x num_devices x training_time: must be <= 1e+30"],
        ),
        ({"name": "x" * 10**6, "tokenizer": None, "core_metric": -1, "training_time": 0}, []),  # edges and nulls pass
    ],
)
def test_each_number_has_its_range(info: dict[str, Any], said: list[str]) -> None:
    assert problems(info) == said
