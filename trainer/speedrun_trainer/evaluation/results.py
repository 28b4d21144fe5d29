"""The results file (`RESULTS_FILE`): Marin's shape, plus what the other two benchmarks need.

`{"runs": [{"run_info": {...}}]}` with Marin's keys, so Marin's leaderboard tooling reads it, and
our additions (core_metric, val_loss, time_to_target, initial_bpb, mfu, the spec, versions).
Every number names its definition (speedrun_api.metric_definitions). Our BPB is levanter's
formula; it is filed under Marin's key `eval/paloma/c4_en/bpb` only when every one of
`MARIN_RULES` held (`marin_rules_of`: Paloma C4-EN, document mask, levanter's byte table, floor(N/T)
chunks, levanter's eval batch, the whole set), and `bpb_rules` records each.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from speedrun_api.flops import forward_flops_per_token
from speedrun_api.metric_definitions import (
    BPB_ROWS,
    CLOCK_RULES,
    DESCRIPTIONS,
    LEVANTER_BPB,
    LEVANTER_BPB_CROSS_DOC,
    MARIN_BPB_KEY,
    MEAN_LOSS,
    NANOCHAT_BPB,
    PALOMA_C4_EN,
    bpb_definition,
    bpb_key,
    marin_rules,
    val_loss_track,
)
from speedrun_api.plan import Plan
from speedrun_api.run_contract import RESULTS_FILE
from speedrun_api.spec import SpeedrunJob
from speedrun_trainer.data.storage import Storage

BPB_KEY = MARIN_BPB_KEY  # levanter's exact number on Paloma C4-EN only: never ours; see bpb_key()
EVAL_RULE = (
    "never in FP8: an fp8 run's FP8 layers run as plain linears over the same weights, in the loop"
    " and at the end, so BPB, val loss and CORE score the bf16 model of its fp32 weights (nanochat)"
)


class RunInfo(BaseModel):
    """The schema of one run's results; extra keys are kept (Marin adds its own)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str
    author: dict[str, str]
    description: str
    model_size: int = Field(gt=0)
    total_tokens: int = Field(ge=0)
    model_flops: float = Field(ge=0)
    model_flops_per_token: float = Field(gt=0)
    num_devices: int = Field(gt=0)
    num_chips: int = Field(gt=0)
    device_flops: float = Field(gt=0)
    training_time: float = Field(ge=0)
    training_hardware_flops: float = Field(ge=0)
    bpb_dataset: str
    bpb_definition: str
    eval_set: dict[str, Any]
    initial_bpb: float | None
    val_loss: float | None
    core_metric: float | None
    time_to_target: float | None
    target: dict[str, Any] | None
    mfu: float | None
    training_steps: int
    wandb_run_link: str | None
    run_completion_timestamp: str
    spec: dict[str, Any]
    versions: dict[str, str]


