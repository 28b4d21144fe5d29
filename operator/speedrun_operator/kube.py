"""A small dict-in, dict-out Kubernetes client over the official client's ApiClient.

The handlers need get, list, create, patch and the status subresource for five kinds; typed
APIs would turn every object into a model and back. `KubeClient` speaks plain REST paths
through `kubernetes.client.ApiClient`, which brings in-cluster and kubeconfig authentication.
`login` gives kopf the same credentials, read at run time (not at import), so kopf and the
handlers always talk to the same cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any

import kopf
import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

from speedrun_api.spec import API_GROUP, API_VERSION, PLURAL

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
    """get / list / create / patch / delete of plain dicts; errors as `KubeError` subclasses."""

    def __init__(self, config: kubernetes.client.Configuration) -> None:
        self.api = kubernetes.client.ApiClient(config)

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
        try:
            raw = self._send(method, path, body, query or [], headers)
        except ApiException as err:
            raise _translate(err) from None
        return json.loads(raw) if raw else None

    def _send(self, method: str, path: str, body: Any, query: list[tuple[str, str]], headers: dict[str, str]) -> bytes:
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
                                         _request_timeout=REQUEST_TIMEOUT)  # fmt: skip
            data = response.read()
            if not 200 <= response.status <= 299:
                err = ApiException(status=response.status, reason=response.reason)
                err.body = data.decode(errors="replace") if isinstance(data, bytes) else data
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
            _request_timeout=REQUEST_TIMEOUT,
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

    def delete(self, kind: Kind, namespace: str | None, name: str, propagation: str = "Background") -> None:
        """Delete (absent is fine); `propagation` Foreground keeps the object until its dependents are gone."""
        with contextlib.suppress(NotFound):
            self._call("DELETE", kind.path(namespace, name), body={"propagationPolicy": propagation})


def _translate(err: ApiException) -> KubeError:
    reason, message = err.reason or "", str(err.body or "")
    try:
        status_body = json.loads(err.body or "{}")
        reason = status_body.get("reason") or reason
        message = status_body.get("message") or message
    except ValueError:
        pass
    cls = {404: NotFound, 409: Conflict}.get(err.status or 0, KubeError)
    return cls(err.status or 0, reason, message)
