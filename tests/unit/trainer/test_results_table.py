"""The results table `speedrun run` prints: at most 80 columns, every value still all there (a long
URI folded onto lines of its own, never cut short), and the BPB saying which evaluation made it."""

from __future__ import annotations

from pathlib import Path

import pytest

from speedrun_api.manifest import parse_job
from speedrun_api.plan import resolve
from speedrun_trainer.cli.results_table import fit_rows, fold_row, format_results_table, results_rows
from speedrun_trainer.evaluation.results import build_run_info
from tests.support.helpers import tiny_manifest

SUMMARY = {"step": 300, "training_seconds": 51.9, "num_devices": 2, "device_flops": 1e11, "warmup_steps": 11}
LONG_URI = "file:///home/someone/src/speedrun-operator/runs/tiny-cpu/20261206-074053/speedrun_results.json"
SUMMARY_FILE = Path("/home/someone/src/speedrun-operator/runs/tiny-cpu/20261206-074053/results-summary.json")


def run_info(**changes: object) -> dict:
    job = parse_job(tiny_manifest(**{"spec.train.steps": 300, **changes}))
    info = build_run_info(
        job,
        resolve(job),
        SUMMARY,
        bpb=2.1627,
        initial_bpb=7.4728,
        val_loss=1.4992,
        core=None,
        versions={},
        eval_set={"tokens_scored": 32768},
    )
    return {**info, "wandb_run_link": "https://wandb.ai/an-entity-with-a-long-name/speedrun-project/runs/abcdef12"}


def squeezed(text: str) -> str:
    return "".join(text.split())


@pytest.mark.parametrize("width", [80, 60])
def test_the_table_fits_the_width_and_loses_nothing(width: int) -> None:
    info = run_info()
    table = format_results_table(info, LONG_URI, 91.4, width, summary=SUMMARY_FILE)
    lines = table.splitlines()
    assert all(len(line) <= width for line in lines), [line for line in lines if len(line) > width]
    for label, value in results_rows(info, LONG_URI, 91.4, SUMMARY_FILE):  # every value, whole
        assert squeezed(value) in squeezed(table), label
    assert LONG_URI in "".join(line.strip() for line in lines)  # folded, not cut: the pieces join back
    assert str(SUMMARY_FILE) in "".join(line.strip() for line in lines)


def test_the_table_was_wider_than_80_columns_before() -> None:
    """What the fold is for: these rows, side by side, need more than 80 columns."""
    rows = results_rows(run_info(), LONG_URI, 91.4, SUMMARY_FILE)
    label_width = max(len(label) for label, _ in rows)
    assert max(2 + label_width + 2 + len(value) for _, value in rows) > 80


def test_the_bpb_says_which_evaluation_made_it() -> None:
    rows = dict(results_rows(run_info(), LONG_URI, 91.4))
    assert rows["BPB"] == (
        "2.1627, the final evaluation of step 300 on 32,768 tokens of builtin://pydoc-topics/val"
        " (levanter-bpb-cross-doc)"
    )


def test_a_value_wraps_under_its_column_and_a_long_uri_goes_under_its_label() -> None:
    assert fold_row("training time", "51.9 s (eval, checkpoints and logging excluded)", 14, 40) == [
        "  training time   51.9 s (eval,",
        "                  checkpoints and",
        "                  logging excluded)",
    ]
    assert fold_row("results", "s3://bucket/a/b/c/speedrun_results.json", 14, 40) == [
        "  results",
        "    s3://bucket/a/b/c/speedrun_results.j",
        "    son",
    ]


def test_short_rows_stay_one_line_each_with_their_labels_aligned() -> None:
    assert fit_rows([("run dir", "/r/x"), ("logs", "/r/x/logs")]) == ["  run dir  /r/x", "  logs     /r/x/logs"]