def marin_rules_of(eval_set: dict[str, Any]) -> dict[str, bool]:
    """Which of Marin's rules (metric_definitions.MARIN_RULES) an evaluation held, from what its
    `eval_set` records (loss_eval.LossEval.record); a fact not recorded fails its rule."""
    batch = eval_set.get("eval_batch")
    return marin_rules(
        dataset=eval_set.get("dataset") == PALOMA_C4_EN,
        document_mask=eval_set.get("document_mask") is True,
        byte_table=eval_set.get("byte_table") == "levanter",
        chunks=eval_set.get("chunks") == "levanter",
        eval_batch=batch is not None and batch == eval_set.get("levanter_eval_batch"),
        whole_set=eval_set.get("partial") is False,
    )


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def build_run_info(
    job: SpeedrunJob,
    plan: Plan,
    summary: dict[str, Any],
    *,
    bpb: float | None,
    initial_bpb: float | None,
    val_loss: float | None,
    core: dict[str, Any] | None,
    versions: dict[str, str],
    nanochat_bpb: float | None = None,
    eval_set: dict[str, Any] | None = None,
    eval_precision: str | None = None,
) -> dict[str, Any]:
    """One run_info. `eval_set` describes what was scored: uri, dataset (its recorded name),
    tokens_requested, tokens_scored, set_tokens, exceeded, and the facts of `LossEval.record`
    (partial, chunks, eval batch, byte table, document mask) that `marin_rules_of` checks
    (defaults: the spec's eval set, by URI, nothing known of the rest).
    `eval_precision`: what the evaluation multiplied in (train/loss_eval.py `eval_precision`);
    by default the training summary's."""
    spec = job.spec
    uri = spec.eval_data
    evaluated = {
        "uri": uri,
        "dataset": uri,
        "tokens_requested": spec.eval.bpb.tokens,
        "tokens_scored": None,
        "set_tokens": None,
        "exceeded": False,
        "nanochat_bpb_rows": spec.eval.bpb.rows,
        "nanochat_bpb_tokens": None,
        **(eval_set or {}),
    }
    rules = marin_rules_of(evaluated)
    definition = bpb_definition(rules["document_mask"])
    scored = evaluated["tokens_scored"]
    track = val_loss_track(int(scored)) if scored is not None else None
    steps = int(summary["step"])
    tokens = steps * plan.tokens_per_step
    fwd = forward_flops_per_token(spec.model)
    model_flops = 3 * fwd * tokens
    seconds = float(summary["training_seconds"])
    devices = int(summary.get("num_devices") or plan.num_devices)
    device_flops = float(summary.get("device_flops") or plan.device_flops)
    hardware_flops = device_flops * devices * seconds
    core_metric = None if core is None else _finite(core.get("core_metric"))
    time_to_target = summary.get("time_to_target_seconds")
    if spec.target is not None and spec.target.metric == "core" and core_metric is not None:
        time_to_target = seconds if core_metric >= spec.target.value else None
    max_per_task = None if core is None else core.get("max_per_task")
    manifest = job.manifest()
    info = RunInfo.model_validate(
        {
            "name": job.metadata.name,
            "author": spec.author.model_dump(),
            "description": spec.description,
            "model_config": spec.model.model_dump(),
            "train_config": spec.train.model_dump(exclude_none=True),
            "resources": {
                "accelerator": spec.resources.accelerator,
                "nodes": plan.nodes,
                "procs_per_node": spec.resources.procs_per_node,
                "device_flops_override": spec.resources.device_flops,
            },
            "tokenized_dataset": spec.data.train,
            "model_size": plan.model_size,
            "total_tokens": tokens,
            "model_flops": model_flops,
            "model_flops_per_token": fwd,
            "num_devices": devices,
            "num_chips": devices,
            "device_flops": device_flops,
            "training_time": seconds,
            "training_hardware_flops": hardware_flops,
            bpb_key(str(evaluated["dataset"]), definition, rules): _finite(bpb),
            "bpb_dataset": evaluated["dataset"],
            "bpb_definition": definition,
            "bpb_rules": rules,
            "nanochat_bpb": _finite(nanochat_bpb),
            "nanochat_bpb_rows": evaluated["nanochat_bpb_rows"],
            "nanochat_bpb_rows_rule": BPB_ROWS[str(evaluated["nanochat_bpb_rows"])],
            "eval_set": evaluated,
            "eval_precision": eval_precision or summary.get("eval_precision"),
            "eval_rule": EVAL_RULE,
            "tokenizer": spec.data.tokenizer,
            "initial_bpb": _finite(initial_bpb),
            "val_loss": _finite(val_loss),
            "val_loss_definition": MEAN_LOSS,
            "val_loss_track": track,
            "metric_definitions": {
                k: DESCRIPTIONS[k] for k in (LEVANTER_BPB_CROSS_DOC, LEVANTER_BPB, NANOCHAT_BPB, MEAN_LOSS)
            },
            "core_metric": core_metric,
            "core_tasks": None if core is None else core.get("tasks"),
            "core_max_per_task": max_per_task,
            "clock": CLOCK_RULES[spec.train.clock],
            "clock_rule": spec.train.clock,
            "horizon_rule": plan.horizon_rule,
            "warmup_seconds": summary.get("warmup_seconds"),
            "warmup_steps": summary.get("warmup_steps"),
            "time_to_target": time_to_target,
            "target": None if spec.target is None else spec.target.model_dump(),
            "mfu": model_flops / hardware_flops if hardware_flops else None,
            "tokens_per_second": tokens / seconds if seconds else None,
            "training_steps": steps,
            "wandb_run_link": summary.get("wandb_run_link"),
            "run_completion_timestamp": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "spec": manifest,
            "versions": versions,
        }
    )
    return info.model_dump(by_alias=True)


def write_results(storage: Storage, run_info: dict[str, Any]) -> str:
    """Write the results file as one complete object; returns its URI."""
    RunInfo.model_validate(run_info)
    storage.write_json(RESULTS_FILE, {"runs": [{"run_info": run_info}]})
    return storage.url(RESULTS_FILE)


def written_bpb_key(run_info: dict[str, Any]) -> str:
    """The key `build_run_info` filed this run's BPB under (bpb_key: Marin's only when every rule held)."""
    rules = run_info.get("bpb_rules")
    definition = str(run_info.get("bpb_definition") or LEVANTER_BPB_CROSS_DOC)
    return bpb_key(str(run_info["bpb_dataset"]), definition, rules if isinstance(rules, dict) else None)


def tracking_summary(run_info: dict[str, Any], uri: str) -> dict[str, Any]:
    """The final evaluation's numbers for the W&B run's summary, under the keys the results file
    wrote them (the BPB's depends on the eval set: `eval/<dataset>/bpb`, or the C4-EN cross-doc
    key), so the summary and the results file name each number alike; unset numbers left out."""
    keys = (written_bpb_key(run_info), "core_metric", "val_loss", "initial_bpb")
    return {**{k: run_info[k] for k in keys if run_info.get(k) is not None}, "results_uri": uri}


def headline(run_info: dict[str, Any], uri: str) -> dict[str, Any]:
    """The eval pod's termination message: the keys of status.results (docs/contracts.md)."""
    return {
        "uri": uri,
        "bpb": run_info.get(written_bpb_key(run_info)),
        "core": run_info["core_metric"],
        "valLoss": run_info["val_loss"],
        "modelFlops": run_info["model_flops"],
        "hardwareFlops": run_info["training_hardware_flops"],
        "trainingSeconds": run_info["training_time"],
        "timeToTargetSeconds": run_info["time_to_target"],
        "wandbRunLink": run_info.get("wandb_run_link"),
        "trainingSteps": run_info["training_steps"],
    }
