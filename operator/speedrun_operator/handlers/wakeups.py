"""Reconciles due at a time: the pass that creates an attempt the restart backoff held back.

An attempt that failed before all its ranks joined may have to wait before the next one starts
(restart_backoff.py, `status.nextAttemptTime`). Nothing in the cluster changes when the wait ends,
so no Job event triggers that pass; the periodic resync would, up to `resync_interval` late. A
reconcile that leaves a job waiting asks for a pass when the wait ends, and this one thread runs
it then (through the coalescer, as a Job event's trigger). Only an optimisation: the time is in
the status, so the resync, or an operator restarted meanwhile (kopf's resume handler reconciles
every job, which asks again), starts the attempt all the same. Owned by `Periodic`: it runs only
while this replica leads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

Key = tuple[str, str]
SLACK_SECONDS = 1.0  # status times have whole seconds: wake just after the wait's second has begun


class Wakeups:
    def __init__(self, run: Callable[[str, str], object], logger: logging.Logger) -> None:
        self._run, self.logger = run, logger
        self._cond = threading.Condition()
        self._due: dict[Key, float] = {}  # the monotonic time of each job's next pass
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="speedrun-wakeups", daemon=True)

    def start(self) -> Wakeups:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)

    def after(self, namespace: str, name: str, seconds: float) -> None:
        """Reconcile the job once `seconds` have passed (the earliest asked for, if asked twice)."""
        when = time.monotonic() + max(0.0, seconds) + SLACK_SECONDS
        with self._cond:
            if self._due.get((namespace, name), float("inf")) > when:
                self._due[(namespace, name)] = when
                self._cond.notify()

    def pending(self) -> dict[Key, float]:
        with self._cond:
            return dict(self._due)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                if not self._due:
                    self._cond.wait()
                    continue
                key, when = min(self._due.items(), key=lambda item: item[1])
                left = when - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                del self._due[key]
            try:
                self._run(*key)
            except Exception as err:  # the resync retries; the thread must outlive any one failure
                self.logger.warning(f"[{key[0]}/{key[1]}] the backoff's pass failed: {type(err).__name__}: {err}")
