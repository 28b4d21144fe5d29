"""One queued reconcile per SpeedrunJob at most: triggers that arrive while one waits are dropped.

Every event of a child Job triggers a reconcile (main.py), and a Job writes its status many times
while its pods start and finish (active, ready, succeeded, conditions): a dozen events per job.
Under load those triggers pile up behind the per-job lock, and each one repeats the same reads
and decisions on nearly the same state. As client-go's work queue does for a key that is already
queued, a trigger is dropped when a reconcile of the same job is waiting and has not yet started:
that one reads the state after this trigger's event (the caches, object_cache.py, are updated
before the trigger), so it decides on everything this trigger would have. A trigger that arrives
while a reconcile runs waits for it and then runs once more, so no event goes unseen.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
Key = tuple[str, str]


class Coalescer:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._waiting: set[Key] = set()
        self._running: defaultdict[Key, threading.Lock] = defaultdict(threading.Lock)

    def run(self, key: Key, work: Callable[[], T]) -> T | None:
        """`work()` once the reconcile of `key` running now (if any) is done; None without running
        it if another trigger of `key` is already waiting to run."""
        with self._guard:
            if key in self._waiting:
                return None
            self._waiting.add(key)
            running = self._running[key]
        with running:
            with self._guard:
                self._waiting.discard(key)  # from here on, a new trigger queues one more run
            return work()

    def forget(self, key: Key) -> None:
        """Drop the job's lock once it is deleted (the dict would otherwise grow with every job)."""
        with self._guard:
            lock = self._running.get(key)
            if key not in self._waiting and lock is not None and not lock.locked():
                del self._running[key]


COALESCER = Coalescer()
