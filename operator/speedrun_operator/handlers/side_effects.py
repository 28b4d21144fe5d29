"""The acts a written status owes its Jobs, re-checked on every pass until they hold.

Two acts follow from a status once it is written (reconcile.py's docstring): a finished Job whose
outcome is recorded gets `runPolicy.ttlSecondsAfterFinished`, and the training Job of a run that
failed its start-up deadline is stopped (its `activeDeadlineSeconds` lowered to the deadline that
passed: the Job controller removes the pods and records DeadlineExceeded), so that no pod of it
starts training later, unwatched. Both are level-triggered, as client-go controllers act: `owed`
compares what the status says with the Jobs as they are and returns only the patches still
missing, so a patch refused once (an apiserver error, an admission webhook, a lost connection) is
sent again on the next pass instead of never. For a job whose status is settled
(`lifecycle.is_settled`) reconcile does nothing else, and the periodic resync skips finished
jobs: `hold_settled` is the check they still run, one LIST of the job's Jobs (none written when
everything holds), and `Periodic` checks every finished job with one LIST per namespace.

The stop carries the TTL too: the failure is recorded when the status says Failed, and the TTL
counts only from the moment the Job controller finishes the Job.
"""

from __future__ import annotations

import logging
from typing import Any

from speedrun_api.spec import RunPolicy
from speedrun_api.status import TERMINAL_PHASES, SpeedrunJobStatus, now_rfc3339
from speedrun_operator import conditions as C
from speedrun_operator import kube, lifecycle, pod_startup
from speedrun_operator import labels as L

log = logging.getLogger(__name__)
FINISHED = ("Succeeded", "Failed")
DEFAULT_STARTUP_DEADLINE: int = RunPolicy.model_fields["startup_deadline_seconds"].default


def stopped_at_startup(status: SpeedrunJobStatus) -> bool:
    """The run failed because its pods did not all start in time: its training Job must end."""
    failed = C.find(status.conditions, C.FAILED)
    return status.phase == "Failed" and failed is not None and failed.reason == C.REASON_STARTUP_DEADLINE


def owed(
    status: SpeedrunJobStatus,
    train_job: dict[str, Any] | None,
    eval_job: dict[str, Any] | None,
    ttl: int | None,
    startup_deadline: int,
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(Job, patch) for each act `status` owes a Job that the Job does not show yet."""
    acts = []
    stop = stopped_at_startup(status)
    recorded_train = stop or lifecycle.training_finished(status) or status.phase == "Failed"
    for child, recorded in ((train_job, recorded_train), (eval_job, status.phase in TERMINAL_PHASES)):
        if child is None or not recorded or child["metadata"].get("deletionTimestamp"):
            continue
        spec, finished = child.get("spec") or {}, lifecycle.job_state(child).phase in FINISHED
        patch: dict[str, Any] = {}
        if child is train_job and stop and not finished:
            patch.update((pod_startup.stop_patch(child, startup_deadline, now_rfc3339()) or {}).get("spec", {}))
        if ttl is not None and spec.get("ttlSecondsAfterFinished") is None and (finished or patch):
            patch["ttlSecondsAfterFinished"] = ttl
        if patch:
            acts.append((child, {"spec": patch}))
    return acts


def hold(client: kube.KubeClient, acts: list[tuple[dict[str, Any], dict[str, Any]]]) -> int:
    """Send the owed patches; one refused is logged and owed again on the next pass. How many held."""
    held = 0
    for child, patch in acts:
        meta = child["metadata"]
        try:
            client.patch(kube.JOB, meta["namespace"], meta["name"], patch)
            held += 1
        except kube.NotFound:
            pass  # gone already: nothing left to stop or to hand to the TTL controller
        except kube.KubeError as err:
            log.warning(f"[{meta['namespace']}/{meta['name']}] {patch} not applied, retried on the next pass: {err}")
    return held


def run_policy(body: dict[str, Any]) -> tuple[int | None, int]:
    """(ttlSecondsAfterFinished, startupDeadlineSeconds) read from the raw body: a settled job is
    not parsed again (its spec may be one that failed validation)."""
    spec = body.get("spec")
    policy = spec.get("runPolicy") if isinstance(spec, dict) else None
    policy = policy if isinstance(policy, dict) else {}
    ttl, deadline = policy.get("ttlSecondsAfterFinished"), policy.get("startupDeadlineSeconds")
    return (
        ttl if isinstance(ttl, int) else None,
        deadline if isinstance(deadline, int) else DEFAULT_STARTUP_DEADLINE,
    )


def owed_by(body: dict[str, Any], status: SpeedrunJobStatus, jobs: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
    """`owed` for a SpeedrunJob `body` whose Jobs are among `jobs` (listed by whoever calls)."""
    name = body["metadata"]["name"]
    by_name = {j["metadata"]["name"]: j for j in jobs if (j["metadata"].get("labels") or {}).get(L.LABEL_JOB) == name}
    ttl, deadline = run_policy(body)
    return owed(status, by_name.get(L.train_job_name(name)), by_name.get(L.eval_job_name(name)), ttl, deadline)


def managed_jobs(client: kube.KubeClient, namespace: str | None, job_name: str | None = None) -> list[dict[str, Any]]:
    """The operator's Jobs in `namespace` (None: every namespace), of one SpeedrunJob if named."""
    selector = {L.LABEL_MANAGED_BY: L.MANAGER, **({L.LABEL_JOB: job_name} if job_name else {})}
    return client.list(kube.JOB, namespace, selector)


def hold_settled(client: kube.KubeClient, body: dict[str, Any], status: SpeedrunJobStatus) -> int:
    """The check a settled job still gets on every pass: one LIST of its Jobs, a patch only if owed."""
    meta = body["metadata"]
    return hold(client, owed_by(body, status, managed_jobs(client, meta["namespace"], meta["name"])))
