"""The reads of one reconcile: what the SpeedrunJob's Jobs, pods and events say, gathered into the
`lifecycle.Observation` that `next_status` decides on (reconcile.py does the acts and the write).

Reads are lazy where they can be: the training pods are LISTed once, and only when start-up,
a failure or a disruption needs them; a Job the Job controller has not started (no
`status.startTime`) has no pods or events to read yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from speedrun_api.spec import SpeedrunJob
from speedrun_api.status import SpeedrunJobStatus, now_rfc3339
from speedrun_operator import conditions as C
from speedrun_operator import disruptions, kube, kueue, lifecycle, pod_startup
from speedrun_operator import labels as L
from speedrun_operator.disruptions import Disruption, find_disruption
from speedrun_operator.handlers.operator_startup import OperatorContext
from speedrun_operator.pod_startup import PodsWaiting
from speedrun_operator.termination import eval_results, failure_detail


def printer_nodes(body: dict[str, Any]) -> str:
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


def observe(
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
    train_pods = _lazy(lambda: pods_of(client, namespace, name, L.ROLE_TRAIN))
    # Until this attempt's ranks have all joined (phase Training), it is starting: its pods'
    # reasons and its start-up deadline apply, on every attempt, and to a failure before joining.
    # Before the Job controller starts the Job (it sets startTime in the sync that creates the pods,
    # or fails to: FailedCreate) there is no pod and no Event to read, and no deadline running.
    started_at = ((children.train_job or {}).get("status") or {}).get("startTime")
    starting = current.phase != "Training"
    short = train.phase in ("Pending", "Running") and train.ready + train.succeeded < lo
    if started_at and starting and (short or train.phase == "Failed"):
        waiting, startup_failure = _startup(client, job, children, now, current, train_pods)
    short_of_all = train.ready + train.succeeded < _parallelism(children.train_job)
    if started_at and train.phase in ("Pending", "Running") and short_of_all:
        disruptions.MEMO.remember(namespace, train_pods())  # a pod may be going: see why, while it is there
    detail: str | None = None
    if train.phase == "Failed":
        detail = failure_detail(train_pods(), L.CONTAINER_TRAINER, train.message)
        disruption = _disruption(client, children.train_job, train, train_pods())
    results, results_error = None, None
    if evaluation.phase in ("Succeeded", "Failed"):
        eval_pods = pods_of(client, namespace, name, L.ROLE_EVAL)
        if evaluation.phase == "Succeeded":
            results, results_error = eval_results(eval_pods, L.CONTAINER_EVALUATOR)
        else:
            detail = failure_detail(eval_pods, L.CONTAINER_EVALUATOR)
    return lifecycle.Observation(
        generation=generation,
        nodes=printer_nodes(body),
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
        startup_deadline=policy.startup_deadline_seconds,
        disruption=disruption,
        max_disruptions=policy.max_disruptions,
        train_started=started_at,
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
    read_pods: Callable[[], list[dict[str, Any]]],
) -> tuple[PodsWaiting | None, str | None]:
    """An attempt the Job controller started whose ranks have not all joined yet: why its pods are
    not all running, and, past the start-up deadline (from `status.startupStartTime` after attempts
    that failed before joining), the message it fails with."""
    train_job, train = children.train_job, children.train
    pods = read_pods()
    waiting = pod_startup.pods_waiting(pods)
    if train_job is not None and (waiting is None or not waiting.problem) and pod_startup.missing_pods(train_job, pods):
        waiting = pod_startup.creation_failure(job_events(client, train_job)) or waiting
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


def job_events(client: kube.KubeClient, job: dict[str, Any]) -> list[dict[str, Any]]:
    meta = job["metadata"]
    # By uid too: this Job's events, not those of a deleted attempt of the same name.
    fields = {"involvedObject.kind": "Job", "involvedObject.name": meta["name"], "involvedObject.uid": meta["uid"]}
    return client.list(kube.EVENT, meta["namespace"], fields=fields)


def pods_of(client: kube.KubeClient, namespace: str, name: str, role: str) -> list[dict[str, Any]]:
    return client.list(kube.POD, namespace, L.selector_labels(name, role))
