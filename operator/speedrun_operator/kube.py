"""A small dict-in, dict-out Kubernetes client over the official client's ApiClient.

The handlers need get, list, create, patch and the status subresource for five kinds; typed
APIs would turn every object into a model and back. `KubeClient` speaks plain REST paths
through `kubernetes.client.ApiClient`, which brings in-cluster and kubeconfig authentication.
`login` gives kopf the same credentials, read at run time (not at import), so kopf and the
handlers always talk to the same cluster.

Each request is one attempt or a few (kube_retry.py: 429 and 5xx retried, honouring
Retry-After), each attempt's timeout cut to the time left before `deadline`, the instant this
replica must stop acting (the leader's renew deadline, leader.py): past it no request is sent at
all, so a replica that lost its Lease writes nothing once a standby may hold it. A transport
failure (refused, reset, timed out) surfaces as `Unreachable`, a `KubeError` like the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kopf
import kubernetes.client
import kubernetes.config
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from speedrun_api.spec import API_GROUP, API_VERSION, PLURAL
from speedrun_operator import kube_retry

REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class Kind:
    api_version: str
    plural: str
    kind: str

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        path = f"{base}/namespaces/{namespace}/{self.plural}" if namespace else f"{base}/{self.plural}"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path


CONFIGMAP = Kind("v1", "configmaps", "ConfigMap")
SERVICE = Kind("v1", "services", "Service")
POD = Kind("v1", "pods", "Pod")
JOB = Kind("batch/v1", "jobs", "Job")
EVENT = Kind("v1", "events", "Event")
NODE = Kind("v1", "nodes", "Node")  # cluster-scoped: read only to tell a lost node (stuck_pods.py)
SPEEDRUNJOB = Kind(f"{API_GROUP}/{API_VERSION}", PLURAL, "SpeedrunJob")
# Gang placement (builders/placement.py) and Kueue (kueue.py): used only where the cluster serves them.
POD_GROUP = Kind("scheduling.k8s.io/v1alpha2", "podgroups", "PodGroup")
COSCHEDULING_POD_GROUP = Kind("scheduling.x-k8s.io/v1alpha1", "podgroups", "PodGroup")
KUEUE_WORKLOAD = Kind("kueue.x-k8s.io/v1beta2", "workloads", "Workload")
KUEUE_WORKLOAD_V1BETA1 = Kind("kueue.x-k8s.io/v1beta1", "workloads", "Workload")  # Kueue < 0.15
KINDS = {
    f"{k.kind}.{k.api_version}": k
    for k in (
        CONFIGMAP,
        SERVICE,
        POD,
        JOB,
        EVENT,
        NODE,
        SPEEDRUNJOB,
        POD_GROUP,
        COSCHEDULING_POD_GROUP,
        KUEUE_WORKLOAD,
        KUEUE_WORKLOAD_V1BETA1,
    )
}


class KubeError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """409: AlreadyExists on create, or a resourceVersion precondition failed."""


class Unreachable(KubeError):
    """No HTTP answer: the connection was refused, reset or timed out (status 0)."""


class PastDeadline(KubeError):
    """Not sent: this replica's deadline to act has passed (it may no longer hold the Lease)."""


def load_configuration() -> kubernetes.client.Configuration:
    """In-cluster service account first, else the kubeconfig ($KUBECONFIG, read now)."""
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
    except kubernetes.config.ConfigException:
        kubeconfig = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=config)
    return config


def connection_info(config: kubernetes.client.Configuration) -> kopf.ConnectionInfo:
    """kopf's view of the same credentials (what kopf's own `login_via_client` does)."""
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme,
        token=token,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )


