"""The results artifact: Marin's shape and keys, our additions, and the termination message."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from speedrun_api.manifest import parse_job
from speedrun_api.plan import resolve
from speedrun_api.run_contract import RESULTS_FILE
from speedrun_trainer.data.storage import open_storage
from speedrun_trainer.evaluation.results import (
    BPB_KEY,
    RunInfo,
    build_run_info,
    headline,
    tracking_summary,
    write_results,
    written_bpb_key,
)
from tests.support.helpers import tiny_manifest

SUMMARY = {
    "step": 20,
    "training_seconds": 4.0,
    "time_to_target_seconds": None,
    "num_devices": 2,
    "device_flops": 1e11,
    "wandb_run_link": None,
}


def _run_info(**overrides):
    job = parse_job(tiny_manifest(**overrides))
    return job, build_run_info(
        job, resolve(job), SUMMARY, bpb=2.5, initial_bpb=8.0, val_loss=1.7, core=None, versions={"torch": "x"}
    )


def test_marin_keys_and_values():
    job, info = _run_info()
    plan = resolve(job)
    assert info["model_size"] == plan.model_size
    assert info["total_tokens"] == 20 * 8 * 64
    assert info["model_flops"] == pytest.approx(3 * plan.model_flops_per_token * info["total_tokens"])
    assert info["training_hardware_flops"] == pytest.approx(1e11 * 2 * 4.0)
    assert info["mfu"] == pytest.approx(info["model_flops"] / info["training_hardware_flops"])
    assert info["eval/builtin://pydoc-topics/val/bpb"] == 2.5 and info["initial_bpb"] == 8.0
    assert BPB_KEY not in info  # the builtin corpus is not Paloma C4-EN: never Marin's key
    assert info["spec"]["spec"]["model"]["hiddenDim"] == 64
    for key in (
        "author",
        "description",
        "model_flops_per_token",
        "num_devices",
        "device_flops",
        "training_time",
        "wandb_run_link",
        "run_completion_timestamp",
        "core_metric",
        "time_to_target",
        "versions",
    ):
        assert key in info


def test_core_target_sets_time_to_target():
    over = {"spec.target": {"metric": "core", "value": 0.2}, "spec.eval.core": {"bundle": "file:///b"}}
    job = parse_job(tiny_manifest(**over))
    reached, missed = (
        build_run_info(job, resolve(job), SUMMARY, bpb=1.0, initial_bpb=8.0, val_loss=1.0, core=core, versions={})
        for core in ({"core_metric": 0.3, "tasks": {}}, {"core_metric": 0.1, "tasks": {}})
    )
    assert reached["time_to_target"] == 4.0 and missed["time_to_target"] is None


def test_written_as_one_object_in_marin_shape(tmp_path):
    _, info = _run_info()
    storage = open_storage(tmp_path.as_uri())
    uri = write_results(storage, info)
    doc = storage.read_json(RESULTS_FILE)
    assert list(doc) == ["runs"] and doc["runs"][0]["run_info"] == info
    msg = headline(info, uri)
    assert msg["bpb"] == 2.5 and msg["uri"].endswith(RESULTS_FILE)
    assert set(msg) == {
        "uri",
        "bpb",
        "core",
        "valLoss",
        "modelFlops",
        "hardwareFlops",
        "trainingSeconds",
        "timeToTargetSeconds",
        "wandbRunLink",
        "trainingSteps",
    }
    assert msg["trainingSteps"] == info["training_steps"]
    from speedrun_operator.termination import parse_results

    link = "https://wandb.ai/me/speedrun/runs/abc123"
    results = parse_results(json.dumps(headline({**info, "wandb_run_link": link}, uri)))
    assert results.wandb_run_link == link  # into status.results.wandbRunLink


def test_schema_rejects_broken_results():
    _, info = _run_info()
    with pytest.raises(ValidationError):
        RunInfo.model_validate({**info, "model_size": 0})
    with pytest.raises(ValidationError):
        RunInfo.model_validate({k: v for k, v in info.items() if k != "training_time"})


def test_marin_key_never_ours_and_every_number_names_its_definition():
    job = parse_job(tiny_manifest())
    c4 = {
        "uri": "s3://b/c4/val_*.bin",
        "dataset": "paloma/c4_en",
        "tokens_requested": 10_485_760,
        "tokens_scored": 10_485_760,
        "set_tokens": 11_000_000,
        "exceeded": False,
    }
    info = build_run_info(
        job,
        resolve(job),
        SUMMARY,
        bpb=1.1,
        initial_bpb=8.0,
        val_loss=3.3,
        core=None,
        versions={},
        nanochat_bpb=1.05,
        eval_set=c4,
        eval_precision="bf16",
    )
    # levanter restarts attention after each EOS, our model does not: C4-EN under its own key, not Marin's
    assert BPB_KEY not in info and info["eval/paloma/c4_en/bpb-cross-doc"] == 1.1
    assert info["bpb_dataset"] == "paloma/c4_en"
    assert info["bpb_definition"] == "levanter-bpb-cross-doc" and info["nanochat_bpb"] == 1.05
    assert info["val_loss_definition"] == "mean-loss-all-positions" and info["val_loss_track"] == "modded-nanogpt"
    assert set(info["metric_definitions"]) == {
        "levanter-bpb-cross-doc",
        "levanter-bpb",
        "nanochat-bpb",
        "mean-loss-all-positions",
    }
    assert info["eval_set"]["exceeded"] is False and "warm" in info["clock"]
    assert info["eval_precision"] == "bf16" and "never in FP8" in info["eval_rule"]
    assert headline(info, "file:///r")["bpb"] == 1.1
    small = {
        **c4,
        "dataset": "fineweb10B-gpt2/val",
        "tokens_scored": 1_048_576,
        "tokens_requested": 2_000_000,
        "exceeded": True,
    }
    other = build_run_info(
        job, resolve(job), SUMMARY, bpb=1.2, initial_bpb=8.0, val_loss=3.4, core=None, versions={}, eval_set=small
    )
    assert BPB_KEY not in other and other["eval/fineweb10B-gpt2/val/bpb"] == 1.2
    assert other["val_loss_track"] == "bottlecap" and other["eval_set"]["exceeded"] is True
    # not given: the training summary's (train/loop.py writes it), else unknown
    assert other["eval_precision"] is None
    assert (
        build_run_info(
            job,
            resolve(job),
            {**SUMMARY, "eval_precision": "fp32"},
            bpb=1.2,
            initial_bpb=8.0,
            val_loss=3.4,
            core=None,
            versions={},
        )["eval_precision"]
        == "fp32"
    )


def test_wandb_summary_carries_the_bpb_the_results_wrote():
    """The W&B summary files the BPB under the results' own key (it once read Marin's key, which
    our results never write, so no BPB reached W&B)."""
    job = parse_job(tiny_manifest())
    c4 = {"uri": "s3://b/c4/val_*.bin", "dataset": "paloma/c4_en", "tokens_scored": 4096}
    for eval_set, key in ((c4, "eval/paloma/c4_en/bpb-cross-doc"), (None, "eval/builtin://pydoc-topics/val/bpb")):
        info = build_run_info(
            job,
            resolve(job),
            SUMMARY,
            bpb=1.1,
            initial_bpb=8.0,
            val_loss=3.3,
            core=None,
            versions={},
            eval_set=eval_set,
        )
        assert written_bpb_key(info) == key and info[key] == 1.1
        summary = tracking_summary(info, "file:///r/speedrun_results.json")
        assert summary == {
            key: 1.1,
            "val_loss": 3.3,
            "initial_bpb": 8.0,
            "results_uri": "file:///r/speedrun_results.json",
        }
        assert summary[key] == headline(info, "u")["bpb"]


def test_results_name_the_track_rule_behind_each_number():
    """Clock, BPB rows and horizon: each number's rule, from the spec (metric_definitions)."""
    from speedrun_api.metric_definitions import BPB_ROWS, CLOCK_RULES

    _, default = _run_info()
    assert default["clock_rule"] == "nanochat" and default["clock"] == CLOCK_RULES["nanochat"]
    assert default["nanochat_bpb_rows"] == "packed" and default["nanochat_bpb_rows_rule"] == BPB_ROWS["packed"]
    assert default["horizon_rule"] == "steps as given"
    job, info = _run_info(
        **{
            "spec.train.clock": "modded-nanogpt",
            "spec.train.steps": None,
            "spec.train.paramDataRatio": 20,
            "spec.train.horizonRounding": "down",
            "spec.eval.bpb": {"tokens": 4096, "rows": "bos-aligned"},
        }
    )
    assert info["clock_rule"] == "modded-nanogpt" and "record 21" in info["clock"]
    assert info["nanochat_bpb_rows"] == "bos-aligned" and "dataloader.py" in info["nanochat_bpb_rows_rule"]
    assert info["eval_set"]["nanochat_bpb_rows"] == "bos-aligned"
    assert "(rounded down, as nanochat)" in info["horizon_rule"]
    measured = build_run_info(
        job,
        resolve(job),
        SUMMARY,
        bpb=1.0,
        initial_bpb=8.0,
        val_loss=1.0,
        core=None,
        versions={},
        nanochat_bpb=1.1,
        eval_set={"nanochat_bpb_rows": "bos-aligned", "nanochat_bpb_tokens": 4032},
    )
    assert measured["nanochat_bpb"] == 1.1 and measured["eval_set"]["nanochat_bpb_tokens"] == 4032
