"""The README's picture stays what the code draws: the leaderboard of Marin's published runs.

`make picture` redraws docs/img/leaderboard.png with `speedrun leaderboard ... --plot`; this test
draws it again into tmp_path and compares bytes, so a change to the plot, the ranking or the data
that moves a pixel fails here until the picture is redrawn and committed. Byte-for-byte holds
because the plot has no timestamp and no matplotlib version in its PNG metadata.

Run: pytest -q tests/unit/deploy/test_readme_picture.py  (~3 s; skipped without the `plot` extra)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import ROOT

PICTURE = "docs/img/leaderboard.png"


def test_the_makefile_draws_the_picture_this_test_checks() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert f"PICTURE := {PICTURE}" in makefile
    assert "speedrun leaderboard --demo --plot $(PICTURE)" in makefile


def test_the_readme_shows_the_picture() -> None:
    assert f"]({PICTURE})" in (ROOT / "README.md").read_text()


def test_the_committed_picture_is_what_make_picture_draws(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the `plot` extra (matplotlib) draws the picture")
    drawn = tmp_path / "leaderboard.png"
    # The leaderboard's own entry point: `speedrun leaderboard` without the rest of the CLI.
    command = [sys.executable, "-m", "speedrun_trainer.leaderboard", "--demo", "--plot", str(drawn)]
    subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    committed = (ROOT / PICTURE).read_bytes()
    assert drawn.read_bytes() == committed, f"{PICTURE} is stale: run `make picture` and commit it"
