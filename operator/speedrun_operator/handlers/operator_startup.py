"""Operator start-up and shut-down: kopf settings, the API client, the metrics server, the Lease.

kopf keeps its own bookkeeping (handler progress, last-handled spec) in annotations under
speedrun.dev/, so `status` holds only what the CRD schema describes. Log lines are not posted
as Events: the operator posts one deliberate Event per phase transition instead.

What kopf watches, and with which rights:
- Jobs only with the server-side selector `app.kubernetes.io/managed-by=speedrun-operator`
  (kopf's `settings.watching.label_selectors`; the handler's `labels=` filter is client-side
  and alone would stream every Job of the namespace to the operator);
- serving given namespaces, no cluster-scoped calls at all (`settings.scanning.disabled`: kopf
  then neither lists/watches Namespaces nor CustomResourceDefinitions), so a namespaced install
  needs only the Role in each namespace; cluster-wide, kopf watches CRDs as usual.
With leader election (leader.py), `elect` holds start-up until this replica holds the Lease.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import kopf

from speedrun_api.spec import API_GROUP
from speedrun_operator import kube, leader, object_cache, operator_metrics
from speedrun_operator.labels import KOPF_ANNOTATION_PREFIX, LABEL_MANAGED_BY, MANAGER
from speedrun_operator.settings import OperatorSettings

FINALIZER = f"{API_GROUP}/finalizer"
CONSISTENCY_TIMEOUT_SECONDS = 30.0
# kopf runs sync handlers in a thread pool of min(32, CPUs + 4) threads by default: 6 on two
# cores. A reconcile spends most of its time waiting on the apiserver, so more threads overlap
# those waits: `handler_threads` (64 by default; bench/bench_control_plane.py --handler-threads).


@dataclass
class OperatorContext:
    """What every handler needs; lives in kopf's memo as `memo.operator`."""

    settings: OperatorSettings
    client: kube.KubeClient
    metrics_server: Any = None
    elector: leader.LeaderElector | None = None
    periodic: Any = None  # handlers.periodic.Periodic, once this replica leads


def configure(kopf_settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger) -> OperatorContext:
    settings = OperatorSettings.from_env()
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_ANNOTATION_PREFIX)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=KOPF_ANNOTATION_PREFIX)
    kopf_settings.persistence.finalizer = FINALIZER
    # After its own patch of a SpeedrunJob, kopf waits this long for the patched version to come
    # back through the watch, and then goes on with the newest body it has. That body is older than
    # its patch (the handler's status patches), so it runs the create handler a second time. At 100
    # jobs applied at once the watch lagged more than kopf's 5 s for 61 % of them (bench/README.md).
    # The wait ends as soon as the version arrives, so a longer bound costs nothing when it does.
    kopf_settings.persistence.consistency_timeout = CONSISTENCY_TIMEOUT_SECONDS
    kopf_settings.posting.level = logging.WARNING
    kopf_settings.posting.reporting_component = MANAGER
    kopf_settings.watching.server_timeout = 300  # reconnect watches now and then, as client-go does
    kopf_settings.watching.label_selectors["batch", "v1", "jobs"] = f"{LABEL_MANAGED_BY}={MANAGER}"
    kopf_settings.scanning.disabled = bool(settings.namespaces)
    kopf_settings.execution.max_workers = settings.handler_threads
    context: OperatorContext | None = getattr(memo, "operator", None)
    if context is not None:  # kopf retries a failed start-up: the client and the port are ours already
        return context
    config = kube.load_configuration()
    # Connections for every handler thread and the periodic one: past the pool's size (CPUs x 5
    # by default) urllib3 opens a new TLS connection per request and drops it afterwards.
    config.connection_pool_maxsize = settings.handler_threads + 4
    context = OperatorContext(settings=settings, client=object_cache.CachingClient(config))
    context.metrics_server = operator_metrics.serve(settings.metrics_port)
    memo.operator = context
    logger.info(
        f"speedrun-operator: image {settings.trainer_image}, metrics port {settings.metrics_port or 'off'}, "
        f"progress every {settings.progress_interval}s, resync every {settings.resync_interval}s"
    )
    return context


async def elect(context: OperatorContext, logger: logging.Logger) -> None:
    """With leader election on: wait (answering the liveness URL) until this replica holds the
    Lease, then renew it in the background; losing it ends the process (leader.exit_on_lost)."""
    settings = context.settings
    if not settings.leader_election:
        return
    timings = leader.LeaseTimings(settings.lease_duration, settings.lease_renew_deadline, settings.lease_retry_period)
    elector = leader.LeaderElector(context.client, settings.lease_namespace_or_default(), settings.lease_name,
                                   leader.default_identity(), timings)  # fmt: skip
    where = f"Lease {elector.namespace}/{elector.name}"
    health = leader.StandbyHealth(settings.liveness) if settings.liveness else None
    try:
        announced = ""
        while not await asyncio.to_thread(_attempt, elector, logger):
            if elector.holder != announced:
                announced = elector.holder
                logger.info(f"standby: {where} is held by {announced}; waiting as {elector.identity}")
            await asyncio.sleep(timings.retry_period)
    finally:
        if health is not None:
            health.close()
    logger.info(f"leader: {elector.identity} holds {where}")
    context.elector = elector
    # From here on no request of this replica outlives its renew deadline, and none is sent after it.
    context.client.deadline = elector.deadline
    elector.start_renewing(leader.exit_on_lost(logger))


def _attempt(elector: leader.LeaderElector, logger: logging.Logger) -> bool:
    """One standby attempt; any failure (an API error, a timeout, a reset connection, a malformed
    Lease) is logged and retried, never raised: a raised error would fail kopf's start-up."""
    try:
        return elector.try_acquire_or_renew()
    except Exception as err:
        logger.warning(f"leader election: {type(err).__name__}: {err}")
        return False


def shutdown(memo: kopf.Memo) -> None:
    context: OperatorContext | None = getattr(memo, "operator", None)
    if context is None:
        return
    if context.periodic is not None:
        context.periodic.stop()
    if context.elector is not None:
        context.elector.release()
    if context.metrics_server is not None:
        context.metrics_server.shutdown()
        context.metrics_server.server_close()
    context.client.close()
