"""The kopf entry point: only the decorators; each delegates to speedrun_operator.handlers.

    kopf run -m speedrun_operator.main --all-namespaces      # or: speedrun operator

Triggers of the one reconcile (handlers/reconcile.py): SpeedrunJob create / resume / update,
every event of a Job the operator manages, and the periodic resync. The periodic work (resync,
and rank 0's training metrics copied into status.progress while a job is Training) is a thread
started once this replica leads (handlers/periodic.py), not kopf timers: those would put a
finalizer on every SpeedrunJob, and a namespace could not be deleted while the operator is down.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from speedrun_api.spec import API_GROUP, API_VERSION, PLURAL
from speedrun_operator import kube, object_cache, operator_metrics
from speedrun_operator import labels as L
from speedrun_operator.handlers import coalesce, operator_startup, periodic, reconcile

SPEEDRUNJOBS = (API_GROUP, API_VERSION, PLURAL)
MANAGED_JOBS = {L.LABEL_MANAGED_BY: L.MANAGER, L.LABEL_JOB: kopf.PRESENT}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    # A standby replica waits here: kopf starts no watch before its startup handlers end.
    context = operator_startup.configure(settings, memo, logger)
    await operator_startup.elect(context, logger)
    context.periodic = periodic.Periodic(context, logger).start()


@kopf.on.cleanup()
def shut_down(memo: kopf.Memo, **_: Any) -> None:
    operator_startup.shutdown(memo)


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    return kube.connection_info(kube.load_configuration())


@kopf.on.resume(*SPEEDRUNJOBS)
@kopf.on.create(*SPEEDRUNJOBS)
def create_children(name: str, namespace: str, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    reconcile.reconcile(memo.operator, namespace, name, "create", logger)


@kopf.on.update(*SPEEDRUNJOBS, field="spec")
def apply_spec_change(name: str, namespace: str, diff: Any, status: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    reconcile.on_spec_change(memo.operator, namespace, name, diff, status)


@kopf.on.event(*SPEEDRUNJOBS)
async def remember_speedrunjob(event: dict[str, Any], type: str, name: str, namespace: str, memo: kopf.Memo,
                               **_: Any) -> None:  # fmt: skip
    # async: on kopf's event loop, not queued behind the reconciles in its thread pool, so the
    # cache (object_cache.py) is current before any handler of this event runs.
    object_cache.follow(memo.operator.client, kube.SPEEDRUNJOB, event)
    # No finalizer, no on.delete: children go with their ownerReferences (garbage collection);
    # only the gauge remembers the job, until the watch reports it deleted.
    if type == "DELETED":
        operator_metrics.PHASE_BOOK.forget(namespace, name)
        coalesce.COALESCER.forget((namespace, name))
        reconcile.forget(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED_JOBS)
async def remember_job(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    object_cache.follow(memo.operator.client, kube.JOB, event)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED_JOBS)
def follow_job(labels: dict[str, str], namespace: str, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    name = labels[L.LABEL_JOB]
    coalesce.COALESCER.run((namespace, name), lambda: reconcile.reconcile(memo.operator, namespace, name,
                                                                         "job-event", logger))  # fmt: skip
