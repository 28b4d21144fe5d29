"""What the operator last saw of its SpeedrunJobs and Jobs: reads from memory, not the apiserver.

kopf already watches both kinds (SpeedrunJobs, and the Jobs the operator manages through a
server-side label selector), so every reconcile that GETs them again only repeats what the watch
said a moment ago; at 100 jobs at once those GETs were most of the operator's requests and of its
latency (bench/bench_control_plane.py). Like client-go's informer caches, `ObjectCache` keeps the
newest object per (namespace, name), fed by

- the watch: the kopf event handlers in main.py call `seen` / `gone` for every event;
- the operator's own writes: `CachingClient` keeps what a create or patch answered, so a
  reconcile right after its own status patch reads that status, not the older one the watch has
  not delivered yet (the decisions in lifecycle.py compare the current status with the next).

Newer wins: an object replaces the cached one only if its resourceVersion is not older. The API
calls resourceVersions opaque, but every built-in storage writes etcd's revision, an increasing
integer; a version that is not one replaces the cached object (no order can be told then).
A miss asks the apiserver (`get`), so nothing is ever missing for long; the periodic resync
refreshes the SpeedrunJobs from a LIST (handlers/periodic.py). Objects are shared, not copied:
callers must not change them.
"""

from __future__ import annotations

import threading
from typing import Any

from speedrun_operator import kube

Key = tuple[str, str, str]  # (kind, namespace, name)


def _older(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """True if `new` is an older version of the object than `old` (both integer resourceVersions)."""
    new_rv, old_rv = (o.get("metadata", {}).get("resourceVersion", "") for o in (new, old))
    if not (new_rv.isdigit() and old_rv.isdigit()):
        return False
    if new.get("metadata", {}).get("uid") != old.get("metadata", {}).get("uid"):
        return False  # a new object of the same name: the newest seen wins whatever its version
    return int(new_rv) < int(old_rv)


class ObjectCache:
    """The newest object seen per kind, namespace and name (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Key, dict[str, Any]] = {}

    def seen(self, kind: kube.Kind, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        if not meta.get("name"):
            return
        if "kind" not in obj:  # a LIST's items carry no kind or apiVersion
            obj = {"apiVersion": kind.api_version, "kind": kind.kind, **obj}
        key = (kind.kind, meta.get("namespace", ""), meta.get("name", ""))
        with self._lock:
            old = self._objects.get(key)
            if old is None or not _older(obj, old):
                self._objects[key] = obj

    def gone(self, kind: kube.Kind, obj: dict[str, Any]) -> None:
        """The object was deleted (a watch DELETED event): forget it, unless a newer one (a new
        object of the same name, created since) is what the cache holds."""
        meta = obj.get("metadata") or {}
        key = (kind.kind, meta.get("namespace", ""), meta.get("name", ""))
        with self._lock:
            old = self._objects.get(key)
            if old is not None and (old.get("metadata") or {}).get("uid") == meta.get("uid"):
                del self._objects[key]

    def get(self, kind: kube.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((kind.kind, namespace, name))

    def list(self, kind: kube.Kind, namespace: str | None) -> list[dict[str, Any]]:
        with self._lock:
            return [o for (k, ns, _), o in self._objects.items() if k == kind.kind and namespace in (None, ns)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)


CACHED_KINDS = (kube.JOB, kube.SPEEDRUNJOB)


class CachingClient(kube.KubeClient):
    """KubeClient whose GETs of SpeedrunJobs and Jobs are answered from `cache` when it holds the
    object, and whose creates and patches of them update it."""

    def __init__(self, config: Any, cache: ObjectCache | None = None) -> None:
        super().__init__(config)
        self.cache = cache if cache is not None else ObjectCache()

    def cached(self, kind: kube.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        """The cached object, without asking the apiserver on a miss (None then)."""
        return self.cache.get(kind, namespace, name) if kind in CACHED_KINDS else None

    def get(self, kind: kube.Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        if kind in CACHED_KINDS and namespace:
            found = self.cache.get(kind, namespace, name)
            if found is not None:
                return found
        return self._keep(kind, super().get(kind, namespace, name))

    def list(
        self,
        kind: kube.Kind,
        namespace: str | None,
        labels: dict[str, str] | None = None,
        fields: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        items = super().list(kind, namespace, labels, fields)
        for item in items:
            self._keep(kind, item)
        return items

    def create(self, kind: kube.Kind, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        return self._keep(kind, super().create(kind, namespace, body))  # type: ignore[return-value]

    def patch(
        self, kind: kube.Kind, namespace: str | None, name: str, patch: dict[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        return self._keep(kind, super().patch(kind, namespace, name, patch, subresource))  # type: ignore[return-value]

    def _keep(self, kind: kube.Kind, obj: dict[str, Any] | None) -> dict[str, Any] | None:
        if obj is not None and kind in CACHED_KINDS:
            self.cache.seen(kind, obj)
        return obj


def follow(client: kube.KubeClient, kind: kube.Kind, event: dict[str, Any]) -> None:
    """Feed one watch event (kopf's raw event: type, object) to the client's cache, if it has one."""
    cache = getattr(client, "cache", None)
    obj = event.get("object")
    if not isinstance(cache, ObjectCache) or not isinstance(obj, dict):
        return
    if event.get("type") == "DELETED":
        cache.gone(kind, obj)
    else:
        cache.seen(kind, obj)
