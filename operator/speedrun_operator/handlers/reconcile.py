"""Reconcile one SpeedrunJob: validate, act on its children, observe them, decide, write status.

Level-triggered and idempotent: every trigger (create, resume after an operator restart, spec
update, any event of a child Job, the periodic resync) runs the same `reconcile`, in this order:
the actions (`_ensure_children`: create what is missing, delete a failed attempt, patch
spec.suspend), the reads (`_observe`: the Jobs' pods and events -> `lifecycle.Observation`), the
decision (`lifecycle.next_status`), and a status patch of only what changed. A per-job lock
serialises triggers inside this process; the Lease (leader.py) keeps one active replica.

Two acts follow from the status written, so a crash in between repeats them on the next pass
rather than skipping them: a gang restart deletes the failed attempt's training Job (Foreground:
its pods first; the next pass creates the next attempt), and a Job whose outcome is recorded gets
`runPolicy.ttlSecondsAfterFinished`, so the TTL controller never deletes an unrecorded Job.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import kopf

from speedrun_api.manifest import SpecError, parse_job
from speedrun_api.spec import SpeedrunJob
from speedrun_api.status import TERMINAL_PHASES, SpeedrunJobStatus, now_rfc3339, read_status
from speedrun_operator import builders, events, kube, lifecycle, operator_metrics, pod_startup
from speedrun_operator import labels as L
from speedrun_operator.handlers.children import ChildConflict, ensure_job, sync_suspend
from speedrun_operator.handlers.operator_startup import OperatorContext
from speedrun_operator.pod_startup import PodsWaiting
from speedrun_operator.termination import eval_results, failure_detail

CONFLICT_RETRY_SECONDS = 10
REJECTED_STATUSES = (400, 422)  # BadRequest, Invalid: the request itself is refused, not the caller
IMMUTABLE_NOTE = (
    "spec changes after the Jobs exist do not reach them (Job pod templates are immutable); "
    "only runPolicy.suspend applies. Delete and re-create the SpeedrunJob to run the new spec"
)

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)


def reconcile(
    ctx: OperatorContext, namespace: str, name: str, trigger: str, logger: logging.Logger | None = None
) -> SpeedrunJobStatus | None:
    """Bring one SpeedrunJob one step closer to done; None if it is gone or going."""
    with operator_metrics.timed(trigger), _locks[(namespace, name)]:
        body = ctx.client.get(kube.SPEEDRUNJOB, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        try:
            return _reconcile(ctx, body)
        except ChildConflict as err:
            raise kopf.TemporaryError(str(err), delay=CONFLICT_RETRY_SECONDS) from None


def _reconcile(ctx: OperatorContext, body: dict[str, Any]) -> SpeedrunJobStatus:
    meta = body["metadata"]
    generation = int(meta.get("generation") or 1)
    current = read_status(body.get("status"))
    if lifecycle.is_settled(current, generation):
        operator_metrics.PHASE_BOOK.record(meta["namespace"], meta["name"], current.phase)
        return current
    try:
        job = parse_job({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body})
        builders.check_runnable(job, ctx.settings)
    except (SpecError, builders.BuildError) as err:
        error = "; ".join(err.lines) if isinstance(err, SpecError) else str(err)
        seen = lifecycle.Observation(generation=generation, nodes=_nodes(body), now=now_rfc3339(), spec_error=error)
        _write(ctx, body, current, seen)
        raise kopf.PermanentError(error) from None
    try:
        children = _ensure_children(ctx, body, job, current)
        seen = _observe(ctx, body, job, current, generation, children)
    except kube.KubeError as err:
        if err.status not in REJECTED_STATUSES:
            raise
        # The apiserver (its validation, a webhook, an admission policy) refuses a child of a spec
        # the CRD admitted: retrying cannot help, the job fails with the apiserver's own words.
        message = f"{err.reason}: {err.message}"
        seen = lifecycle.Observation(generation=generation, nodes=_nodes(body), now=now_rfc3339(), rejected=message)
        _write(ctx, body, current, seen)
        raise kopf.PermanentError(message) from None
    new = _write(ctx, body, current, seen)
    if seen.startup_failure is not None and new.phase == "Failed":
        _stop_training_job(ctx, children.train_job, job)
    else:
        _after_write(ctx, job, current, new, children)
    return new


def _stop_training_job(ctx: OperatorContext, train_job: dict[str, Any] | None, job: SpeedrunJob) -> None:
    """End a training Job whose pods never started, so none of them starts later unwatched: its
    activeDeadlineSeconds is lowered to now, and the Job controller removes the pods and records
    DeadlineExceeded on the Job (which stays for `kubectl describe`)."""
    if train_job is None:
        return
    patch = pod_startup.stop_patch(train_job, job.spec.run_policy.startup_deadline_seconds)
    if patch is not None:
        meta = train_job["metadata"]
        ctx.client.patch(kube.JOB, meta["namespace"], meta["name"], patch)


def _nodes(body: dict[str, Any]) -> str:
    """The printer column's node count, read from the raw body: it must not fail on a body whose
    spec is invalid (not a mapping), since the Failed status is written with it."""
    spec = body.get("spec")
    resources = spec.get("resources") if isinstance(spec, dict) else None
    if not isinstance(resources, dict):
        return "1"
    if "nodes" in resources or "minNodes" not in resources:
        return str(resources.get("nodes", 1))
    return f"{resources.get('minNodes')}:{resources.get('maxNodes')}"


@dataclass(frozen=True)
class Children:
    """The run's two Jobs as the actions left them, and the state each is in."""

    train_job: dict[str, Any] | None
    train: lifecycle.JobState
    eval_job: dict[str, Any] | None = None
    evaluation: lifecycle.JobState = lifecycle.MISSING


