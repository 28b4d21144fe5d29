"""Reconcile one SpeedrunJob: validate, act on its children, observe them, decide, write status.

Level-triggered and idempotent: every trigger (create, resume after an operator restart, spec
update, any event of a child Job, the periodic resync) runs the same `reconcile`, in this order:
the actions (`_ensure_children`: create what is missing, delete a failed attempt, patch
spec.suspend, fail a training pod on a lost node: stuck_pods.py), the reads (observe.py: the
Jobs' pods and events -> `lifecycle.Observation`), the decision (`lifecycle.next_status`), and a
status patch of only what changed. A per-job lock serialises triggers inside this process; the
Lease (leader.py) keeps one active replica.

Two acts follow from the status written, so a crash in between repeats them on the next pass
rather than skipping them: a gang restart deletes the failed attempt's training Job (Foreground:
its pods first; the next pass creates the next attempt, or, after attempts that failed before
all ranks joined, the first pass after `status.nextAttemptTime`: restart_backoff.py, which a
reconcile leaving a job waiting asks for, wakeups.py; pods stuck Terminating on a lost node are
force-deleted once overdue, stuck_pods.py), and a Job whose outcome is recorded gets
`runPolicy.ttlSecondsAfterFinished`, so the TTL controller never deletes an unrecorded Job. These,
and the stop of a training Job after a start-up failure, are re-checked on every pass, settled
jobs included, until the Jobs show them (side_effects.py).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import Any

import kopf

from speedrun_api.manifest import SpecError, parse_job
from speedrun_api.spec import SpeedrunJob
from speedrun_api.status import SpeedrunJobStatus, now_rfc3339, read_status
from speedrun_operator import (
    builders,
    events,
    gang,
    kube,
    kueue,
    lifecycle,
    operator_metrics,
    restart_backoff,
    stuck_pods,
)
from speedrun_operator import labels as L
from speedrun_operator.handlers import side_effects
from speedrun_operator.handlers.children import ChildConflict, ensure_job, lookup, sync_suspend
from speedrun_operator.handlers.observe import Children, observe, pods_of, printer_nodes
from speedrun_operator.handlers.operator_startup import OperatorContext

CONFLICT_RETRY_SECONDS = 10
REJECTED_STATUSES = (400, 422)  # BadRequest, Invalid: the request itself is refused, not the caller
IMMUTABLE_NOTE = (
    "spec changes after the Jobs exist do not reach them (Job pod templates are immutable); "
    "only runPolicy.suspend applies. Delete and re-create the SpeedrunJob to run the new spec"
)

EVENT_STUCK_PODS = "StuckPodsForceDeleted"

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)


def forget(namespace: str, name: str) -> None:
    """Drop a deleted job's lock (the dict would otherwise keep one for every job ever seen). A lock
    held now stays; a later reconcile of the name makes a new one and finds the job gone."""
    lock = _locks.get((namespace, name))
    if lock is not None and not lock.locked():
        _locks.pop((namespace, name), None)


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
        side_effects.hold_settled(ctx.client, body, current)  # what the status owes, until it holds
        return current
    try:
        job = parse_job({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body})
        builders.check_runnable(job, ctx.settings)
    except (SpecError, builders.BuildError) as err:
        error = "; ".join(err.lines) if isinstance(err, SpecError) else str(err)
        seen = lifecycle.Observation(
            generation=generation, nodes=printer_nodes(body), now=now_rfc3339(), spec_error=error
        )
        _write(ctx, body, current, seen)
        raise kopf.PermanentError(error) from None
    try:
        children = _ensure_children(ctx, body, job, current)
        seen = observe(ctx, body, job, current, generation, children)
    except kube.KubeError as err:
        if err.status not in REJECTED_STATUSES:
            raise
        # The apiserver (its validation, a webhook, an admission policy) refuses a child of a spec
        # the CRD admitted: retrying cannot help, the job fails with the apiserver's own words.
        message = f"{err.reason}: {err.message}"
        seen = lifecycle.Observation(
            generation=generation, nodes=printer_nodes(body), now=now_rfc3339(), rejected=message
        )
        _write(ctx, body, current, seen)
        raise kopf.PermanentError(message) from None
    new = _write(ctx, body, current, seen)
    _after_write(ctx, body, job, current, new, children)
    return new


def _ensure_children(
    ctx: OperatorContext, body: dict[str, Any], job: SpeedrunJob, current: SpeedrunJobStatus
) -> Children:
    """The actions: create the children that are missing, delete a failed training attempt, and
    patch the Jobs' spec.suspend to runPolicy.suspend."""
    train_job, train = _ensure_training(ctx, body, job, current)
    workload = kueue.sync_workload(ctx.client, job.spec.run_policy, train_job, train)
    if train.phase != "Succeeded":
        return Children(train_job, train, workload=workload)
    eval_job, evaluation = _ensure_evaluation(ctx, body, job)
    kueue.sync_workload(ctx.client, job.spec.run_policy, eval_job, evaluation)
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
    deadline = policy.startup_deadline_seconds
    if restart_backoff.holds_back(current, deadline, now_rfc3339()) and not lookup(
        client, kube.JOB, namespace, L.train_job_name(name)
    ):
        return None, lifecycle.MISSING  # the restart backoff's wait (restart_backoff.py): no Job yet
    attempt = current.current_attempt
    mode = gang.gang_mode(client, ctx.settings.gang_scheduling)
    train_job = ensure_job(
        client, body, L.train_job_name(name), lambda: builders.build_train_job(job, ctx.settings, attempt, mode),
        lambda: [(kube.CONFIGMAP, builders.build_run_configmap(job)),
                 (kube.SERVICE, builders.build_headless_service(job))],
    )  # fmt: skip
    train = lifecycle.train_state(train_job, attempt)
    if train.phase in ("Suspended", "Pending", "Running"):
        gang.ensure_pod_group(client, job, train_job, attempt)  # the pods wait for it (gang.py)
    if train.phase == "Replacing":
        _replace(client, train_job)
        _release_stuck_pods(ctx, body, train_job)
    elif not policy.queue_name:  # with a queue, Kueue owns spec.suspend
        train_job = sync_suspend(client, train_job, policy.suspend)
        train = lifecycle.train_state(train_job, attempt)
    if train.phase == "Running" and current.start_time:
        _fail_pods_on_lost_nodes(ctx, body, train_job)
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


