"""Operator start-up and shut-down: kopf settings, the API client, the metrics server.

kopf keeps its own bookkeeping (handler progress, last-handled spec) in annotations under
speedrun.dev/, so `status` holds only what the CRD schema describes. Log lines are not posted
as Events: the operator posts one deliberate Event per phase transition instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import kopf

from speedrun_api.spec import API_GROUP
from speedrun_operator import kube, metrics
from speedrun_operator.labels import KOPF_ANNOTATION_PREFIX, MANAGER
from speedrun_operator.settings import DEFAULT_PEERING_NAME, OperatorSettings

FINALIZER = f"{API_GROUP}/finalizer"


@dataclass
class OperatorContext:
    """What every handler needs; lives in kopf's memo as `memo.operator`."""

    settings: OperatorSettings
    client: kube.KubeClient
    metrics_server: Any = None


def configure(kopf_settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger) -> OperatorContext:
    settings = OperatorSettings.from_env()
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_ANNOTATION_PREFIX)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=KOPF_ANNOTATION_PREFIX)
    kopf_settings.persistence.finalizer = FINALIZER
    kopf_settings.posting.level = logging.WARNING
    kopf_settings.posting.reporting_component = MANAGER
    kopf_settings.watching.server_timeout = 300  # reconnect watches now and then, as client-go does
    # A deleted job's timers are stopped before kopf releases its finalizer; our timers are short
    # sync calls, so wait for them briefly instead of re-checking once a minute (kopf's default).
    kopf_settings.background.instant_exit_timeout = 2.0
    kopf_settings.background.cancellation_polling = 2
    if not kopf_settings.peering.mandatory:
        # Auto-detect: peer through KopfPeering "speedrun-operator" if it exists, else standalone.
        kopf_settings.peering.name = DEFAULT_PEERING_NAME
    context = OperatorContext(settings=settings, client=kube.KubeClient(kube.load_configuration()))
    context.metrics_server = metrics.serve(settings.metrics_port)
    memo.operator = context
    logger.info(
        f"speedrun-operator: image {settings.trainer_image}, metrics port {settings.metrics_port or 'off'}, "
        f"progress every {settings.progress_interval}s, resync every {settings.resync_interval}s"
    )
    return context


def shutdown(memo: kopf.Memo) -> None:
    context: OperatorContext | None = getattr(memo, "operator", None)
    if context is None:
        return
    if context.metrics_server is not None:
        context.metrics_server.shutdown()
        context.metrics_server.server_close()
    context.client.close()
