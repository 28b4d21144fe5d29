"""The kopf entry point: only the decorators; each delegates to speedrun_operator.handlers.

    kopf run -m speedrun_operator.main --all-namespaces      # or: speedrun operator

Triggers of the one reconcile (handlers/reconcile.py): SpeedrunJob create / resume / update,
every event of a Job the operator manages, and a resync timer. A second timer copies rank 0's
training metrics into status.progress while a job is Training. Timer intervals are read from
the environment when this module is imported (settings.py).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from speedrun_api.spec import API_GROUP, API_VERSION, PLURAL
from speedrun_api.status import TERMINAL_PHASES
from speedrun_operator import kube, metrics
from speedrun_operator import labels as L
from speedrun_operator.handlers import reconcile, scrape, setup
from speedrun_operator.settings import OperatorSettings

SETTINGS = OperatorSettings.from_env()
SPEEDRUNJOBS = (API_GROUP, API_VERSION, PLURAL)
MANAGED_JOBS = {L.LABEL_MANAGED_BY: L.MANAGER, L.LABEL_JOB: kopf.PRESENT}


def _is_training(status: dict[str, Any], **_: Any) -> bool:
    return (status or {}).get("phase") == "Training"


def _is_active(status: dict[str, Any], **_: Any) -> bool:
    return (status or {}).get("phase") not in TERMINAL_PHASES


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    # A standby replica waits here: kopf starts no watch before its startup handlers end.
    await setup.elect(setup.configure(settings, memo, logger), logger)


@kopf.on.cleanup()
def shut_down(memo: kopf.Memo, **_: Any) -> None:
    setup.shutdown(memo)


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


@kopf.on.delete(*SPEEDRUNJOBS, optional=True)
def forget(name: str, namespace: str, **_: Any) -> None:
    # Children go with their ownerReferences (garbage collection); only the gauge remembers.
    metrics.PHASE_BOOK.forget(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED_JOBS)
def follow_job(labels: dict[str, str], namespace: str, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    reconcile.reconcile(memo.operator, namespace, labels[L.LABEL_JOB], "job-event", logger)


@kopf.timer(*SPEEDRUNJOBS, interval=SETTINGS.resync_interval, initial_delay=SETTINGS.resync_interval, when=_is_active)
def resync(name: str, namespace: str, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    reconcile.reconcile(memo.operator, namespace, name, "resync", logger)


@kopf.timer(*SPEEDRUNJOBS, interval=SETTINGS.progress_interval, when=_is_training)
def follow_progress(
    name: str, namespace: str, spec: dict[str, Any], memo: kopf.Memo, logger: logging.Logger, **_: Any
) -> None:
    scrape.follow_progress(memo.operator, namespace, name, spec, logger)
