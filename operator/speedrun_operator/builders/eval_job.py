"""The eval Job `<name>-eval`: one pod that scores the final checkpoint (BPB, CORE).

It runs after training succeeds, reads the checkpoint and the training summary from storage,
writes the results file there, and leaves the headline numbers as JSON in its termination
message (docs/contracts.md), which is how the operator learns them without storage credentials.
"""

from __future__ import annotations

from typing import Any

from speedrun_api.run_contract import ENV_TERMINATION_LOG, TERMINATION_LOG
from speedrun_api.spec import SpeedrunJob
from speedrun_operator import labels as L
from speedrun_operator.builders import common, pod_overrides, tpu
from speedrun_operator.settings import OperatorSettings

EVAL_MODULE = "speedrun_trainer.evaluation"


def torchrun_eval_command(job: SpeedrunJob) -> list[str]:
    return [
        *common.TORCHRUN,
        "--nnodes=1",
        f"--nproc-per-node={job.spec.resources.procs_per_node}",
        "--standalone",
        "-m",
        EVAL_MODULE,
        "--config",
        L.CONFIG_PATH,
    ]


def build_eval_job(job: SpeedrunJob, settings: OperatorSettings) -> dict[str, Any]:
    """The eval pod; a TPU run's on CPU in the plain trainer image, asking for no TPU (builders/tpu.py)."""
    name = job.metadata.name
    on_accelerator = tpu.tpu_slice(job) is None
    command = torchrun_eval_command(job)
    container = common.container(job, settings, L.CONTAINER_EVALUATOR, command, ports=[], accelerator=on_accelerator)
    container["env"].append({"name": ENV_TERMINATION_LOG, "value": TERMINATION_LOG})
    container["terminationMessagePath"] = TERMINATION_LOG
    pod = common.pod_spec(job, settings, container, accelerator=on_accelerator)
    counts = {"completions": 1, "parallelism": 1, "backoffLimit": settings.eval_backoff_limit}
    labels = common.queue_labels(job)
    out = common.batch_job(job, L.eval_job_name(name), L.ROLE_EVAL, labels, pod, counts)
    pod_overrides.apply(out, job, settings, accelerator=on_accelerator)
    return out
