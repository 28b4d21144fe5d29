"""Leader election on a coordination.k8s.io/v1 Lease: one active replica, the others on standby.

Why a Lease and not kopf peering: peering is conflict detection (replicas of equal priority all
pause, and it needs the KopfPeering CRD and object); a Lease is what Kubernetes' own controllers
and controller-runtime use, needs only a namespaced Role, and a standby makes no other API call.
The algorithm is client-go's (k8s.io/client-go/tools/leaderelection/leaderelection.go,
`tryAcquireOrRenew`):

- a replica takes the Lease when it is missing, released (no holder), or when the record it
  observes has not changed for `duration` seconds of its *own* clock (no clock-skew trust in the
  holder's renewTime); each write carries the resourceVersion it read, so of two racing replicas
  exactly one wins (the other gets 409);
- the holder renews every `retry_period`; if no renewal succeeds within `renew_deadline`, or
  another replica is seen holding the Lease, leadership is lost and the process exits at once
  (client-go's OnStoppedLeading, as controller-runtime's manager does), so two replicas never
  reconcile together; the pod is restarted and comes back as a standby;
- the renew deadline is an instant, not a check made after a call returns: `deadline()` is the
  start of the last successful attempt + `renew_deadline`. The API client sends nothing after it
  and cuts every request's timeout to it (kube.py: this Lease call and every handler's), and a
  watchdog thread ends leadership at that instant even while a call hangs. A standby takes over
  no sooner than `duration` after it first saw that renewal, which the apiserver stored after the
  attempt started: so the old holder has stopped writing `duration - renew_deadline` seconds
  (5 s by default) before anyone else may start;
- on a graceful stop the holder releases the Lease (holder emptied), so a rolling update hands
  over without waiting for expiry (client-go's ReleaseOnCancel).

A standby waits inside kopf's startup activity: kopf starts no watch and runs no handler before
startup ends. Meanwhile it answers the liveness endpoint itself (`StandbyHealth`), so the pod's
probes do not restart it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from speedrun_operator import kube

LEASE = kube.Kind("coordination.k8s.io/v1", "leases", "Lease")
EXIT_LEADERSHIP_LOST = 3


@dataclass(frozen=True)
class LeaseTimings:
    """client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period."""

    duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def default_identity() -> str:
    """`<pod name>_<random>`: the pod name says which replica; the suffix tells restarts apart."""
    host = os.environ.get("HOSTNAME") or socket.gethostname()
    return f"{host}_{uuid.uuid4().hex[:8]}"


def _micro_time() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, client: kube.KubeClient, namespace: str, name: str, identity: str,
                 timings: LeaseTimings, clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.client, self.namespace, self.name, self.identity = client, namespace, name, identity
        self.timings, self.clock = timings, clock
        self._observed: tuple[str, str, int] | None = None  # (holder, renewTime, transitions)
        self._observed_at = 0.0
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._lock = threading.Lock()
        self._deadline = -math.inf  # monotonic instant this replica stops acting as the holder
        self._lost = False
        self.holder = ""  # the holder seen at the last attempt
        self.last_problem = "no attempt yet"  # why the last renewal failed, for the log

    def deadline(self) -> float:
        """The monotonic instant until which this replica may act as the holder (-inf: not held)."""
        with self._lock:
            return self._deadline

    def _held_from(self, started: float | None) -> None:
        """A successful attempt that started at `started` (None: the Lease is not ours)."""
        with self._lock:
            if not self._lost:
                self._deadline = -math.inf if started is None else started + self.timings.renew_deadline

    # -- one attempt (client-go's tryAcquireOrRenew)

    def try_acquire_or_renew(self) -> bool:
        started = self.clock()  # before the renewTime below: the deadline counts from here
        held = self._try(_micro_time())
        if held:
            self._held_from(started)
        elif self.holder and self.holder != self.identity:
            self._held_from(None)
        return held

    def _try(self, now: str) -> bool:
        lease = self.client.get(LEASE, self.namespace, self.name)
        if lease is None:
            body = {"apiVersion": LEASE.api_version, "kind": LEASE.kind,
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(acquire_time=now, renew_time=now, transitions=0)}  # fmt: skip
            try:
                self.client.create(LEASE, self.namespace, body)
            except kube.Conflict:
                return False
            self.holder = self.identity
            return True
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""), int(spec.get("leaseTransitions") or 0))
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        self.holder = holder
        duration = float(spec.get("leaseDurationSeconds") or self.timings.duration)
        if holder and holder != self.identity and self._observed_at + duration > self.clock():
            return False  # held by another replica, and renewed within its lease duration
        ours = holder == self.identity
        new_spec = self._spec(acquire_time=spec.get("acquireTime") if ours else now, renew_time=now,
                              transitions=record[2] if ours else record[2] + 1)  # fmt: skip
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": new_spec}
        try:
            self.client.patch(LEASE, self.namespace, self.name, patch)
        except kube.Conflict:
            return False
        self.holder = self.identity
        return True

    def _spec(self, *, acquire_time: Any, renew_time: str, transitions: int) -> dict[str, Any]:
        return {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, round(self.timings.duration)),
                "acquireTime": acquire_time, "renewTime": renew_time, "leaseTransitions": transitions}  # fmt: skip

    # -- holding

    def start_renewing(self, on_lost: Callable[[str], None]) -> None:
        """Renew in a daemon thread; `on_lost(reason)` once leadership is lost: another holder
        seen, or the deadline reached (by the watchdog, even while a renewal hangs)."""
        self._renewer = threading.Thread(target=self._renew_loop, args=(on_lost,), name="lease-renewer", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, args=(on_lost,), name="lease-watchdog", daemon=True)
        self._renewer.start()
        self._watchdog.start()

    def _lose(self, on_lost: Callable[[str], None], reason: str) -> None:
        with self._lock:
            if self._lost or self._stop.is_set():
                return
            self._lost, self._deadline = True, -math.inf  # the client sends nothing from now on
        on_lost(reason)

    def _renew_loop(self, on_lost: Callable[[str], None]) -> None:
        while not self._stop.wait(self.timings.retry_period):
            self.last_problem = "a renewal did not return"  # what the watchdog reports if it hangs
            try:
                renewed = self.try_acquire_or_renew()
            except Exception as err:  # an unreachable apiserver is retried until the deadline
                renewed, problem = False, f"{type(err).__name__}: {err}"
            else:
                problem = f"the Lease is held by {self.holder}" if self.holder != self.identity else "renewal refused"
            if self._stop.is_set() or self._lost:
                return
            if not renewed and self.holder and self.holder != self.identity:
                self._lose(on_lost, problem)
                return
            if not renewed:
                self.last_problem = problem

    def _watch(self, on_lost: Callable[[str], None]) -> None:
        """End leadership at the deadline, whatever the renewer is blocked in."""
        while not self._lost:
            left = self.deadline() - self.clock()
            if left <= 0:
                self._lose(on_lost, f"no renewal within {self.timings.renew_deadline:g} s ({self.last_problem})")
                return
            if self._stop.wait(min(left, self.timings.retry_period)):
                return

    def release(self) -> None:
        """Stop renewing and empty the holder, so a standby takes over at its next attempt."""
        self._stop.set()
        if self._renewer is not None:  # its calls end at the deadline at the latest
            self._renewer.join(timeout=self.timings.retry_period + self.timings.renew_deadline)
        # Taken meanwhile, past our deadline, or the apiserver is gone: the Lease expires on its own.
        with contextlib.suppress(kube.KubeError):
            lease = self.client.get(LEASE, self.namespace, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": _micro_time()}
            patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": spec}
            self.client.patch(LEASE, self.namespace, self.name, patch)


def exit_on_lost(logger: logging.Logger) -> Callable[[str], None]:
    """What losing the Lease does: exit now, before another event is handled (controller-runtime
    does the same); the pod restarts and comes back as a standby."""

    def lost(reason: str) -> None:
        logger.critical(f"leader election lost: {reason}; exiting")
        logging.shutdown()
        os._exit(EXIT_LEADERSHIP_LOST)

    return lost


class StandbyHealth:
    """Answers the liveness URL (`http://HOST:PORT/PATH`) with 200 while kopf's own endpoint is
    not up yet (kopf serves it only after startup); closed before kopf binds the same port."""

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        path = parsed.path or "/"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = self.path.split("?")[0] == path
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"standby\n" if ok else b"not found\n")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((parsed.hostname or "0.0.0.0", parsed.port or 80), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="standby-health", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