class KubeClient:
    """get / list / create / patch / delete of plain dicts; errors as `KubeError` subclasses.

    `deadline`, when set, returns the monotonic instant after which no request may be in flight
    (leader.py sets it to the Lease's renew deadline); `clock` and `sleep` are for tests."""

    def __init__(
        self,
        config: kubernetes.client.Configuration,
        policy: kube_retry.RetryPolicy = kube_retry.DEFAULT_POLICY,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        config.retries = False  # urllib3's own retries would multiply the timeout; we retry here
        self.api = kubernetes.client.ApiClient(config)
        self.policy, self.clock, self.sleep = policy, clock, sleep
        self.deadline: Callable[[], float] | None = None

    def close(self) -> None:
        self.api.close()

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        may_duplicate = method == "POST" and isinstance(body, dict) and not (body.get("metadata") or {}).get("name")
        attempt = 0
        while True:
            attempt += 1
            deadline = self.deadline() if self.deadline is not None else None
            timeout = kube_retry.attempt_timeout(REQUEST_TIMEOUT, deadline, self.clock())
            if timeout <= 0:
                raise PastDeadline(0, "PastDeadline", f"{method} {path} not sent: past this replica's deadline")
            retry_after, refused_or_reset = None, False
            try:
                raw = self._send(method, path, body, query or [], headers, timeout)
            except ApiException as err:
                error: KubeError = _translate(err)
                retry_after = kube_retry.parse_retry_after(_header(err, "Retry-After"))
            except (urllib3.exceptions.HTTPError, OSError) as err:
                error = Unreachable(0, type(err).__name__, f"{method} {path}: {err}")
                refused_or_reset = not _timed_out(err)
            else:
                return json.loads(raw) if raw else None
            delay = self.policy.delay(attempt, method, error.status, retry_after, refused_or_reset=refused_or_reset,
                                      may_duplicate=may_duplicate)  # fmt: skip
            if delay is None or not kube_retry.wait_fits(delay, deadline, self.clock()):
                raise error
            self.sleep(delay)

    def _send(
        self, method: str, path: str, body: Any, query: list[tuple[str, str]], headers: dict[str, str], timeout: float
    ) -> bytes:
        """The response body of one request, through either generation of the client's ApiClient:
        kubernetes>=37 (OpenAPI Generator 7: `param_serialize`, then `call_api(method, url, ...)`,
        which returns the response whatever its status) and older releases (one `call_api(path,
        method, query_params=...)` that raises on an error status). The operator image installs
        37 (requirements/operator.txt); the dev set-up holds 36 (torchx caps urllib3): both run."""
        if hasattr(self.api, "param_serialize"):
            method, url, headers, body, post = self.api.param_serialize(
                method=method, resource_path=path, query_params=query, header_params=headers, body=body,
                auth_settings=["BearerToken"],
            )  # fmt: skip
            response = self.api.call_api(method, url, header_params=headers, body=body, post_params=post,
                                         _request_timeout=timeout)  # fmt: skip
            data = response.read()
            if not 200 <= response.status <= 299:
                err = ApiException(status=response.status, reason=response.reason)
                err.body = data.decode(errors="replace") if isinstance(data, bytes) else data
                err.headers = response.getheaders() if hasattr(response, "getheaders") else None
                raise err
            return data
        response = self.api.call_api(
            path,
            method,
            query_params=query,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )
        return response.data if hasattr(response, "data") else response[0].data

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", kind.path(namespace, name))
        except NotFound:
            return None

    def list(
        self,
        kind: Kind,
        namespace: str | None,
        labels: dict[str, str] | None = None,
        fields: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", ",".join(f"{k}={v}" for k, v in labels.items()))] if labels else []
        if fields:
            query.append(("fieldSelector", ",".join(f"{k}={v}" for k, v in fields.items())))
        return list(self._call("GET", kind.path(namespace), query=query).get("items") or [])

    def served(self, kind: Kind) -> bool:
        """Whether the apiserver serves `kind` (its group version's discovery document lists it)."""
        try:
            found = self._call("GET", f"/apis/{kind.api_version}")
        except NotFound:
            return False
        return any(r.get("name") == kind.plural for r in (found or {}).get("resources") or [])

    def create(self, kind: Kind, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", kind.path(namespace), body=body)

    def patch(
        self, kind: Kind, namespace: str | None, name: str, patch: dict[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        path = kind.path(namespace, name, subresource)
        return self._call("PATCH", path, body=patch, content_type="application/merge-patch+json")

    def delete(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        propagation: str = "Background",
        grace_seconds: int | None = None,
        uid: str | None = None,
    ) -> None:
        """Delete (absent is fine); `propagation` Foreground keeps the object until its dependents are
        gone; `grace_seconds` 0 force-deletes a pod; `uid`: only that object, not a namesake (409)."""
        body: dict[str, Any] = {"propagationPolicy": propagation}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        with contextlib.suppress(NotFound):
            self._call("DELETE", kind.path(namespace, name), body=body)


def _translate(err: ApiException) -> KubeError:
    reason, message = err.reason or "", str(err.body or "")
    try:
        status_body = json.loads(err.body or "{}")
        reason = status_body.get("reason") or reason
        message = status_body.get("message") or message
    except ValueError:
        pass
    cls = {0: Unreachable, 404: NotFound, 409: Conflict}.get(err.status or 0, KubeError)
    return cls(err.status or 0, reason, message)


def _header(err: ApiException, name: str) -> str | None:
    headers = getattr(err, "headers", None) or {}
    value = headers.get(name) if hasattr(headers, "get") else None
    if value is None and hasattr(headers, "items"):  # a plain dict is case-sensitive
        value = next((v for k, v in headers.items() if k.lower() == name.lower()), None)
    return str(value) if value is not None else None


def _timed_out(err: BaseException) -> bool:
    """Whether a transport error is a timeout (its time is spent: not retried), rather than a
    refused or reset connection (a GET is sent again)."""
    if isinstance(err, urllib3.exceptions.MaxRetryError) and err.reason is not None:
        err = err.reason
    if isinstance(err, urllib3.exceptions.NewConnectionError):  # a subclass of the timeouts: refused
        return False
    return isinstance(err, (urllib3.exceptions.TimeoutError, TimeoutError))
