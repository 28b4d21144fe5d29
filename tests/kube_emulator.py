"""A Kubernetes API for tests: kmock's KubernetesEmulator plus the apiserver behaviour it lacks.

No kube-apiserver can run on these machines, so the operator's integration tests run the real
kopf operator over HTTP against kmock (PyPI `kmock`). kmock 0.8 stores objects and streams
watch events, but leaves gaps that kopf and any controller trip over (DESIGN.md, Known facts).
`KubeApiEmulator` fills them here, in the harness, so the operator stays as it would be against
a real cluster:

- metadata: uid, resourceVersion (one counter for all objects), generation (bumped on changes
  outside metadata and status), creationTimestamp, names from generateName;
- writes: merge-patch and JSON-patch (kopf's finalizers use `test` on resourceVersion -> 422
  when stale), PUT with resourceVersion preconditions (409), no event and no new
  resourceVersion for a write that changes nothing;
- the status subresource: writes to /status change only status, other writes never do;
- deletion: finalizers hold an object with deletionTimestamp until they are removed;
  garbage collection deletes objects whose owners (ownerReferences) are all gone, in cascade;
- lists honour labelSelector; custom resources are registered from their CRD
  (`register_crd`), defaulted and validated against its openAPIV3Schema (CEL rules are left to the
  real apiserver of the control-plane tier, tests/cluster/).

`EmulatedCluster` serves it on 127.0.0.1 from a background thread (its own event loop), writes a
kubeconfig for it, and offers a small synchronous JSON client for tests. Custom-resource
admission (defaults, schema) lives in tests/kube_admission.py; the Job controller and kubelet are
played by tests/scripted_jobs.py (`ScriptedJobController`, step by step). It is kept for the fast
operator-integration tier (tests/test_operator_*.py), which needs no Go and runs everywhere; the
e2e tests run on the real control plane (tests/test_cluster_e2e.py).
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import random
import string
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml

from tests.kube_admission import CustomResourceSchema, apply_defaults

# ---- the emulator -------------------------------------------------------------------------------

READ_ONLY_METADATA = ("uid", "creationTimestamp", "name", "namespace", "generateName")


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _body_without_bookkeeping(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def match_labels(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a` (comma = and)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


@attrs.define(kw_only=True)
class KubeApiEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with server-side metadata, patch semantics, subresources and GC."""

    _custom: dict[kmock.resource, CustomResourceSchema] = attrs.field(factory=dict, init=False)
    _resource_version: int = attrs.field(default=0, init=False)
    namespaces: set[str] = attrs.field(factory=lambda: {"default"})

    def register_crd(self, crd: dict[str, Any]) -> kmock.resource:
        """Serve a custom resource as the apiserver would after `kubectl apply -f crd.yaml`."""
        custom = CustomResourceSchema(crd)
        self._custom[custom.resource] = custom
        self.resources[custom.resource] = custom.info
        return custom.resource

    # -- request routing

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock 0.8 cannot parse the path /api/v1/namespaces (it reads "namespaces" as the
        # namespace prefix of a namespaced path); kopf lists and watches it to find the
        # namespaces it serves, so answer here with the known ones.
        if raw_request.path.rstrip("/") == "/api/v1/namespaces" and raw_request.method == "GET":
            return await self._serve_namespaces(raw_request)
        return await super().__call__(raw_request)

    async def _serve_namespaces(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        items = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "resourceVersion": "1"}}
            for ns in sorted(self.namespaces)
        ]
        if raw_request.query.get("watch") != "true":
            listing = {"apiVersion": "v1", "kind": "NamespaceList", "items": items}
            return aiohttp.web.json_response({**listing, "metadata": {"resourceVersion": "1"}})
        response = aiohttp.web.StreamResponse()
        await response.prepare(raw_request)
        await asyncio.Event().wait()  # a fixed set of namespaces: a watch that never says anything
        return response

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """Serve every request for a known resource here; discovery and the rest go to kmock.

        Besides filling the gaps, this keeps reads cheap: kmock matches each request against
        its reaction DSL first, which costs ~0.2 s per request on these machines.
        """
        action, resource = request.action, request.resource
        if resource is None or action is None or resource not in self.resources:
            return await super()._handle(request)
        if action == kmock.action.LIST:
            return aiohttp.web.json_response(await self._serve_list(request))
        if action == kmock.action.FETCH:
            return aiohttp.web.json_response(await self._serve_fetch(request))
        if action == kmock.action.WATCH:
            return await self._stream_watch(request)
        if action == kmock.action.CREATE:
            return aiohttp.web.json_response(await self._create(request))
        if action == kmock.action.UPDATE and request.name is not None:
            result = await self._update(request)
            await self._collect_garbage()
            return aiohttp.web.json_response(result)
        if action == kmock.action.DELETE and request.name is not None:
            result = await self._delete(request)
            await self._collect_garbage()
            return aiohttp.web.json_response(result)
        return await super()._handle(request)

    async def _stream_watch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)  # kmock keeps the aiohttp request privately
        try:
            async for event in self._serve_watch(request):
                if event != b"":
                    await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def _serve_list(self, request: kmock.Request) -> dict[str, Any]:
        listing = await super()._serve_list(request)
        selector = request.params.get("labelSelector", "")
        items = [o for o in listing["items"] if match_labels(o.get("metadata", {}).get("labels") or {}, selector)]
        return {**listing, "metadata": {"resourceVersion": str(self._resource_version)}, "items": items}

    async def _serve_watch(self, request: kmock.Request) -> Any:
        """Watch from `resourceVersion` as the apiserver does: only what changed after it.

        kmock replays every existing object as ADDED; kopf, which lists first and then watches
        from the list's resourceVersion, would then act on stale copies (and its finalizer
        JSON-patch would fail its resourceVersion test with nothing newer to retry on).
        """
        yield b""  # send the headers now, so the client knows the stream is open
        since = int(request.params.get("resourceVersion") or 0)
        selector = request.params.get("labelSelector", "")
        bus = self._buses[request.resource]
        async with self._lock:
            mark = await bus.mark()
            initial = [
                {"type": "ADDED", "object": obj.raw}
                for (resource, namespace, _), obj in self.objects.items()
                if resource == request.resource
                and not obj.deleted
                and self._watched(request, namespace, obj.raw)
                and int(obj.raw["metadata"].get("resourceVersion") or 0) > since
            ]
        for event in initial:
            if match_labels(event["object"]["metadata"].get("labels") or {}, selector):
                yield event
        async for event in bus.stream(since=mark):
            raw = event.get("object") or {}
            meta = raw.get("metadata") or {}
            if self._watched(request, meta.get("namespace"), raw) and match_labels(meta.get("labels") or {}, selector):
                yield event

    @staticmethod
    def _watched(request: kmock.Request, namespace: str | None, raw: dict[str, Any]) -> bool:
        name = (raw.get("metadata") or {}).get("name")
        return (request.namespace is None or request.namespace == namespace) and request.name in (None, name)

    # -- writes

    def _has_status(self, resource: kmock.resource) -> bool:
        return resource in self.resources and "status" in self.resources[resource].subresources

    def _next_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def _live(self, key: tuple[Any, str | None, str]) -> kmock.Object | None:
        if key not in self.objects:
            return None
        obj = self.objects[key]
        return None if obj.deleted else obj

    async def _emit(self, resource: kmock.resource, kind: str, raw: dict[str, Any]) -> None:
        await self._buses[resource].put({"type": kind, "object": copy.deepcopy(raw)})

    async def _create(self, request: kmock.Request) -> dict[str, Any]:
        resource = request.resource
        data = copy.deepcopy(request.data) if isinstance(request.data, dict) else {}
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        if not meta.get("name"):
            raise _error(422, "Invalid", "metadata.name: Required value")
        if request.namespace:
            meta["namespace"] = request.namespace
        custom = self._custom.get(resource)
        if custom is not None:
            data = custom.default(data)
            problems = custom.validate(data)
            if problems:
                raise _error(422, "Invalid", "; ".join(problems))
        if self._has_status(resource):
            data.pop("status", None)
        meta = data["metadata"]
        meta.pop("deletionTimestamp", None)
        meta.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=now_rfc3339())
        key = (resource, meta.get("namespace"), meta["name"])
        async with self._lock:
            if self._live(key) is not None:
                raise _error(409, "AlreadyExists", f"{resource.plural} {meta['name']!r} already exists")
            meta["resourceVersion"] = self._next_version()
            if key in self.objects:
                self.objects[key].create(data)
            else:
                self.objects[key] = data
            await self._emit(resource, "ADDED", data)
        return data

    def _patched(self, request: kmock.Request, current: dict[str, Any]) -> dict[str, Any]:
        content_type = {k.lower(): v for k, v in request.headers.items()}.get("content-type", "")
        data = request.data
        if request.method == kmock.method.PUT:
            want = (data.get("metadata") or {}).get("resourceVersion")
            if want and want != current["metadata"]["resourceVersion"]:
                raise _error(409, "Conflict", "the object has been modified; please apply your changes again")
            return copy.deepcopy(data)
        if "json-patch" in content_type:
            try:
                return jsonpatch.apply_patch(current, data, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
                raise _error(422, "Invalid", f"the JSON patch could not be applied: {err}") from None
        want = ((data or {}).get("metadata") or {}).get("resourceVersion")
        if want and want != current["metadata"]["resourceVersion"]:
            raise _error(409, "Conflict", "the object has been modified; please apply your changes again")
        return merge_patch(current, data or {})

    async def _update(self, request: kmock.Request) -> dict[str, Any]:
        resource, key = request.resource, (request.resource, request.namespace, request.name)
        async with self._lock:
            obj = self._live(key)
            if obj is None:
                raise kmock.KubernetesObjectNotFoundError()
            current = copy.deepcopy(obj.raw)
            new = self._patched(request, current)
            if request.subresource == "status":
                new = {**current, "status": new.get("status")}
                if new["status"] is None:
                    new.pop("status")
            elif self._has_status(resource):
                new.pop("status", None)
                if "status" in current:
                    new["status"] = current["status"]
            meta = new.setdefault("metadata", {})
            for field in READ_ONLY_METADATA:
                if field in current["metadata"]:
                    meta[field] = current["metadata"][field]
            custom = self._custom.get(resource)
            content_changed = _body_without_bookkeeping(new) != _body_without_bookkeeping(current)
            if custom is not None and request.subresource is None and content_changed:
                new = custom.default(new)
                problems = custom.validate(new)
                if problems:
                    raise _error(422, "Invalid", "; ".join(problems))
            meta = new["metadata"]
            meta["resourceVersion"] = current["metadata"]["resourceVersion"]
            meta["generation"] = current["metadata"].get("generation", 1)
            if new == current:
                return current  # a no-op write: no new version, no watch event
            if _body_without_bookkeeping(new) != _body_without_bookkeeping(current):
                meta["generation"] += 1
            meta["resourceVersion"] = self._next_version()
            obj.history.append(new)
            await self._emit(resource, "MODIFIED", new)
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                obj.delete()
                await self._emit(resource, "DELETED", new)
        return new

    async def _delete(self, request: kmock.Request) -> dict[str, Any]:
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            obj = self._live(key)
            if obj is None:
                raise kmock.KubernetesObjectNotFoundError()
            return await self._delete_object(request.resource, obj)

    async def _delete_object(self, resource: kmock.resource, obj: kmock.Object) -> dict[str, Any]:
        """Delete, or mark for deletion while finalizers remain (call with the lock held)."""
        raw = copy.deepcopy(obj.raw)
        meta = raw["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = now_rfc3339()
                meta["generation"] = meta.get("generation", 1) + 1
                meta["resourceVersion"] = self._next_version()
                obj.history.append(raw)
                await self._emit(resource, "MODIFIED", raw)
            return raw
        obj.delete()
        await self._emit(resource, "DELETED", raw)
        return raw

    async def _collect_garbage(self) -> None:
        """Background cascading deletion: objects whose owners are all gone go too."""
        changed = True
        while changed:
            changed = False
            async with self._lock:
                live = [(key, obj) for key, obj in self.objects.items() if not obj.deleted]
                uids = {obj.raw["metadata"].get("uid") for _, obj in live}
                for (resource, _, _), obj in live:
                    meta = obj.raw["metadata"]
                    owners = meta.get("ownerReferences") or []
                    orphaned = owners and all(ref.get("uid") not in uids for ref in owners)
                    if orphaned and meta.get("deletionTimestamp") is None:
                        await self._delete_object(resource, obj)
                        changed = True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# ---- serving it, and a small client ---------------------------------------------------------------


def resource_path(api_version: str, plural: str, namespace: str | None, name: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return f"{path}/{name}" if name else path


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


class EmulatedCluster:
    """`KubeApiEmulator` on 127.0.0.1:<random port> in a thread, with a sync JSON client.

    with EmulatedCluster(crds=[yaml.safe_load(Path("crds/speedrunjob.yaml").read_text())]) as cluster:
        cluster.write_kubeconfig(tmp_path / "kubeconfig")
        cluster.create("v1", "configmaps", "ns", {...})
    """

    def __init__(self, crds: list[dict[str, Any]] = (), namespaces: tuple[str, ...] = ("default",)) -> None:
        self.emulator = KubeApiEmulator(namespaces=set(namespaces))
        self.emulator.resources.load_bundled()  # kopf hangs after discovery without v1/namespaces
        for crd in crds:
            self.emulator.register_crd(crd)
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._failure: BaseException | None = None

    def __enter__(self) -> EmulatedCluster:
        self._thread.start()
        if not self._ready.wait(timeout=30) or self._failure is not None:
            raise RuntimeError(f"the emulator did not start: {self._failure!r}")
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        async def serve() -> None:
            self._stop = asyncio.Event()
            async with self.emulator, kmock.Server(self.emulator) as server:
                self.url = f"http://{server.host}:{server.port}"
                self._ready.set()
                await self._stop.wait()

        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(serve())
        except BaseException as err:  # surfaced by __enter__
            self._failure = err
            self._ready.set()
        finally:
            self._loop.close()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "emulator-token"}}],
            "contexts": [
                {"name": "emulator", "context": {"cluster": "emulator", "user": "tester", "namespace": namespace}}
            ],
            "current-context": "emulator",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # -- client

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            raise ApiError(err.code, err.read().decode(errors="replace")) from None

    def get(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", resource_path(api_version, plural, namespace, name))
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def list(
        self, api_version: str, plural: str, namespace: str | None = None, labels: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        query = ""
        if labels:
            query = "?" + urllib.parse.urlencode({"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())})
        return self.request("GET", resource_path(api_version, plural, namespace) + query)["items"]

    def create(self, api_version: str, plural: str, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", resource_path(api_version, plural, namespace), body)

    def patch(
        self,
        api_version: str,
        plural: str,
        namespace: str | None,
        name: str,
        patch: dict[str, Any],
        status: bool = False,
    ) -> dict[str, Any]:
        path = resource_path(api_version, plural, namespace, name) + ("/status" if status else "")
        return self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    def delete(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any]:
        return self.request("DELETE", resource_path(api_version, plural, namespace, name))


def wait_for(
    predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition", interval: float = 0.1
) -> Any:
    """Poll until `predicate()` is truthy and return it; fail the test with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


__all__ = [
    "ApiError",
    "CustomResourceSchema",
    "EmulatedCluster",
    "KubeApiEmulator",
    "apply_defaults",
    "match_labels",
    "merge_patch",
    "now_rfc3339",
    "resource_path",
    "wait_for",
]
