"""The operator's cache of SpeedrunJobs and Jobs (operator/speedrun_operator/object_cache.py) and the
coalescing of reconcile triggers (handlers/coalesce.py): newer versions win, a deleted object goes
only if it is the one cached, the operator's own writes are read back, a miss asks the apiserver,
and triggers that arrive while one waits are dropped but never one that arrives while one runs."""

from __future__ import annotations

import threading
from typing import Any

import kubernetes.client
import pytest

from speedrun_operator import kube
from speedrun_operator.handlers.coalesce import Coalescer
from speedrun_operator.object_cache import CachingClient, ObjectCache, follow


def job(rv: str, uid: str = "u1", name: str = "j-train", **status: Any) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "status": status,
            "metadata": {"name": name, "namespace": "n", "uid": uid, "resourceVersion": rv}}  # fmt: skip


def test_a_newer_version_wins_an_older_one_does_not() -> None:
    cache = ObjectCache()
    cache.seen(kube.JOB, job("10", active=1))
    cache.seen(kube.JOB, job("9", active=0))  # a watch event older than a write's answer
    assert cache.get(kube.JOB, "n", "j-train")["status"] == {"active": 1}  # type: ignore[index]
    cache.seen(kube.JOB, job("11", ready=1))
    assert cache.get(kube.JOB, "n", "j-train")["status"] == {"ready": 1}  # type: ignore[index]
    cache.seen(kube.JOB, job("3", uid="u2"))  # a new Job of the same name: its own versions
    assert cache.get(kube.JOB, "n", "j-train")["metadata"]["uid"] == "u2"  # type: ignore[index]


def test_deleted_goes_only_if_it_is_the_cached_object() -> None:
    cache = ObjectCache()
    cache.seen(kube.JOB, job("5", uid="new"))
    follow(CachingClient(kubernetes.client.Configuration(), cache), kube.JOB, {"type": "DELETED", "object": job("4")})
    assert cache.get(kube.JOB, "n", "j-train") is not None  # the old attempt's delete, the new Job stays
    follow(CachingClient(kubernetes.client.Configuration(), cache), kube.JOB,
           {"type": "DELETED", "object": job("6", uid="new")})  # fmt: skip
    assert cache.get(kube.JOB, "n", "j-train") is None and len(cache) == 0


def test_list_items_get_their_kind_and_a_namespace_filter() -> None:
    cache = ObjectCache()
    item = job("1")
    del item["kind"], item["apiVersion"]
    cache.seen(kube.JOB, item)
    cache.seen(kube.JOB, {**job("2", name="other"), "metadata": {**job("2")["metadata"], "namespace": "m"}})
    [found] = cache.list(kube.JOB, "n")
    assert found["kind"] == "Job" and found["apiVersion"] == "batch/v1" and len(cache.list(kube.JOB, None)) == 2


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """KubeClient's requests replaced by a fake apiserver holding one Job at version 7; the calls made."""
    calls: list[tuple[str, str]] = []

    def get(self: Any, kind: kube.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        calls.append(("get", name))
        return job("7") if name == "j-train" else None

    def create(self: Any, kind: kube.Kind, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        calls.append(("create", body["metadata"]["name"]))
        return {**body, "metadata": {**body["metadata"], "uid": "u9", "resourceVersion": "20"}}

    def patch(self: Any, kind: kube.Kind, namespace: str, name: str, patch: dict[str, Any],
              subresource: str | None = None) -> dict[str, Any]:  # fmt: skip
        calls.append(("patch", name))
        return job("8", **patch.get("status", {}))

    for name, fn in (("get", get), ("create", create), ("patch", patch)):
        monkeypatch.setattr(kube.KubeClient, name, fn)
    return calls


def test_a_miss_asks_the_apiserver_once_and_writes_are_read_back(server: list[tuple[str, str]]) -> None:
    client = CachingClient(kubernetes.client.Configuration())
    assert client.cached(kube.JOB, "n", "j-train") is None and server == []  # cached(): never a request
    assert client.get(kube.JOB, "n", "j-train")["metadata"]["resourceVersion"] == "7"  # type: ignore[index]
    assert client.get(kube.JOB, "n", "j-train") is not None and server == [("get", "j-train")]
    client.patch(kube.JOB, "n", "j-train", {"status": {"ready": 2}})
    assert client.get(kube.JOB, "n", "j-train")["status"] == {"ready": 2}  # type: ignore[index]
    client.create(kube.JOB, "n", job("", name="j-eval"))
    assert client.cached(kube.JOB, "n", "j-eval")["metadata"]["uid"] == "u9"  # type: ignore[index]
    assert client.get(kube.CONFIGMAP, "n", "j-run") is None  # kinds not cached always ask
    assert client.get(kube.CONFIGMAP, "n", "j-run") is None and server[-2:] == [("get", "j-run")] * 2


def test_coalescer_drops_a_trigger_while_one_waits_never_while_one_runs() -> None:
    coalescer, key = Coalescer(), ("n", "j")
    running, release, runs = threading.Event(), threading.Event(), []

    def first() -> str:
        running.set()
        release.wait(10)
        runs.append("first")
        return "first"

    worker = threading.Thread(target=coalescer.run, args=(key, first))
    worker.start()
    assert running.wait(10)
    # A trigger while `first` runs waits for it, then runs (the event it stands for came after
    # `first` read the state); a third while the second waits is dropped: the second covers it.
    second = threading.Thread(target=coalescer.run, args=(key, lambda: runs.append("second")))
    second.start()
    while key not in coalescer._waiting:
        threading.Event().wait(0.01)
    assert coalescer.run(key, lambda: runs.append("third")) is None
    release.set()
    worker.join(10)
    second.join(10)
    assert runs == ["first", "second"]
    assert coalescer.run(key, lambda: "again") == "again"  # nothing waits: runs at once
    coalescer.forget(key)
    assert key not in coalescer._running


def test_a_deleted_jobs_reconcile_lock_is_dropped_unless_held() -> None:
    from speedrun_operator.handlers import reconcile

    with reconcile._locks[("n", "held")]:
        reconcile.forget("n", "held")
        assert ("n", "held") in reconcile._locks  # a reconcile still runs
    reconcile._locks[("n", "done")]  # made by its first reconcile
    reconcile.forget("n", "done")
    reconcile.forget("n", "never-seen")
    assert ("n", "done") not in reconcile._locks and ("n", "never-seen") not in reconcile._locks
    reconcile.forget("n", "held")
