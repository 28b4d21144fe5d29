"""The periodic thread (handlers/periodic.py) posts Events: kopf.event works from it.

kopf.event reads kopf's context variables (its settings and event queue), which kopf sets in the
operator's tasks; a plain thread has none, and a phase change found by a resync (a start-up
deadline passing) raised LookupError there and lost its Event. Here kopf's own event queue is set
up as kopf's reactor does it, the Periodic made inside that context, and its tick posts an Event.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import kopf
from kopf._core.engines import posting

from speedrun_operator.handlers.periodic import Periodic

BODY = {"apiVersion": "speedrun.dev/v1alpha1", "kind": "SpeedrunJob",
        "metadata": {"name": "run", "namespace": "ns", "uid": "u-1"}}  # fmt: skip


class Posting(Periodic):
    def tick(self, *, resync: bool, progress: bool) -> None:
        kopf.event(BODY, type="Warning", reason="StartupDeadlineExceeded", message="from the resync")
        self._stop.set()


async def _posted_from_the_thread() -> Any:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    posting.settings_var.set(kopf.OperatorSettings())
    posting.event_queue_var.set(queue)
    posting.event_queue_loop_var.set(asyncio.get_running_loop())
    ctx = SimpleNamespace(settings=SimpleNamespace(progress_interval=0.01, resync_interval=0.01))
    periodic = Posting(ctx, logging.getLogger("test")).start()  # type: ignore[arg-type]
    try:
        return await asyncio.wait_for(queue.get(), timeout=30)
    finally:
        await asyncio.to_thread(periodic.stop)


def test_an_event_from_the_periodic_thread_reaches_kopfs_queue() -> None:
    event = asyncio.run(_posted_from_the_thread())
    assert (event.type, event.reason, event.message) == ("Warning", "StartupDeadlineExceeded", "from the resync")
    assert event.ref["name"] == "run" and event.ref["namespace"] == "ns"
