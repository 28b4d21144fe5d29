"""The operator's periodic work, without kopf timers: the safety-net resync and the progress scrape.

Why not `@kopf.timer`: kopf puts a finalizer on every object a timer or daemon runs for (kopf's
on.py registers them with `requires_finalizer=True`), and only a running operator removes it.
With the operator uninstalled, scaled to zero or crash-looping, `kubectl delete namespace` would
then hang on every SpeedrunJob in it. The operator needs no finalizer otherwise (its children go
by ownerReference garbage collection; the delete handler is optional), so the periodic work is
one thread per operator instead, started once this replica leads (operator_startup.elect):

- every `progress_interval` seconds: rank 0's metrics scraped into status.progress for the
  SpeedrunJobs Training, as the operator's cache (object_cache.py) has them, handed to a bounded
  pool (scrape.Scrapes): the thread never waits on a scrape;
- when a restart before start's wait ends (restart_backoff.py): the reconcile that creates the
  next attempt, asked for by the reconcile that left the job waiting (wakeups.py);
- every `resync_interval` seconds: one LIST of SpeedrunJobs per served namespace (one for the
  whole cluster), which refreshes the cache, and the same reconcile as every other trigger for
  each SpeedrunJob not yet finished (a missed Job event is caught here), and for the finished ones
  the check that what their status owes their Jobs holds (side_effects.py: one LIST of Jobs per
  namespace, a patch only where one is missing).

kopf then keeps no finalizer, and removes its old one from SpeedrunJobs an earlier version
marked. A failing call is logged and retried at the next tick; the thread never dies of it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import kopf

from speedrun_api.status import TERMINAL_PHASES, read_status
from speedrun_operator import kube
from speedrun_operator.handlers import coalesce, reconcile, scrape, side_effects
from speedrun_operator.handlers.operator_startup import OperatorContext
from speedrun_operator.handlers.wakeups import Wakeups
from speedrun_operator.object_cache import ObjectCache


class Periodic:
    def __init__(self, ctx: OperatorContext, logger: logging.Logger) -> None:
        self.ctx, self.logger = ctx, logger
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="speedrun-periodic", daemon=True)
        self.scrapes = scrape.Scrapes(ctx, logger)
        self.wakeups = Wakeups(self._wake, logger)  # the passes the restart backoff asks for

    def start(self) -> Periodic:
        self._thread.start()
        self.wakeups.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.scrapes.stop()
        self.wakeups.stop(timeout)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        settings = self.ctx.settings
        now = time.monotonic()
        next_progress, next_resync = now + settings.progress_interval, now + settings.resync_interval
        while not self._stop.wait(max(0.0, min(next_progress, next_resync) - time.monotonic())):
            now = time.monotonic()
            resync, progress = now >= next_resync, now >= next_progress
            if resync:
                next_resync = now + settings.resync_interval
            if progress:
                next_progress = now + settings.progress_interval
            try:
                self.tick(resync=resync, progress=progress)
            except Exception as err:  # the next tick retries; the thread must outlive any one failure
                self.logger.warning(f"periodic work failed: {type(err).__name__}: {err}")

    def _wake(self, namespace: str, name: str) -> None:
        try:
            coalesce.COALESCER.run(
                (namespace, name), lambda: reconcile.reconcile(self.ctx, namespace, name, "backoff", self.logger)
            )
        except (kopf.PermanentError, kopf.TemporaryError) as err:
            self.logger.debug(f"[{namespace}/{name}] backoff: {err}")

    def speedrunjobs(self, fresh: bool = True) -> list[dict[str, Any]]:
        """The SpeedrunJobs served: LISTed (which refreshes the cache), or, not `fresh`, from the
        cache (object_cache.py) when the client has one."""
        namespaces: tuple[str | None, ...] = self.ctx.settings.namespaces or (None,)
        cache = getattr(self.ctx.client, "cache", None)
        if not fresh and isinstance(cache, ObjectCache):
            return [body for ns in namespaces for body in cache.list(kube.SPEEDRUNJOB, ns)]
        return [body for ns in namespaces for body in self.ctx.client.list(kube.SPEEDRUNJOB, ns)]

    def tick(self, *, resync: bool, progress: bool) -> None:
        # Progress alone reads the cache: a LIST every few seconds of every job, status and all,
        # cost the operator more than the scrapes. The resync LISTs: it is the safety net.
        bodies = [b for b in self.speedrunjobs(fresh=resync) if not b["metadata"].get("deletionTimestamp")]
        phases = [(b.get("status") or {}).get("phase") for b in bodies]
        if progress:
            for body, phase in zip(bodies, phases, strict=True):
                if phase == "Training":
                    self.scrapes.submit(body["metadata"]["namespace"], body["metadata"]["name"], body.get("spec") or {})
        if not resync:
            return
        self.hold_finished([b for b, phase in zip(bodies, phases, strict=True) if phase in TERMINAL_PHASES])
        for body, phase in zip(bodies, phases, strict=True):
            if self._stop.is_set():
                return
            if phase in TERMINAL_PHASES:
                continue
            namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
            try:
                reconcile.reconcile(self.ctx, namespace, name, "resync", self.logger)
            except (kopf.PermanentError, kopf.TemporaryError) as err:
                self.logger.debug(f"[{namespace}/{name}] resync: {err}")
            except kube.KubeError as err:
                self.logger.warning(f"[{namespace}/{name}] periodic work failed: {err}")

    def hold_finished(self, finished: list[dict[str, Any]]) -> None:
        """What finished jobs' statuses owe their Jobs (a TTL, a stop), re-applied where missing:
        one LIST of the operator's Jobs per namespace that has a finished job."""
        for namespace in sorted({b["metadata"]["namespace"] for b in finished}):
            try:
                jobs = side_effects.managed_jobs(self.ctx.client, namespace)
            except kube.KubeError as err:
                self.logger.warning(f"[{namespace}] listing Jobs failed: {err}")
                continue
            for body in (b for b in finished if b["metadata"]["namespace"] == namespace):
                side_effects.hold(self.ctx.client, side_effects.owed_by(body, read_status(body.get("status")), jobs))
