"""The progress scrape (operator/speedrun_operator/handlers/scrape.py): a sample never overwrites a
newer status."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from speedrun_operator import kube
from speedrun_operator.handlers import scrape
from speedrun_operator.handlers.operator_startup import OperatorContext
from speedrun_operator.settings import OperatorSettings


class _ProgressClient:
    """A job in `phase`; patches recorded, or refused with 409 as a changed object is."""

    def __init__(self, phase: str, conflict: bool = False) -> None:
        self.body = {"metadata": {"resourceVersion": "7"}, "status": {"phase": phase}}
        self.conflict, self.patches = conflict, []

    def get(self, kind, namespace, name):
        return self.body

    def patch(self, kind, namespace, name, patch, subresource=None):
        if self.conflict:
            raise kube.Conflict(409, "Conflict", "the object has been modified")
        self.patches.append((patch, subresource))


@pytest.mark.parametrize(
    ("phase", "conflict", "written"),
    [
        ("Training", False, True),
        ("Succeeded", False, False),  # the reconcile moved on while rank 0 was scraped
        ("Training", True, False),  # ... or changed the status between the read and the write
    ],
)
def test_a_progress_sample_never_overwrites_a_newer_status(monkeypatch, phase, conflict, written) -> None:
    client = _ProgressClient(phase, conflict)
    monkeypatch.setattr(scrape, "scrape_progress", lambda *a: {"step": 40})
    ctx = OperatorContext(settings=OperatorSettings(), client=client)
    assert scrape.follow_progress(ctx, "ns", "job", {}, logging.getLogger("test")) is written
    if written:
        assert client.patches == [
            ({"metadata": {"resourceVersion": "7"}, "status": {"progress": {"step": 40}}}, "status")
        ]


def test_a_hanging_scrape_holds_one_worker_and_its_job_only(monkeypatch) -> None:
    """submit returns at once; a job whose scrape still runs is skipped, the others go on."""
    release, started = threading.Event(), []

    def follow(ctx, namespace, name, spec, logger) -> bool:
        started.append(name)
        if name == "stalled":
            release.wait(30)
        return True

    monkeypatch.setattr(scrape, "follow_progress", follow)
    scrapes = scrape.Scrapes(OperatorContext(settings=OperatorSettings(), client=None), logging.getLogger("t"), 2)
    try:
        assert scrapes.submit("ns", "stalled", {}) is True
        assert scrapes.submit("ns", "stalled", {}) is False  # still running: not queued twice
        for i in range(5):  # the other worker serves every other job meanwhile
            assert scrapes.submit("ns", f"ok-{i}", {}) is True
        deadline = time.monotonic() + 30
        while scrapes.in_flight() > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert scrapes.in_flight() == 1 and started.count("stalled") == 1
        assert sorted(started) == sorted(["stalled", *(f"ok-{i}" for i in range(5))])
        release.set()
        while scrapes.in_flight() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert scrapes.submit("ns", "stalled", {}) is True  # done: scraped again at the next tick
    finally:
        release.set()
        scrapes.stop()