def _replace(client: kube.KubeClient, train_job: dict[str, Any]) -> None:
    """Delete a failed attempt's training Job, its pods first (Foreground, as JobSet restarts)."""
    meta = train_job["metadata"]
    if not meta.get("deletionTimestamp"):
        client.delete(kube.JOB, meta["namespace"], meta["name"], propagation="Foreground")


def _fail_pods_on_lost_nodes(ctx: OperatorContext, body: dict[str, Any], train_job: dict[str, Any]) -> None:
    """A training attempt with a pod on a lost node fails now, not at the collective timeout
    (stuck_pods.fail_lost). Looked at only when the Job counts an active pod not ready."""
    status = train_job.get("status") or {}
    if status.get("active", 0) <= status.get("ready", 0):
        return
    meta = train_job["metadata"]
    pods = pods_of(ctx.client, meta["namespace"], body["metadata"]["name"], L.ROLE_TRAIN)
    lost = stuck_pods.fail_lost(ctx.client, train_job, pods)
    if lost:
        message = f"failed the training pods on lost nodes: {'; '.join(p.describe() for p in lost)}"
        events.post(ctx.client, body, "Warning", stuck_pods.REASON_NODE_LOST, message)


def _release_stuck_pods(ctx: OperatorContext, body: dict[str, Any], train_job: dict[str, Any]) -> None:
    """Force-delete the replaced attempt's pods stuck Terminating on lost nodes (stuck_pods.py), so
    the Foreground delete ends and the next attempt starts; each is told in a Warning Event."""
    meta = train_job["metadata"]
    if not meta.get("deletionTimestamp"):
        return  # just asked to go: nothing can be overdue yet
    pods = pods_of(ctx.client, meta["namespace"], body["metadata"]["name"], L.ROLE_TRAIN)
    released = stuck_pods.release(ctx.client, train_job, pods, now_rfc3339())
    if released:
        message = (
            f"force-deleted the replaced attempt's pods stuck Terminating on lost nodes: "
            f"{'; '.join(p.describe() for p in released)}"
        )
        events.post(ctx.client, body, "Warning", EVENT_STUCK_PODS, message)


def _after_write(
    ctx: OperatorContext,
    body: dict[str, Any],
    job: SpeedrunJob,
    current: SpeedrunJobStatus,
    new: SpeedrunJobStatus,
    children: Children,
) -> None:
    """The acts that follow from the status just written (see the module's docstring): the TTL of
    a Job whose outcome is recorded and the stop of a start-up failure, owed until they hold
    (side_effects.py), on every pass, not only the one that wrote the status."""
    train_job, eval_job = children.train_job, children.eval_job
    periodic = ctx.periodic
    if new.next_attempt_time is not None and periodic is not None:  # a pass when the wait ends
        meta = body["metadata"]
        periodic.wakeups.after(meta["namespace"], meta["name"], restart_backoff.seconds_left(new))
    if new.current_attempt > current.current_attempt and train_job is not None:
        _replace(ctx.client, train_job)  # the restart is counted: now the old attempt goes
        return
    policy = job.spec.run_policy
    ttl, deadline = policy.ttl_seconds_after_finished, policy.startup_deadline_seconds
    side_effects.hold(ctx.client, side_effects.owed(new, train_job, eval_job, ttl, deadline))


def _held_back(client: kube.KubeClient, policy: Any, namespace: str, job_name: str) -> bool:
    """With a queue, Kueue owns the Jobs' spec.suspend (it admits by writing false), so a user's
    runPolicy.suspend holds a Job back by not creating it; one already created is Kueue's."""
    return bool(policy.queue_name and policy.suspend) and client.get(kube.JOB, namespace, job_name) is None


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
    operator_metrics.record_disruptions(new.disruptions - current.disruptions)
    counted = new.restarts - current.restarts + new.disruptions - current.disruptions
    operator_metrics.record_early_restarts(new.current_attempt - current.current_attempt - counted)
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
