"""Reconcile one SpeedrunJob: validate, act on its children, observe them, decide, write status.

Level-triggered and idempotent: every trigger (create, resume after an operator restart, spec
update, any event of a child Job, the periodic resync) runs the same `reconcile`, in this order:
the actions (`_ensure_children`: create what is missing, delete a failed attempt, patch
spec.suspend, fail a training pod on a lost node: stuck_pods.py), the reads (`_observe`: the
Jobs' pods and events -> `lifecycle.Observation`), the decision (`lifecycle.next_status`), and a
status patch of only what changed. A per-job lock serialises triggers inside this process; the
Lease (leader.py) keeps one active replica.

Two acts follow from the status written, so a crash in between repeats them on the next pass
rather than skipping them: a gang restart deletes the failed attempt's training Job (Foreground:
its pods first; the next pass creates the next attempt; pods stuck Terminating on a lost node are
force-deleted once overdue, stuck_pods.py), and a Job whose outcome is recorded gets
`runPolicy.ttlSecondsAfterFinished`, so the TTL controller never deletes an unrecorded Job. These,
and the stop of a training Job after a start-up failure, are re-checked on every pass, settled
jobs included, until the Jobs show them (side_effects.py).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kopf

from speedrun_api.manifest import SpecError, parse_job
from speedrun_api.spec import SpeedrunJob
from speedrun_api.status import SpeedrunJobStatus, now_rfc3339, read_status
from speedrun_operator import (
    builders,
    disruptions,
    events,
    gang,
    kube,
    kueue,
    lifecycle,
    operator_metrics,
    pod_startup,
    stuck_pods,
)
from speedrun_operator import conditions as C
from speedrun_operator import labels as L
from speedrun_operator.disruptions import Disruption, find_disruption
from speedrun_operator.handlers import side_effects
from speedrun_operator.handlers.children import ChildConflict, ensure_child, sync_suspend
from speedrun_operator.handlers.operator_startup import OperatorContext
from speedrun_operator.pod_startup import PodsWaiting
from speedrun_operator.termination import eval_results, failure_detail

CONFLICT_RETRY_SECONDS = 10
REJECTED_STATUSES = (400, 422)  # BadRequest, Invalid: the request itself is refused, not the caller
IMMUTABLE_NOTE = (
    "spec changes after the Jobs exist do not reach them (Job pod templates are immutable); "
    "only runPolicy.suspend applies. Delete and re-create the SpeedrunJob to run the new spec"
)

EVENT_STUCK_PODS = "StuckPodsForceDeleted"

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
        side_effects.hold_settled(ctx.client, body, current)  # what the status owes, until it holds
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
    _after_write(ctx, job, current, new, children)
    return new


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
    workload: dict[str, Any] | None = None  # a queued training Job's Kueue Workload, when read (kueue.py)


def _ensure_children(
    ctx: OperatorContext, body: dict[str, Any], job: SpeedrunJob, current: SpeedrunJobStatus
) -> Children:
    """The actions: create the children that are missing, delete a failed training attempt, and
    patch the Jobs' spec.suspend to runPolicy.suspend."""
    ensure_child(ctx.client, kube.CONFIGMAP, builders.build_run_configmap(job), body)
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
    ensure_child(client, kube.SERVICE, builders.build_headless_service(job), body)
    if _held_back(client, policy, namespace, L.train_job_name(name)):
        return None, lifecycle.JobState("Suspended")
    attempt = current.current_attempt
    mode = gang.gang_mode(client, ctx.settings.gang_scheduling)
    train_job = ensure_child(client, kube.JOB, builders.build_train_job(job, ctx.settings, attempt, mode), body)
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
    eval_job = ensure_child(client, kube.JOB, builders.build_eval_job(job, ctx.settings), body)
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
    waiting, startup_failure, disruption = None, None, None
    train_pods = _lazy(lambda: _pods(client, namespace, name, L.ROLE_TRAIN))
    # Until this attempt's ranks have all joined (phase Training), it is starting: its pods'
    # reasons and its start-up deadline apply, on every attempt, and to a failure before joining.
    starting = current.phase != "Training"
    short = train.phase in ("Pending", "Running") and train.ready + train.succeeded < lo
    if starting and (short or train.phase == "Failed"):
        waiting, startup_failure = _startup(client, job, children, now, current, train_pods())
    if train.phase in ("Pending", "Running") and train.ready + train.succeeded < _parallelism(children.train_job):
        disruptions.MEMO.remember(namespace, train_pods())  # a pod may be going: see why, while it is there
    detail: str | None = None
    if train.phase == "Failed":
        detail = failure_detail(train_pods(), L.CONTAINER_TRAINER, train.message)
        disruption = _disruption(client, children.train_job, train, train_pods())
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
        queue_detail=kueue.waiting_message(policy.queue_name, children.workload) if policy.queue_name else None,
        train=train,
        evaluation=evaluation,
        results=results,
        results_error=results_error,
        failure_detail=detail,
        max_restarts=policy.max_restarts,
        min_ready=lo,
        waiting=waiting,
        startup_failure=startup_failure,
        disruption=disruption,
        max_disruptions=policy.max_disruptions,
        train_started=((children.train_job or {}).get("status") or {}).get("startTime"),
    )