def _ensure_children(
    ctx: OperatorContext, body: dict[str, Any], job: SpeedrunJob, current: SpeedrunJobStatus
) -> Children:
    """The actions: create the children that are missing, delete a failed training attempt, and
    patch the Jobs' spec.suspend to runPolicy.suspend."""
    train_job, train = _ensure_training(ctx, body, job, current)
    if train.phase != "Succeeded":
        return Children(train_job, train)
    eval_job, evaluation = _ensure_evaluation(ctx, body, job)
    return Children(train_job, train, eval_job, evaluation)


def _ensure_training(
    ctx: OperatorContext, body: dict[str, Any], job: SpeedrunJob, current: SpeedrunJobStatus
) -> tuple[dict[str, Any] | None, lifecycle.JobState]:
    """The training Job of attempt `status.restarts`, and its state."""
    client, name, policy = ctx.client, job.metadata.name, job.spec.run_policy
    namespace = body["metadata"]["namespace"]
    if lifecycle.training_finished(current):
        train_job = client.get(kube.JOB, namespace, L.train_job_name(name))  # may be gone (TTL)
        return train_job, lifecycle.JobState("Succeeded")
    if _held_back(client, policy, namespace, L.train_job_name(name)):
        return None, lifecycle.JobState("Suspended")
    attempt = current.restarts
    train_job = ensure_job(
        client, body, L.train_job_name(name), lambda: builders.build_train_job(job, ctx.settings, attempt),
        lambda: [(kube.CONFIGMAP, builders.build_run_configmap(job)),
                 (kube.SERVICE, builders.build_headless_service(job))],
    )  # fmt: skip
    train = lifecycle.train_state(train_job, attempt)
    if train.phase == "Replacing":
        _replace(client, train_job)
    elif not policy.queue_name:  # with a queue, Kueue owns spec.suspend
        train_job = sync_suspend(client, train_job, policy.suspend)
        train = lifecycle.train_state(train_job, attempt)
    return train_job, train


def _ensure_evaluation(
    ctx: OperatorContext, body: dict[str, Any], job: SpeedrunJob
) -> tuple[dict[str, Any] | None, lifecycle.JobState]:
    """The eval Job, once training succeeded, and its state."""
    client, policy = ctx.client, job.spec.run_policy
    if _held_back(client, policy, body["metadata"]["namespace"], L.eval_job_name(job.metadata.name)):
        return None, lifecycle.JobState("Suspended")
    eval_job = ensure_job(
        client, body, L.eval_job_name(job.metadata.name), lambda: builders.build_eval_job(job, ctx.settings),
        lambda: [(kube.CONFIGMAP, builders.build_run_configmap(job))],
    )  # fmt: skip
    if not policy.queue_name:  # with a queue, Kueue owns spec.suspend
        eval_job = sync_suspend(client, eval_job, policy.suspend)
    return eval_job, lifecycle.job_state(eval_job)


