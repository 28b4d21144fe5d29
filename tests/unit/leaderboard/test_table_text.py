"""The leaderboard's tables fit 80 columns (table_text.py), `--wide` shows every column, and
`speedrun leaderboard --demo` shows Marin's published runs, shipped with the package.

    pytest tests/unit/leaderboard/test_table_text.py
"""

from __future__ import annotations

import re
import sys

import pytest

from speedrun_trainer.cli.speedrun import main as speedrun
from speedrun_trainer.leaderboard.runs import MARIN_RUNS, Table
from speedrun_trainer.leaderboard.table_text import MAX_LINES, TABLE_WIDTH, format_table, wrap_cell
from tests.support.helpers import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest depends on tomli below 3.11
    import tomli as tomllib

VIEWS = [[], ["--view", "scaling"], ["--view", "scaling", "--fit", "marin"], ["--view", "runs", "--relative"]]
RANKED_ROW = re.compile(r"^ *(\d+)  ")


def demo(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert speedrun(["leaderboard", "--demo", *args]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("view", VIEWS, ids=["tables", "scaling", "scaling-marin", "runs-relative"])
def test_every_line_of_marins_tables_fits_80_columns(view: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    out = demo(capsys, *view)
    wide = [line for line in out.splitlines() if len(line) > TABLE_WIDTH]
    assert not wide, f"{len(wide)} lines over {TABLE_WIDTH} columns, e.g. {wide[0]!r}"
    if not view:  # every one of the 96 runs still has its row and rank, BPB and FLOPs on it
        first = out.split("\n\n")[0].splitlines()
        ranks = [int(m.group(1)) for line in first if (m := RANKED_ROW.match(line))]
        assert ranks == list(range(1, 97))
        assert "not shown: author, model FLOPs, MFU (--wide shows every column)" in " ".join(out.split())
        row = next(line for line in first if line.lstrip().startswith("1  *"))
        assert "hackable_transformer_starter/" in row and "0.9272" in row and "5.822e+20" in row


def test_wide_shows_every_column_whole(capsys: pytest.CaptureFixture[str]) -> None:
    out = demo(capsys, "--wide")
    header = out.splitlines()[2].split()
    assert header == ["rank", "pareto", "run", "author", "BPB", "hardware", "FLOPs", "model", "FLOPs", "MFU", "time"]
    assert "hackable_transformer_starter/attnsink/splash/default_x2/1_2b     Calvin Xu" in out
    assert max(len(line) for line in out.splitlines()) > TABLE_WIDTH


def test_demo_takes_any_view_and_refuses_a_uri_beside_it(capsys: pytest.CaptureFixture[str]) -> None:
    out = demo(capsys, "--view", "scaling", "--fit", "marin", "--json")
    assert '"name": "adamh_llama_scaling"' in out  # the site's first place
    assert speedrun(["leaderboard", "--demo", "runs/"]) == 2
    assert capsys.readouterr().err == (
        "speedrun leaderboard: give a URI of results files, or --demo for Marin's published runs (not both)\n"
    )
    assert speedrun(["leaderboard"]) == 2
    assert "--demo" in capsys.readouterr().err


def test_marins_runs_ship_in_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data = project["tool"]["setuptools"]["package-data"]["speedrun_trainer"]
    shipped = MARIN_RUNS.relative_to(ROOT / "trainer" / "speedrun_trainer").as_posix()
    assert shipped in package_data and MARIN_RUNS.is_file()


def test_wrap_cell_breaks_names_at_folders_and_cuts_the_rest() -> None:
    name = "hackable_transformer_starter/attnsink/splash/default_x2/1_2b"
    assert wrap_cell(name, 34) == ["hackable_transformer_starter/", "attnsink/splash/default_x2/1_2b"]
    assert wrap_cell("short", 34) == ["short"]
    assert wrap_cell("x" * 30, 12) == ["x" * 12, "x" * 12, "x" * 6]  # no break: cut where the width ends
    lines = wrap_cell("y" * 1_000_000, 12)
    assert len(lines) == MAX_LINES and lines[-1] == "y" * 11 + "…"


def test_a_table_of_hostile_cells_fits_and_stays_one_line_per_cell() -> None:
    table = Table(
        "t" * 200,
        "a note " * 40,
        ["rank", "run", "author", "BPB"],
        [["1", "evil\nname\x1b[31m" + "z" * 500, "someone with a very long name indeed", "1.0000"]],
        [True, False, False, True],
        narrow=["", "", "drop", ""],
    )
    text = format_table(table)
    assert all(len(line) <= TABLE_WIDTH for line in text.splitlines())
    assert "\x1b" not in text and "evil\\nname\\x1b[31m" in text
    assert "someone" not in text and "not shown: author" in " ".join(text.split())
    wide = format_table(table, None)
    assert len(wide.splitlines()) == 5 and "someone" in wide  # title, note, header, rule, the one row
