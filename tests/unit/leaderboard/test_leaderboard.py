"""Tests of `speedrun leaderboard` (speedrun_trainer.leaderboard.ranking and leaderboard_render).

    pytest tests/unit/leaderboard/test_leaderboard.py

Fixtures in tests/data/leaderboard/: three results files in Marin's shape (no name, no
num_devices/device_flops, one without the "runs" list) and five in ours (time-to-CORE runs in
nanochat's style, time-to-val_loss runs in BottleCap's). The plot is drawn and its pixels looked
at; the HTML page is opened in headless Chromium (tests/support/cdp.py) and used as a person would: a
click on a header sorts, hovering a point shows its tooltip, a drag zooms, the axis toggles
(skipped, saying why, where Chromium is not installed).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from speedrun_trainer.cli.speedrun import main as speedrun
from speedrun_trainer.leaderboard.frontier_plot import FRONTIER_COLOR
from speedrun_trainer.leaderboard.ranking import build_tables, is_bpb_track, rank_runs
from speedrun_trainer.leaderboard.runs import BPB_KEY, Run, run_from_info
from tests.support.helpers import TEST_DATA
from tests.support.pixels import load_png, pixels_near

DATA = TEST_DATA / "leaderboard"
PARETO = {"marin/llama_130m_adamw", "marin/llama_75m_adamw", "bottlecap-muon-wd", "d26-bf16", "d26-fp8", "d20"}
# Our fixtures (written by this project, not published) measured BPB on their own benchmarks' data: each
# dataset is its own track, apart from Marin's C4-EN.
BOTTLECAP_TRACK = "bpb:fineweb10B-gpt2/val [levanter-bpb-cross-doc]"
NANOCHAT_TRACK = "bpb:nanochat-fineweb-edu/val [levanter-bpb-cross-doc]"


def run(name: str, flops: float | None = None, bpb: float | None = None, seconds: float = 100.0, **extra: Any) -> Run:
    info = {"name": name, "training_hardware_flops": flops, BPB_KEY: bpb, "training_time": seconds, **extra}
    return run_from_info(info, name, f"file:///{name}/speedrun_results.json")


def test_pareto_frontier_bands_and_ties() -> None:
    runs = [
        run("cheap", 0.5e18, 1.30),
        run("a", 1e18, 1.20),
        run("b", 2e18, 1.10),
        run("c", 2e18, 1.15),  # b: same FLOPs, better BPB
        run("d", 4e18, 1.10),  # b: same BPB, fewer FLOPs
        run("e", 4e18, 1.00, seconds=200.0),
        run("f", 4e18, 1.00, seconds=150.0),  # equal: both optimal
        run("no-flops", None, 0.9),
        run("no-bpb", 1e18, None),
    ]
    tracks = rank_runs(runs, band_width=0.1)
    marin = tracks["marin"]
    assert [r.name for r in marin] == ["f", "e", "b", "d", "c", "a", "cheap"]  # BPB, FLOPs, then time
    assert {r.name for r in runs if r.pareto} == {"cheap", "a", "b", "e", "f"}
    assert {r.name: r.band for r in marin} == {
        "f": "1.0-1.1",
        "e": "1.0-1.1",
        "b": "1.1-1.2",
        "d": "1.1-1.2",
        "c": "1.1-1.2",
        "a": "1.2-1.3",
        "cheap": "1.3-1.4",
    }
    bands = build_tables(tracks, 0.1)[1]
    assert [row[2] for row in bands.rows] == ["f", "e", "b", "c", "d", "a", "cheap"]  # FLOPs within a band
    assert [row[1] for row in bands.rows] == ["1", "2", "1", "2", "3", "1", "1"]
    assert runs[-1].tracks == runs[-2].tracks == []


def test_time_to_target_tracks() -> None:
    loss = {"metric": "val_loss", "value": 3.28}
    runs = [
        run("slow", target=loss, time_to_target=300.0, seconds=300.0),
        run("tie-long", target=loss, time_to_target=100.0, seconds=150.0),
        run("tie-short", target=loss, time_to_target=100.0, seconds=120.0),
        run("missed-far", target=loss, time_to_target=None, val_loss=3.35),
        run("missed-near", target=loss, time_to_target=None, val_loss=3.30),
        run("core-miss", target={"metric": "core", "value": 0.25}, time_to_target=None, core_metric=0.2),
        run("core-closer", target={"metric": "core", "value": 0.25}, time_to_target=None, core_metric=0.24),
        run("other-value", target={"metric": "val_loss", "value": 3.5}, time_to_target=10.0),
        # an older file: no "target" key, but the resolved manifest says it
        run(
            "from-spec",
            time_to_target=50.0,
            spec={"kind": "SpeedrunJob", "spec": {"target": {"metric": "val_loss", "value": 3.28}}},
        ),
    ]
    tracks = rank_runs(runs)
    assert list(tracks) == ["time-to-core:0.25", "time-to-val_loss:3.28", "time-to-val_loss:3.5"]
    board = tracks["time-to-val_loss:3.28"]
    assert [(r.name, r.ranks["time-to-val_loss:3.28"]) for r in board] == [
        ("from-spec", 1),
        ("tie-short", 2),
        ("tie-long", 3),
        ("slow", 4),
        ("missed-near", None),
        ("missed-far", None),
    ]
    assert [r.name for r in tracks["time-to-core:0.25"]] == ["core-closer", "core-miss"]  # higher is closer
    assert runs[0].tracks == ["time-to-val_loss:3.28"] and not runs[0].pareto


def test_tables_from_fixture_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert speedrun(["leaderboard", str(DATA), "--wide"]) == 0  # every column, one line per row
    out = capsys.readouterr().out
    sections = {block.splitlines()[0]: block.splitlines()[4:] for block in out.strip().split("\n\n")}
    titles = list(sections)
    assert titles == [
        "== marin: C4-EN bits per byte vs training hardware FLOPs",
        "== marin: BPB bands of 0.1",
        f"== {BOTTLECAP_TRACK}: fineweb10B-gpt2/val [levanter-bpb-cross-doc] bits per byte vs training hardware FLOPs",
        f"== {BOTTLECAP_TRACK}: BPB bands of 0.1",
        f"== {NANOCHAT_TRACK}: nanochat-fineweb-edu/val [levanter-bpb-cross-doc] bits per byte vs training"
        " hardware FLOPs",
        f"== {NANOCHAT_TRACK}: BPB bands of 0.1",
        "== time-to-core:0.256525: training time until core >= 0.256525",
        "== time-to-val_loss:3.3821: training time until val_loss <= 3.3821 (fineweb10B-gpt2/val, gpt2,"
        " mean-loss-all-positions over 1048576 tokens)",
    ]

    def names(title: str) -> list[str]:
        return [row[2] if row[1] == "*" else row[1] for row in (line.split() for line in sections[title])]

    assert names(titles[0]) == ["marin/llama_130m_adamw", "marin/llama_300m_muon", "marin/llama_75m_adamw"]
    assert names(titles[2]) == ["bottlecap-muon-wd", "bottlecap-baseline"]
    assert names(titles[4]) == ["d26-bf16", "d26-fp8", "d20"]
    assert "10.6%" in sections[titles[0]][0]  # Marin's files have no mfu: model / hardware FLOPs
    titles = [titles[0], titles[1], titles[6], titles[7]]
    core = [line.split()[:2] for line in sections[titles[2]]]
    assert core == [["1", "d26-fp8"], ["2", "d26-bf16"], ["-", "d20"]]  # the tie goes to less training
    assert "not reached" in sections[titles[2]][2]
    loss = [line.split()[:2] for line in sections[titles[3]]]
    assert loss == [["1", "bottlecap-muon-wd"], ["2", "bottlecap-baseline"]]
    header = out.splitlines()[2]
    assert header.index("BPB") + 3 == header.index("hardware FLOPs") - 2  # numbers right-aligned


def test_json_from_file_and_s3_prefix(capsys: pytest.CaptureFixture[str], s3_bucket: Any) -> None:
    assert speedrun(["leaderboard", DATA.as_uri(), "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert len(from_file) == 8 and all(isinstance(r["pareto"], bool) and r["tracks"] for r in from_file)
    assert {r["name"] for r in from_file if r["pareto"]} == PARETO
    by_name = {r["name"]: r for r in from_file}
    assert by_name["marin/llama_300m_muon"]["tracks"] == ["marin"]  # Marin's top-level run_info file
    assert by_name["d26-fp8"]["tracks"] == [NANOCHAT_TRACK, "time-to-core:0.256525"]
    assert by_name["d26-fp8"]["ranks"] == {NANOCHAT_TRACK: 2, "time-to-core:0.256525": 1}
    assert by_name["d26-fp8"][BPB_KEY] is None  # never filed under Marin's key
    assert by_name["d20"]["ranks"]["time-to-core:0.256525"] is None
    assert [r["ranks"].get("marin") for r in from_file] == [1, 2, 3, None, None, None, None, None]
    client = s3_bucket.client()
    for path in DATA.rglob("speedrun_results.json"):
        client.put_object(
            Bucket=s3_bucket.name, Key=f"boards/{path.relative_to(DATA).as_posix()}", Body=path.read_bytes()
        )
    assert speedrun(["leaderboard", f"s3://{s3_bucket.name}/boards", "--json"]) == 0
    from_s3 = json.loads(capsys.readouterr().out)
    for row in (*from_file, *from_s3):
        row.pop("source")
    assert from_s3 == from_file


def test_errors_are_one_line_and_bad_files_are_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_bucket: Any
) -> None:
    assert speedrun(["leaderboard", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no speedrun_results.json found" in err
    assert speedrun(["leaderboard", f"s3://{s3_bucket.name}-missing/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    shutil.copytree(DATA / "bottlecap", tmp_path / "board")
    (tmp_path / "board" / "broken").mkdir()
    (tmp_path / "board" / "broken" / "speedrun_results.json").write_text("{not json")
    assert speedrun(["leaderboard", str(tmp_path / "board"), "--json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 2
    assert re.fullmatch(r"skipping \S+/broken/speedrun_results.json: .*not valid JSON.*\n", captured.err)
    one = tmp_path / "board" / "baseline" / "speedrun_results.json"
    assert speedrun(["leaderboard", str(one), "--json"]) == 0  # a single file works too
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["bottlecap-baseline"]
    no_bpb = tmp_path / "no-bpb" / "x" / "speedrun_results.json"
    no_bpb.parent.mkdir(parents=True)
    target = {"metric": "val_loss", "value": 3.0}  # ranked by time to target; no BPB to plot
    no_bpb.write_text(
        json.dumps({"runs": [{"run_info": {"training_time": 5.0, "time_to_target": None, "target": target}}]})
    )
    assert speedrun(["leaderboard", str(tmp_path / "no-bpb"), "--plot", str(tmp_path / "p.png")]) == 2
    assert "no run has both a BPB and hardware FLOPs to plot" in capsys.readouterr().err


def test_plot_png_shows_the_frontier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plots" / "board.png"
    assert speedrun(["leaderboard", str(DATA), "--plot", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    image = load_png(out.read_bytes())
    assert image.shape == (605, 990, 3)  # 9 x 5.5 inches at 110 dpi
    assert image.std() > 20  # not blank
    assert pixels_near(image, FRONTIER_COLOR) > 1500  # the staircase and its four markers
    # Only runs on the frontier are drawn in its color: a board of dominated runs shows one point.
    lonely = rank_runs([run("x", 1e18, 1.2)])["marin"]
    from speedrun_trainer.leaderboard.frontier_plot import plot_png

    single = load_png(plot_png(lonely) or b"")
    assert 0 < pixels_near(single, FRONTIER_COLOR) < pixels_near(image, FRONTIER_COLOR) / 3


def board_with_links(tmp_path: Path, only: str | None = None) -> Path:
    """The fixture runs (or one folder of them), one with a W&B link (none of the fixtures has one)."""
    board = tmp_path / "board"
    shutil.copytree(DATA, board)
    for folder in board.iterdir():
        if only is not None and folder.name != only:
            shutil.rmtree(folder)
    d20 = board / "nanochat" / "d20" / "speedrun_results.json"
    doc = json.loads(d20.read_text())
    doc["runs"][0]["run_info"]["wandb_run_link"] = "https://wandb.ai/tester/speedrun/runs/d20abc"
    d20.write_text(json.dumps(doc))
    return board


def test_html_page_is_one_self_contained_file(tmp_path: Path) -> None:
    page = tmp_path / "board.html"
    assert speedrun(["leaderboard", str(board_with_links(tmp_path)), "--html", str(page)]) == 0
    text = page.read_text()
    assert re.search(r"<(?:script|link|img|iframe)[^>]+(?:src|href)=", text) is None  # nothing to fetch
    assert "default-src 'none'" in text  # and the browser is told to fetch nothing
    assert text.count('<table class="board" id="table-') == 8 and text.count('class="highlight"') >= 4
    assert '<a href="https://wandb.ai/tester/speedrun/runs/d20abc"' in text
    assert f'<a href="{(tmp_path / "board" / "nanochat" / "d20" / "speedrun_results.json").as_uri()}"' in text


def test_frontier_follows_marins_site_on_either_axis() -> None:
    from speedrun_trainer.leaderboard.page import frontier

    runs = [
        run("a", 1e18, 1.30, model_flops=5e17),
        run("b", 2e18, 1.20, model_flops=4e17),
        run("c", 2e18, 1.20, model_flops=9e17),
        run("d", 4e18, 1.25, model_flops=1e17),
    ]
    assert frontier(runs, "hardware") == {"a", "b"}  # c ties b and comes later; d is worse than b
    assert frontier(runs, "model") == {"d", "b"}  # by model FLOPs: d (1e17), then b (4e17) beats it


def test_html_page_in_headless_chromium_sorts_on_a_click_and_shows_a_tooltip(tmp_path: Path) -> None:
    """The page in a real browser: a click on a header sorts, hovering a point shows its tooltip,
    the x-axis toggle redraws the chart with the model-FLOPs frontier."""
    from tests.support.cdp import Browser, find_chromium

    if find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium): the page was not opened")
    page = tmp_path / "board.html"  # nanochat's fixtures: one BPB track, the chart's
    assert speedrun(["leaderboard", str(board_with_links(tmp_path, only="nanochat")), "--html", str(page)]) == 0
    with Browser.open(page.as_uri(), tmp_path / "profile") as browser:
        browser.wait_for("document.querySelectorAll('#chart circle.run').length")
        assert browser.evaluate("document.querySelectorAll('#chart circle.run').length") == 3
        runs_in = "Array.from(document.querySelectorAll('#table-0 tbody tr')).map(r => r.cells[2].textContent)"
        flops_in = "Array.from(document.querySelectorAll('#table-0 tbody tr')).map(r => r.cells[5].textContent)"
        ranked = browser.evaluate(runs_in)
        browser.click("#table-0 thead th:nth-child(6)")  # "hardware FLOPs"
        flops = [float(x) for x in browser.evaluate(flops_in)]
        assert flops == sorted(flops) and browser.evaluate(runs_in) != ranked
        browser.click("#table-0 thead th:nth-child(6)")  # again: descending
        assert [float(x) for x in browser.evaluate(flops_in)] == sorted(flops, reverse=True)

        browser.hover('#chart circle[data-run="d20"]')
        tip = browser.wait_for(
            "!document.getElementById('tooltip').hidden && document.getElementById('tooltip').innerText"
        )
        assert "d20" in tip and "Speedrun Tester" in tip and "BPB" in tip and "hardware FLOPs" in tip
        links = browser.evaluate("Array.from(document.querySelectorAll('#tooltip a')).map(a => a.href)")
        assert links[0] == "https://wandb.ai/tester/speedrun/runs/d20abc" and links[1].endswith("speedrun_results.json")

        browser.evaluate(
            "document.getElementById('table-0-filter').value = 'd26';"
            " document.getElementById('table-0-filter').dispatchEvent(new Event('input'))"
        )
        shown = browser.evaluate(
            "Array.from(document.querySelectorAll('#table-0 tbody tr'))"
            ".filter(r => !r.hidden).map(r => r.cells[2].textContent)"
        )
        assert sorted(shown) == ["d26-bf16", "d26-fp8"]

        # Box zoom: drag over the chart's left half; the points there spread out, the others leave.
        cx = "Array.from(document.querySelectorAll('#chart circle.run')).map(c => +c.getAttribute('cx'))"
        before = browser.evaluate(cx)
        browser.center("#chart")  # scrolls it into view
        box = browser.evaluate(
            "(() => { const r = document.getElementById('chart').getBoundingClientRect();"
            " return [r.left, r.top, r.width, r.height]; })()"
        )
        browser.drag((box[0] + box[2] * 0.09, box[1] + box[3] * 0.05), (box[0] + box[2] * 0.5, box[1] + box[3] * 0.85))
        after = browser.evaluate(cx)
        assert after != before and max(after) > max(before)  # zoomed in: right-hand points pushed off the frame
        browser.click("#reset-zoom")
        assert browser.evaluate(cx) == before

        hardware_count = browser.evaluate("document.getElementById('frontier-count').textContent")
        browser.click("input[name=x-axis][value=model]")
        assert browser.evaluate("document.querySelector('#chart .label').textContent").startswith("model FLOPs")
        from speedrun_trainer.leaderboard.page import frontier
        from speedrun_trainer.leaderboard.runs import load_runs

        tracks = rank_runs(load_runs(str(tmp_path / "board")))
        marin = next(runs for name, runs in tracks.items() if is_bpb_track(name))  # the charted track
        assert hardware_count == str(len(frontier(marin, "hardware")))
        assert browser.evaluate("document.getElementById('frontier-count').textContent") == str(
            len(frontier(marin, "model"))
        )


def _tiny_results(tmp_path: Path) -> dict[str, Any]:
    """What a CPU-tiny run on the builtin corpus writes (build_run_info, as its eval pod does)."""
    from speedrun_api.manifest import parse_job
    from speedrun_api.plan import resolve
    from speedrun_trainer.evaluation.results import build_run_info
    from tests.support.helpers import tiny_manifest

    job = parse_job(tiny_manifest())
    summary = {"step": 20, "training_seconds": 4.0, "num_devices": 2, "device_flops": 1e11}
    return build_run_info(job, resolve(job), summary, bpb=2.2, initial_bpb=8.0, val_loss=1.5, core=None, versions={})


def test_marin_runs_and_a_builtin_corpus_run_are_ranked_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    shutil.copytree(DATA / "marin", tmp_path / "marin")
    info = _tiny_results(tmp_path)
    assert BPB_KEY not in info
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "speedrun_results.json").write_text(json.dumps({"runs": [{"run_info": info}]}))
    assert speedrun(["leaderboard", str(tmp_path), "--json"]) == 0
    by_name = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert by_name["test-tiny"]["tracks"] == ["bpb:builtin://pydoc-topics/val [levanter-bpb-cross-doc]"]
    assert by_name["test-tiny"][BPB_KEY] is None and by_name["test-tiny"]["bpb"] == 2.2
    assert all(r["tracks"] == ["marin"] for name, r in by_name.items() if name != "test-tiny")
    assert speedrun(["leaderboard", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # titles and notes wrap at 80 columns
    assert "== bpb:builtin://pydoc-topics/val [levanter-bpb-cross-doc]: builtin://pydoc-topics/val" in out
    assert "1 other BPB track(s) (other data or definitions) are ranked apart" in out


def test_definitions_and_tokenizers_split_tracks() -> None:
    old_ours = run("old", 1e18, 1.0, bpb_dataset="builtin://pydoc-topics/val")  # before definitions: nanochat's
    nanochat = run("nano", 1e18, 0.9, bpb_definition="nanochat-bpb")
    marin = run("marin-run", 2e18, 1.1)
    tracks = rank_runs([old_ours, nanochat, marin])
    assert list(tracks) == ["marin", "bpb:builtin://pydoc-topics/val [nanochat-bpb]", "bpb:paloma/c4_en [nanochat-bpb]"]
    assert [r.name for r in tracks["marin"]] == ["marin-run"]

    def loss_run(name: str, tokenizer: str, seconds: float) -> Run:
        eval_set = {"dataset": "fineweb10B/val", "tokens_scored": 10_485_760}
        return run(
            name,
            1e18,
            None,
            target={"metric": "val_loss", "value": 3.28},
            time_to_target=seconds,
            eval_set=eval_set,
            tokenizer=tokenizer,
            val_loss=3.27,
        )

    gpt2, llama = loss_run("gpt2-run", "gpt2", 100.0), loss_run("llama-run", "s3://b/llama3.json", 50.0)
    modded, nanochat = loss_run("modded-clock", "gpt2", 90.0), loss_run("nanochat-clock", "gpt2", 80.0)
    modded.info["clock_rule"], nanochat.info["clock_rule"] = "modded-nanogpt", "nanochat"
    split = rank_runs([gpt2, modded, nanochat])  # a time is only worth its clock (train.clock)
    assert sorted(len(v) for v in split.values()) == [1, 2]
    assert next(n for n in split if n.endswith(", modded-nanogpt clock")) in modded.ranks
    assert nanochat.ranks[next(iter(gpt2.ranks))] == 1  # nanochat's clock: with files that name none
    tracks = rank_runs([gpt2, llama])
    names = sorted(tracks)
    assert len(names) == 2 and all(n.startswith("time-to-val_loss:3.28 @ fineweb10B/val, ") for n in names)
    assert gpt2.ranks[next(n for n in names if "gpt2" in n)] == 1  # each first in its own track
    assert llama.ranks[next(n for n in names if "llama3" in n)] == 1


def test_model_flops_axis_moves_the_frontier() -> None:
    cheap_hw = run("cheap-hardware", 1e18, 1.0, model_flops=9e17)  # high MFU
    cheap_model = run("cheap-model", 2e18, 0.99, model_flops=5e17)  # low MFU, fewer model FLOPs
    worse = run("worse", 3e18, 1.2, model_flops=8e17)
    rank_runs([cheap_hw, cheap_model, worse], axis="hardware")
    assert (cheap_hw.pareto, cheap_model.pareto, worse.pareto) == (True, True, False)
    for r in (cheap_hw, cheap_model, worse):
        r.ranks.clear()
    rank_runs([cheap_hw, cheap_model, worse], axis="model")
    assert (cheap_hw.pareto, cheap_model.pareto, worse.pareto) == (False, True, False)
    table = build_tables(rank_runs([cheap_hw, cheap_model, worse], axis="model"), axis="model")[0]
    assert table.title == "marin: C4-EN bits per byte vs training model FLOPs"


def test_exact_duplicates_collapse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = DATA / "marin" / "llama_75m_adamw" / "speedrun_results.json"
    for copy in ("a", "b"):
        (tmp_path / copy).mkdir()
        shutil.copy(source, tmp_path / copy / "speedrun_results.json")
    assert speedrun(["leaderboard", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 1
    assert "collapsed 1 exact duplicate run(s)" in captured.err


def test_plot_on_the_model_flops_axis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "model.png"
    assert speedrun(["leaderboard", str(DATA), "--flops", "model", "--plot", str(png)]) == 0
    assert pixels_near(load_png(png.read_bytes()), FRONTIER_COLOR) > 100


def test_runs_without_model_flops_are_counted_when_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    shutil.copytree(DATA / "marin", tmp_path / "board")
    doc = json.loads((DATA / "marin" / "llama_75m_adamw" / "speedrun_results.json").read_text())
    for entry in doc.get("runs", [doc]):
        info = entry.get("run_info", entry)
        info.pop("model_flops")
        info["name"] = "no-model-flops"
    (tmp_path / "board" / "old").mkdir()
    (tmp_path / "board" / "old" / "speedrun_results.json").write_text(json.dumps(doc))
    assert speedrun(["leaderboard", str(tmp_path / "board"), "--flops", "model"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert "1 run(s) with a BPB left out of the model-FLOPs ranking: no model_flops recorded" in captured.err
    assert "1 run(s) left out: no model_flops recorded" in " ".join(captured.out.split("\n\n")[0].split())
    assert "no-model-flops" not in captured.out
    assert speedrun(["leaderboard", str(tmp_path / "board")]) == 0  # hardware FLOPs: nothing left out
    assert "left out" not in capsys.readouterr().err
