"""Marin's key `eval/paloma/c4_en/bpb`: written exactly when every rule of levanter's BPB held.

An evaluation of a Paloma-C4-EN-shaped set (a token stream whose results name paloma/c4_en, as
`speedrun data fetch paloma-c4-en` records it) goes through evaluate_loss -> LossEval.record ->
build_run_info, as evaluation/evaluate.py does; each rule broken alone moves the number off
Marin's key, and the results say which rule failed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speedrun_api.manifest import parse_job
from speedrun_api.metric_definitions import MARIN_BPB_KEY, MARIN_RULES, PALOMA_C4_EN
from speedrun_api.plan import resolve
from speedrun_trainer.cli.results_table import _bpb_row
from speedrun_trainer.evaluation.results import build_run_info, written_bpb_key
from speedrun_trainer.leaderboard.ranking import MARIN_TRACK, bpb_track_name
from speedrun_trainer.leaderboard.run_checks import problems
from speedrun_trainer.leaderboard.runs import run_from_info
from speedrun_trainer.train.loss_eval import evaluate_loss
from tests.support.helpers import tiny_manifest

SEQ, SET_TOKENS = 16, 16 * 12  # a set of exactly 12 chunks: the last has no token after it
SUMMARY = {"step": 20, "training_seconds": 4.0, "num_devices": 1, "device_flops": 1e11}


class Uniform(torch.nn.Module):
    def forward(self, x, y, reduction="none", doc_ids=None):
        return torch.full(y.shape, math.log(256.0))


class Stream:
    def __init__(self, n: int) -> None:
        self.tokens, self.num_tokens = (np.arange(n) * 7) % 256, n

    def sequences(self, first, count, seq_len):
        idx = (np.arange(count * seq_len + 1) + first * seq_len) % self.num_tokens
        buf = torch.as_tensor(self.tokens[idx].astype(np.int64))
        return buf[:-1].reshape(count, seq_len), buf[1:].reshape(count, seq_len)


def _results(*, dataset=PALOMA_C4_EN, tokens=SET_TOKENS, levanter_bytes=True, eval_batch=4, mask=True):
    one = np.ones(256, dtype=np.int64)
    ev = evaluate_loss(
        Uniform(),
        Stream(SET_TOKENS),
        one,
        tokens=tokens,
        seq_len=SEQ,
        batch_size=2,
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        precision="fp32",
        eval_batch=eval_batch,
        levanter_bytes=one if levanter_bytes else None,
        document_mask=255 if mask else None,  # the EOS id: masked scoring
    )
    eval_set = {"uri": "s3://b/paloma-c4-en", "dataset": dataset}
    eval_set |= ev.record(levanter_eval_batch=4)
    job = parse_job(tiny_manifest())
    info = build_run_info(job, resolve(job), SUMMARY, bpb=ev.bpb, initial_bpb=8.0, val_loss=ev.loss, core=None,
                          versions={}, eval_set=eval_set)  # fmt: skip
    return ev, info


def test_every_rule_held_writes_marins_key():
    ev, info = _results()
    assert ev.chunks_scored == 12 and not ev.partial  # floor(N / T), the last chunk included
    assert info["bpb_rules"] == dict.fromkeys(MARIN_RULES, True)
    assert info[MARIN_BPB_KEY] == pytest.approx(8.0) and written_bpb_key(info) == MARIN_BPB_KEY
    run = run_from_info(info, "r", "s")
    assert bpb_track_name(run.bpb_group) == MARIN_TRACK


@pytest.mark.parametrize(
    ("broken", "settings", "key"),
    [
        ("dataset", {"dataset": "c4"}, "eval/c4/bpb"),
        ("document_mask", {"mask": False}, "eval/paloma/c4_en/bpb-cross-doc"),
        ("byte_table", {"levanter_bytes": False}, "eval/paloma/c4_en/bpb-unmatched"),
        ("eval_batch", {"eval_batch": 8}, "eval/paloma/c4_en/bpb-unmatched"),
        ("whole_set", {"tokens": SET_TOKENS // 2}, "eval/paloma/c4_en/bpb-unmatched"),
    ],
)
def test_one_broken_rule_keeps_the_number_off_marins_key(broken, settings, key):
    _, info = _results(**settings)
    assert MARIN_BPB_KEY not in info and key in info and written_bpb_key(info) == key
    assert [r for r, held in info["bpb_rules"].items() if not held] == [broken]
    assert _bpb_row(info).startswith(f"{info[key]:.4f}")  # the run's table finds it under its key
    run = run_from_info(info, "r", "s")
    assert bpb_track_name(run.bpb_group) != MARIN_TRACK


def test_a_partial_set_is_named_partial_in_results_and_leaderboard():
    ev, info = _results(tokens=SET_TOKENS // 2)
    assert ev.partial and info["eval_set"]["partial"] is True
    assert info["eval_set"]["chunks_scored"] == 6 and info["eval_set"]["set_chunks"] == 12
    assert run_from_info(info, "r", "s").bpb_group[0] == "paloma/c4_en (partial)"


def test_marins_key_on_a_partial_set_is_refused_by_the_leaderboard():
    _, info = _results()
    assert problems(info) == []
    edited = {**info, "eval_set": {**info["eval_set"], "partial": True}}
    assert problems(edited) == [f"{MARIN_BPB_KEY}: recorded with levanter's rules not held (whole_set)"]
    edited = {**info, "bpb_rules": {**info["bpb_rules"], "eval_batch": False}}
    assert problems(edited) == [f"{MARIN_BPB_KEY}: recorded with levanter's rules not held (eval_batch)"]