def _observe(
    ctx: OperatorContext,
    body: dict[str, Any],
    job: SpeedrunJob,
    current: SpeedrunJobStatus,
    generation: int,
    children: Children,
) -> lifecycle.Observation:
    """The reads: what the Jobs' pods and events say, gathered into what `next_status` decides on."""
    client, name, policy = ctx.client, job.metadata.name, job.spec.run_policy
    namespace = body["metadata"]["namespace"]
    train, evaluation = children.train, children.evaluation
    lo, _ = job.spec.resources.node_range
    now = now_rfc3339()
    waiting, startup_failure = None, None
    if train.phase in ("Pending", "Running") and train.ready + train.succeeded < lo and not current.start_time:
        waiting, startup_failure = _startup(client, namespace, job, children, now)
    detail: str | None = None
    if train.phase == "Failed":
        detail = failure_detail(_pods(client, namespace, name, L.ROLE_TRAIN), L.CONTAINER_TRAINER, train.message)
    results, results_error = None, None
    if evaluation.phase in ("Succeeded", "Failed"):
        eval_pods = _pods(client, namespace, name, L.ROLE_EVAL)
        if evaluation.phase == "Succeeded":
            results, results_error = eval_results(eval_pods, L.CONTAINER_EVALUATOR)
        else:
            detail = failure_detail(eval_pods, L.CONTAINER_EVALUATOR)
    return lifecycle.Observation(
        generation=generation,
        nodes=_nodes(body),
        now=now,
        suspend_requested=policy.suspend,
        queued=bool(policy.queue_name),
        train=train,
        evaluation=evaluation,
        results=results,
        results_error=results_error,
        failure_detail=detail,
        max_restarts=policy.max_restarts,
        min_ready=lo,
        waiting=waiting,
        startup_failure=startup_failure,
    )


def _startup(
    client: kube.KubeClient, namespace: str, job: SpeedrunJob, children: Children, now: str
) -> tuple[PodsWaiting | None, str | None]:
    """A run that never trained yet: why its pods are not all running, and, past the start-up
    deadline, the message it fails with."""
    train_job, train = children.train_job, children.train
    if not ((train_job or {}).get("status") or {}).get("startTime"):
        # Not started by the Job controller yet (it sets startTime in the sync that creates the
        # pods, or fails to: FailedCreate): no pod and no Event to read, and no deadline running.
        return None, None
    pods = _pods(client, namespace, job.metadata.name, L.ROLE_TRAIN)
    waiting = pod_startup.pods_waiting(pods)
    if (waiting is None or not waiting.problem) and pod_startup.missing_pods(train_job, pods):
        waiting = pod_startup.creation_failure(_job_events(client, train_job)) or waiting
    deadline = job.spec.run_policy.startup_deadline_seconds
    if not pod_startup.startup_overdue(train_job, deadline, now):
        return waiting, None
    lo, _ = job.spec.resources.node_range
    return waiting, pod_startup.startup_failure(deadline, waiting, train.ready, lo)


def _replace(client: kube.KubeClient, train_job: dict[str, Any]) -> None:
    """Delete a failed attempt's training Job, its pods first (Foreground, as JobSet restarts)."""
    meta = train_job["metadata"]
    if not meta.get("deletionTimestamp"):
        client.delete(kube.JOB, meta["namespace"], meta["name"], propagation="Foreground")


def _after_write(
    ctx: OperatorContext, job: SpeedrunJob, current: SpeedrunJobStatus, new: SpeedrunJobStatus, children: Children
) -> None:
    """The acts that follow from the status just written (see the module's docstring)."""
    train_job, eval_job = children.train_job, children.eval_job
    if new.restarts > current.restarts and train_job is not None:
        _replace(ctx.client, train_job)  # the restart is counted: now the old attempt goes
        return
    ttl = job.spec.run_policy.ttl_seconds_after_finished
    if ttl is None:
        return
    recorded = [train_job] if lifecycle.training_finished(new) or new.phase == "Failed" else []
    if new.phase in TERMINAL_PHASES:
        recorded.append(eval_job)
    for child in recorded:
        if child is not None and lifecycle.job_state(child).phase in ("Succeeded", "Failed"):
            _set_ttl(ctx.client, child, ttl)