def _parallelism(train_job: dict[str, Any] | None) -> int:
    return int(((train_job or {}).get("spec") or {}).get("parallelism") or 1)


def _lazy(read: Callable[[], list[dict[str, Any]]]) -> Callable[[], list[dict[str, Any]]]:
    """`read` called at most once, when first needed."""
    cache: list[list[dict[str, Any]]] = []

    def get() -> list[dict[str, Any]]:
        if not cache:
            cache.append(read())
        return cache[0]

    return get


def _startup(
    client: kube.KubeClient,
    job: SpeedrunJob,
    children: Children,
    now: str,
    current: SpeedrunJobStatus,
    pods: list[dict[str, Any]],
) -> tuple[PodsWaiting | None, str | None]:
    """An attempt whose ranks have not all joined yet: why its pods are not all running, and, past
    the start-up deadline (from `status.startupStartTime` after attempts that failed before
    joining), the message it fails with."""
    train_job, train = children.train_job, children.train
    waiting = pod_startup.pods_waiting(pods)
    if train_job is not None and (waiting is None or not waiting.problem) and pod_startup.missing_pods(train_job, pods):
        waiting = pod_startup.creation_failure(_job_events(client, train_job)) or waiting
    deadline = job.spec.run_policy.startup_deadline_seconds
    if not pod_startup.startup_overdue(train_job, deadline, now, current.startup_start_time):
        return waiting, None
    lo, _ = job.spec.resources.node_range
    return waiting, pod_startup.startup_failure(deadline, waiting, train.ready, lo)


def _disruption(
    client: kube.KubeClient, train_job: dict[str, Any] | None, train: lifecycle.JobState, pods: list[dict[str, Any]]
) -> Disruption | None:
    """The failed attempt's disruption, if a pod of it was preempted, evicted or lost with its node;
    the pod's node from its Events when the pod is already gone."""
    attempt_pods = disruptions.job_pods(train_job, pods)
    found = find_disruption(train.reason, train.message, attempt_pods)
    if train_job is None:
        return found
    namespace = train_job["metadata"]["namespace"]
    if found is None and train.reason in C.RESTARTABLE_JOB_FAILURES:
        # A survivor failed: was a rank's node lost (NotReady) before Kubernetes marked its pod?
        fields = {"involvedObject.kind": "Pod", "reason": disruptions.NODE_NOT_READY}
        return disruptions.lost_with_node(attempt_pods, client.list(kube.EVENT, namespace, fields=fields))
    if found is None or found.node:
        return found
    found = disruptions.MEMO.recall(namespace, found)  # the pod is gone: what was seen of it
    if found.node:
        return found
    fields = {"involvedObject.kind": "Pod", "involvedObject.name": found.pod}
    pod_events = client.list(kube.EVENT, namespace, fields=fields)
    return dataclasses.replace(found, node=disruptions.node_of(pod_events))


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
    pods = _pods(ctx.client, meta["namespace"], body["metadata"]["name"], L.ROLE_TRAIN)
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
    pods = _pods(ctx.client, meta["namespace"], body["metadata"]["name"], L.ROLE_TRAIN)
    released = stuck_pods.release(ctx.client, train_job, pods, now_rfc3339())
    if released:
        message = (
            f"force-deleted the replaced attempt's pods stuck Terminating on lost nodes: "
            f"{'; '.join(p.describe() for p in released)}"
        )
        events.post(ctx.client, body, "Warning", EVENT_STUCK_PODS, message)


def _after_write(
    ctx: OperatorContext, job: SpeedrunJob, current: SpeedrunJobStatus, new: SpeedrunJobStatus, children: Children
) -> None:
    """The acts that follow from the status just written (see the module's docstring): the TTL of
    a Job whose outcome is recorded and the stop of a start-up failure, owed until they hold
    (side_effects.py), on every pass, not only the one that wrote the status."""
    train_job, eval_job = children.train_job, children.eval_job
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
