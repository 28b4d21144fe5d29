"""Owned children: get-or-create, adopt our orphans, refuse strangers; Job suspension.

Children are named deterministically (labels.py), so "does it exist?" is one GET (or a look in
the operator's cache of Jobs, object_cache.py) and a second operator (or a restarted one) can
never create duplicates: the apiserver's 409 on create is the tie-breaker. An existing child
counts as ours when it carries our ownerReference; one with our labels and no controller (e.g.
orphaned by `kubectl delete --cascade=orphan`) is adopted; anything else is a conflict the user
has to resolve.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from speedrun_operator import kube, lifecycle
from speedrun_operator import labels as L


class ChildConflict(Exception):
    """A child's name is taken by an object this SpeedrunJob does not own."""


def _owned_by(obj: dict[str, Any], owner_uid: str) -> bool:
    return any(ref.get("uid") == owner_uid for ref in obj["metadata"].get("ownerReferences") or [])


def ensure_child(
    client: kube.KubeClient, kind: kube.Kind, manifest: dict[str, Any], owner: dict[str, Any]
) -> dict[str, Any]:
    """The child as it is on the server, created from `manifest` if it was missing."""
    desired = copy.deepcopy(manifest)
    kopf.append_owner_reference(desired, owner=owner)
    namespace, name = owner["metadata"]["namespace"], desired["metadata"]["name"]
    desired["metadata"]["namespace"] = namespace
    existing = lookup(client, kind, namespace, name)
    if existing is None:
        try:
            return client.create(kind, namespace, desired)
        except kube.Conflict:
            existing = client.get(kind, namespace, name)
            if existing is None:  # created and deleted in between: try again on the next pass
                raise kopf.TemporaryError(f"{kind.kind} {name} is being replaced", delay=2) from None
    return _adopt(client, kind, existing, owner, desired)


def ensure_job(
    client: kube.KubeClient,
    owner: dict[str, Any],
    name: str,
    build: Callable[[], dict[str, Any]],
    needs: Callable[[], list[tuple[kube.Kind, dict[str, Any]]]],
) -> dict[str, Any]:
    """The Job `name` as the cache (or the server) has it; when it is missing, first the children its
    pods need (`needs`: the run's ConfigMap, the rendezvous Service), then the Job from `build()`.
    Both are built only then: a Job's pod template is immutable, so once it exists they are not used.
    What the pods need is ensured whenever a Job is created (each gang restart creates one), not
    on every pass: that cost two requests a pass, and the pods read them only as they start. The
    needs are created side by side (one round trip, not one each: a new job's Job comes sooner when
    many are applied at once, bench/README.md), the Job only once they all exist."""
    existing = lookup(client, kube.JOB, owner["metadata"]["namespace"], name)
    if existing is not None:
        reference: dict[str, Any] = {"metadata": {}}
        kopf.append_owner_reference(reference, owner=owner)
        return _adopt(client, kube.JOB, existing, owner, reference)
    _side_by_side([lambda kind=kind, manifest=manifest: ensure_child(client, kind, manifest, owner)
                   for kind, manifest in needs()])  # fmt: skip
    return ensure_child(client, kube.JOB, build(), owner)


def _side_by_side(calls: list[Callable[[], object]]) -> None:
    """Run `calls` at once; once all have returned, the first error in the calls' order is raised."""
    if len(calls) <= 1:
        for call in calls:
            call()
        return
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="ensure-child") as pool:
        futures = [pool.submit(call) for call in calls]
    for future in futures:
        future.result()


def lookup(client: kube.KubeClient, kind: kube.Kind, namespace: str, name: str) -> dict[str, Any] | None:
    """The child as the operator's cache holds it (object_cache.py), else a GET. With a cache, a
    child it does not hold is created at once: the apiserver's 409 says when it exists after all,
    and only then is it read."""
    cached = getattr(client, "cached", None)
    return cached(kind, namespace, name) if cached is not None else client.get(kind, namespace, name)


def _adopt(
    client: kube.KubeClient, kind: kube.Kind, existing: dict[str, Any], owner: dict[str, Any], desired: dict[str, Any]
) -> dict[str, Any]:
    meta, owner_meta = existing["metadata"], owner["metadata"]
    if _owned_by(existing, owner_meta["uid"]):
        return existing
    refs = meta.get("ownerReferences") or []
    controller = next((r for r in refs if r.get("controller")), None)
    if controller is not None:
        raise ChildConflict(
            f"{kind.kind} {meta['name']} is controlled by {controller.get('kind')} {controller.get('name')} "
            f"(uid {controller.get('uid')}); delete it or wait for its owner's garbage collection"
        )
    if (meta.get("labels") or {}).get(L.LABEL_JOB) != owner_meta["name"]:
        raise ChildConflict(f"{kind.kind} {meta['name']} exists and was not made for this SpeedrunJob")
    patch = {"metadata": {"ownerReferences": [*refs, *desired["metadata"]["ownerReferences"]]}}
    return client.patch(kind, meta["namespace"], meta["name"], patch)


def sync_suspend(client: kube.KubeClient, job: dict[str, Any], suspend: bool) -> dict[str, Any]:
    """Make a running Job's `spec.suspend` match runPolicy.suspend (finished Jobs stay as they are)."""
    conditions = (job.get("status") or {}).get("conditions") or []
    finished = any(
        c.get("type") in (*lifecycle.FAILED_TYPES, *lifecycle.SUCCEEDED_TYPES) and c.get("status") == "True"
        for c in conditions
    )
    if finished or bool(job["spec"].get("suspend")) == suspend:
        return job
    meta = job["metadata"]
    return client.patch(kube.JOB, meta["namespace"], meta["name"], {"spec": {"suspend": suspend}})
