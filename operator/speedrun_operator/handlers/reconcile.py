"""Reconcile one SpeedrunJob: validate, ensure children, observe the Jobs, write status.

Level-triggered and idempotent: every trigger (create, resume after an operator restart, spec
update, any event of a child Job, the periodic resync) runs the same `reconcile`, which reads the
current state from the API, decides with `lifecycle.next_status`, and writes only what changed.
A per-job lock serialises concurrent triggers inside this process; the Lease (leader.py) keeps a single
active operator across replicas.

After the status is written, two acts follow from it (so that a crash in between repeats them
on the next pass, never skips them): a gang restart deletes the failed attempt's training Job
(Foreground: its pods go first; the next pass creates the next attempt under the same name),
and a Job whose outcome is now recorded gets `runPolicy.ttlSecondsAfterFinished`, so the TTL
controller can only ever delete a Job whose end is already in the SpeedrunJob's status.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import defaultdict
from typing import Any

import kopf

from speedrun_api.manifest import SpecError, parse_job
from speedrun_api.spec import SpeedrunJob
from speedrun_api.status import TERMINAL_PHASES, SpeedrunJobStatus, now_rfc3339, read_status
from speedrun_operator import builders, events, kube, lifecycle, operator_metrics, pod_startup
from speedrun_operator import labels as L
from speedrun_operator.handlers.children import ChildConflict, ensure_child, sync_suspend
from speedrun_operator.handlers.operator_startup import OperatorContext
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
        seen, children = _observe(ctx, body, job, current, generation)
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
        _stop_training_job(ctx, children["train"], job)
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


def _observe(
    ctx: OperatorContext, body: dict[str, Any], job: SpeedrunJob, current: SpeedrunJobStatus, generation: int
) -> tuple[lifecycle.Observation, dict[str, dict[str, Any] | None]]:
    client, settings, name = ctx.client, ctx.settings, job.metadata.name
    namespace = body["metadata"]["namespace"]
    policy = job.spec.run_policy
    manage_suspend = not policy.queue_name  # with a queue, Kueue owns spec.suspend
    ensure_child(client, kube.CONFIGMAP, builders.build_run_configmap(job), body)
    trained = lifecycle.training_finished(current)
    if trained:
        train_job = client.get(kube.JOB, namespace, L.train_job_name(name))  # may be gone (TTL)
        train = lifecycle.JobState("Succeeded")
    else:
        ensure_child(client, kube.SERVICE, builders.build_headless_service(job), body)
        train_job = None
        if _held_back(client, policy, namespace, L.train_job_name(name)):
            train = lifecycle.JobState("Suspended")
        else:
            attempt = current.restarts
            train_job = ensure_child(client, kube.JOB, builders.build_train_job(job, settings, attempt), body)
            train = lifecycle.train_state(train_job, attempt)
            if train.phase == "Replacing":
                _replace(client, train_job)
            elif manage_suspend:
                train_job = sync_suspend(client, train_job, policy.suspend)
                train = lifecycle.train_state(train_job, attempt)
    lo, _ = job.spec.resources.node_range
    waiting, startup_failure = None, None
    now = now_rfc3339()
    if train.phase in ("Pending", "Running") and train.ready + train.succeeded < lo and not current.start_time:
        # Never trained yet: why the pods are not all running, and whether start-up took too long.
        pods = _pods(client, namespace, name, L.ROLE_TRAIN)
        waiting = pod_startup.pods_waiting(pods)
        if (waiting is None or not waiting.problem) and pod_startup.missing_pods(train_job, pods):
            waiting = pod_startup.creation_failure(_job_events(client, train_job)) or waiting
        deadline = policy.startup_deadline_seconds
        if pod_startup.startup_overdue(train_job, deadline, now):
            startup_failure = pod_startup.startup_failure(deadline, waiting, train.ready, lo)
    detail: str | None = None
    if train.phase == "Failed":
        detail = failure_detail(_pods(client, namespace, name, L.ROLE_TRAIN), L.CONTAINER_TRAINER, train.message)
    evaluation = lifecycle.MISSING
    eval_job = None
    results, results_error = None, None
    if train.phase == "Succeeded" and _held_back(client, policy, namespace, L.eval_job_name(name)):
        evaluation = lifecycle.JobState("Suspended")
    elif train.phase == "Succeeded":
        eval_job = ensure_child(client, kube.JOB, builders.build_eval_job(job, settings), body)
        if manage_suspend:
            eval_job = sync_suspend(client, eval_job, policy.suspend)
        evaluation = lifecycle.job_state(eval_job)
        eval_pods = (
            [] if evaluation.phase not in ("Succeeded", "Failed") else _pods(client, namespace, name, L.ROLE_EVAL)
        )
        if evaluation.phase == "Succeeded":
            results, results_error = eval_results(eval_pods, L.CONTAINER_EVALUATOR)
        elif evaluation.phase == "Failed":
            detail = failure_detail(eval_pods, L.CONTAINER_EVALUATOR)
    observation = lifecycle.Observation(
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
    return observation, {"train": train_job, "eval": eval_job}


def _replace(client: kube.KubeClient, train_job: dict[str, Any]) -> None:
    """Delete a failed attempt's training Job, its pods first (Foreground, as JobSet restarts)."""
    meta = train_job["metadata"]
    if not meta.get("deletionTimestamp"):
        client.delete(kube.JOB, meta["namespace"], meta["name"], propagation="Foreground")


def _after_write(
    ctx: OperatorContext,
    job: SpeedrunJob,
    current: SpeedrunJobStatus,
    new: SpeedrunJobStatus,
    children: dict[str, dict[str, Any] | None],
) -> None:
    train_job, eval_job = children["train"], children["eval"]
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
