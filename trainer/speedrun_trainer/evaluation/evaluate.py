"""Evaluation entry point: the final checkpoint -> BPB (and CORE) -> the results file.

    torchrun --standalone --nproc-per-node=P -m speedrun_trainer.evaluation --config run.json
    python -m speedrun_trainer.evaluation --config run.json          # one process

Scores the checkpoint training ended with, and the untrained model (same seed and init: the
`initial_bpb` baseline), on the run's one evaluation set, the set the trainer judged targets on.
The headline numbers also go to the pod's termination message (docs/contracts.md), so the
operator learns them without storage credentials.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from speedrun_api.manifest import ConfigError
from speedrun_api.metric_definitions import levanter_eval_batch
from speedrun_api.plan import resolve
from speedrun_api.run_contract import ENV_TERMINATION_LOG, TERMINATION_LOG, TRAIN_SUMMARY_FILE, cache_dir
from speedrun_api.spec import SpeedrunJob
from speedrun_trainer.data.loader import open_dataset
from speedrun_trainer.data.prepare import recorded_dataset, tokenizer_mismatch
from speedrun_trainer.data.tokenizer import load_tokenizer, padded_token_bytes
from speedrun_trainer.evaluation.results import build_run_info, headline, tracking_summary, write_results
from speedrun_trainer.train import checkpoint, preflight
from speedrun_trainer.train.core_eval import evaluate_run_core
from speedrun_trainer.train.loss_eval import eval_precision, evaluate_run_loss
from speedrun_trainer.train.model import GPT
from speedrun_trainer.train.runtime import Dist, entry_point, log, phase, run_storage, seeded
from speedrun_trainer.train.versions import software_versions


class EvalError(Exception):
    """Something the evaluation needs is missing (no checkpoint, no training summary)."""


def write_termination_message(message: dict[str, Any]) -> None:
    path = os.environ.get(ENV_TERMINATION_LOG, TERMINATION_LOG)
    target = Path(path)
    if path == TERMINATION_LOG and not target.parent.exists():
        return  # not in a pod
    try:
        target.write_text(json.dumps(message))
    except OSError as err:
        print(f"could not write the termination message to {path}: {err}", file=sys.stderr)


def evaluate(job: SpeedrunJob, env: Dist) -> dict[str, Any] | None:
    """Run the whole evaluation; returns the headline on rank 0, None on other ranks."""
    spec = job.spec
    storage = run_storage(job)
    if not storage.exists(TRAIN_SUMMARY_FILE):
        raise EvalError(f"no {TRAIN_SUMMARY_FILE} in {storage.url('')}: has training finished?")
    summary = storage.read_json(TRAIN_SUMMARY_FILE)
    preflight.check_published(storage, job, summary)
    phase("loading the final checkpoint and the evaluation set")
    # The checkpoint training ended with, never an older one (checkpoint.load's fallback).
    final_step = int(summary["step"]) if isinstance(summary.get("step"), int) and summary["step"] > 0 else None
    ckpt = checkpoint.load(storage, final_step, with_optimizers=False)
    if ckpt is None:
        raise EvalError(f"no complete checkpoint under {storage.url(checkpoint.PREFIX)}")
    log(f"evaluating the checkpoint of step {ckpt.step} from {storage.url(checkpoint.PREFIX)}")

    tokenizer = load_tokenizer(spec.data.tokenizer, endpoint_url=spec.storage.endpoint_url)
    if problem := tokenizer_mismatch(spec.eval_data, "spec.eval.bpb.data", tokenizer, spec.storage.endpoint_url):
        raise ConfigError(problem)
    token_bytes = padded_token_bytes(tokenizer, spec.model.vocab_size)
    levanter_bytes = padded_token_bytes(tokenizer, spec.model.vocab_size, levanter=True)
    dataset = open_dataset(
        spec.eval_data,
        tokenizer=spec.data.tokenizer,
        cache_dir=cache_dir(),
        endpoint_url=spec.storage.endpoint_url,
    )
    with seeded(spec.train.seed):
        model = GPT(spec.model)  # exactly the trainer's initialization: the untrained baseline
    model.to(env.device)
    phase("evaluating the untrained model")
    # a model trained with the document mask is scored with it, as levanter scores (Marin's key)
    mask = tokenizer.document_end_id() if spec.model.document_mask else None
    initial = evaluate_run_loss(model, job, env, dataset, token_bytes, levanter_bytes, mask, bos_id=tokenizer.eot_id)
    model.load_state_dict(ckpt.model)
    phase(f"evaluating the checkpoint of step {ckpt.step}")
    final = evaluate_run_loss(model, job, env, dataset, token_bytes, levanter_bytes, mask, bos_id=tokenizer.eot_id)
    log(f"bpb {final.bpb:.4f} (untrained {initial.bpb:.4f}) over {final.tokens:,} tokens / {final.bytes:,} bytes")
    log(f"nanochat bpb {final.nanochat_bpb:.4f} over {final.nanochat_tokens:,} targets of {final.nanochat_rows} rows")
    if spec.eval.core is not None:
        phase("evaluating CORE")
    core = evaluate_run_core(model, job, env, tokenizer)
    if core is not None:
        log(f"CORE {core['core_metric']:.4f} over {len(core.get('tasks', {}))} tasks")
    if not env.is_main:
        return None
    plan = resolve(job, nodes=max(1, int(summary.get("num_devices", 1)) // spec.resources.procs_per_node))
    eval_set = {
        "uri": spec.eval_data,
        "dataset": recorded_dataset(spec.eval_data, spec.storage.endpoint_url) or spec.eval_data,
        **final.record(levanter_eval_batch=levanter_eval_batch(spec.train.device_batch_size, env.world_size)),
    }
    run_info = build_run_info(
        job,
        plan,
        summary,
        bpb=final.bpb,
        initial_bpb=initial.bpb,
        val_loss=final.loss,
        core=core,
        versions=software_versions(),
        nanochat_bpb=final.nanochat_bpb,
        eval_set=eval_set,
        eval_precision=eval_precision(env.device, spec.train.precision),
    )
    uri = write_results(storage, run_info)
    _track_final(job, summary, run_info, uri)
    message = headline(run_info, uri)
    write_termination_message(message)
    log(f"results written to {uri}")
    print(json.dumps(message), flush=True)
    phase("results written; the processes are exiting")
    return message


def _track_final(job: SpeedrunJob, summary: dict[str, Any], run_info: dict[str, Any], uri: str) -> None:
    """The final evaluation into the training's W&B run (same id, resumed) as its summary."""
    from speedrun_trainer.train.tracking import Tracker

    if not summary.get("run_id"):
        return
    tracker = Tracker(job, enabled=True, run_id=str(summary["run_id"]), config={}, job_type="eval")
    tracker.summary(tracking_summary(run_info, uri))
    tracker.finish()


def _evaluate(job: SpeedrunJob, env: Dist) -> int:
    try:
        evaluate(job, env)
    except EvalError as err:
        print(f"evaluation failed: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return entry_point("speedrun_trainer.evaluation", __doc__.splitlines()[0], _evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