def _set_ttl(client: kube.KubeClient, child: dict[str, Any], ttl: int) -> None:
    """Hand a finished Job whose outcome is recorded to the TTL-after-finished controller."""
    meta = child["metadata"]
    if child["spec"].get("ttlSecondsAfterFinished") is None and not meta.get("deletionTimestamp"):
        with contextlib.suppress(kube.NotFound):
            client.patch(kube.JOB, meta["namespace"], meta["name"], {"spec": {"ttlSecondsAfterFinished": ttl}})


def _held_back(client: kube.KubeClient, policy: Any, namespace: str, job_name: str) -> bool:
    """With a queue, Kueue owns the Jobs' spec.suspend (it admits by writing false), so a user's
    runPolicy.suspend holds a Job back by not creating it; one already created is Kueue's."""
    return bool(policy.queue_name and policy.suspend) and client.get(kube.JOB, namespace, job_name) is None


def _job_events(client: kube.KubeClient, job: dict[str, Any]) -> list[dict[str, Any]]:
    meta = job["metadata"]
    # By uid too: this Job's events, not those of a deleted attempt of the same name.
    fields = {"involvedObject.kind": "Job", "involvedObject.name": meta["name"], "involvedObject.uid": meta["uid"]}
    return client.list(kube.EVENT, meta["namespace"], fields=fields)


def _pods(client: kube.KubeClient, namespace: str, name: str, role: str) -> list[dict[str, Any]]:
    return client.list(kube.POD, namespace, L.selector_labels(name, role))


def _write(
    ctx: OperatorContext, body: dict[str, Any], current: SpeedrunJobStatus, seen: lifecycle.Observation
) -> SpeedrunJobStatus:
    new, transition = lifecycle.next_status(current, seen)
    old_wire, new_wire = current.wire(), new.wire()
    # Only what changed: the periodic progress scrape writes status.progress concurrently.
    patch: dict[str, Any] = {k: v for k, v in new_wire.items() if old_wire.get(k) != v}
    patch.update({k: None for k in old_wire if k not in new_wire})
    meta = body["metadata"]
    if patch:
        ctx.client.patch(kube.SPEEDRUNJOB, meta["namespace"], meta["name"], {"status": patch}, subresource="status")
    operator_metrics.PHASE_BOOK.record(meta["namespace"], meta["name"], new.phase)
    operator_metrics.record_restarts(new.restarts - current.restarts)
    if transition is not None:
        events.post(ctx.client, body, transition.type, transition.reason, transition.message)
        if new.phase == "Failed":
            operator_metrics.record_failure(transition.reason)
    return new


def on_spec_change(ctx: OperatorContext, namespace: str, name: str, diff: Any, status: dict[str, Any]) -> None:
    """A spec edit: reconcile (suspend/resume, re-validation) and say what will not apply."""
    reconciled = reconcile(ctx, namespace, name, "update")
    ignored = ignored_spec_changes(diff)
    started = (status or {}).get("phase") not in (None, "Failed")
    if ignored and started and reconciled is not None:
        body = ctx.client.get(kube.SPEEDRUNJOB, namespace, name)
        if body is not None:
            message = f"{', '.join(ignored)}: {IMMUTABLE_NOTE}"
            events.post(ctx.client, body, "Warning", "SpecChangeIgnored", message)


def ignored_spec_changes(diff: Any) -> list[str]:
    """Changed spec paths (kopf's diff of the `spec` field) other than runPolicy.suspend."""
    ignored = []
    for _op, field, _old, new in diff:
        path = tuple(field)
        if path == ("runPolicy", "suspend"):
            continue
        if path == ("runPolicy",) and isinstance(new, dict) and set(new) <= {"suspend"}:
            continue
        ignored.append(".".join(("spec", *path)))
    return sorted(ignored)
