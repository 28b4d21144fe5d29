"""A small JSON client of the test control plane's apiserver, for the harness (not the code under test).

`Api` authenticates with a client certificate (or a bearer token), verifies the server against
the cluster CA, and speaks plain REST paths: get/list/create/patch/delete, the status
subresource, and `watch`, a generator of (type, object) events from a streaming watch.
The operator under test uses its own client (operator/speedrun_operator/kube.py); this one is
only how the tests talk to the cluster.

    api = Api(server, ca, cert=..., key=...)
    api.create("/api/v1/namespaces/x/configmaps", {...})
    for event, obj in api.watch("/api/v1/pods", field_selector="spec.nodeName=node-0"): ...
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        try:
            parsed = json.loads(body)
            message, self.reason = parsed.get("message", body), parsed.get("reason", "")
        except ValueError:
            message, self.reason = body, ""
        super().__init__(f"{status} {self.reason}: {message}")
        self.status, self.message = status, message


class Api:
    def __init__(
        self, server: str, ca: Path, *, cert: Path | None = None, key: Path | None = None, token: str | None = None
    ) -> None:
        parsed = urllib.parse.urlsplit(server)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 443
        self.server = server
        self.context = ssl.create_default_context(cafile=str(ca))
        if cert and key:
            self.context.load_cert_chain(str(cert), str(key))
        self.token = token

    def _connection(self, timeout: float | None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
        raw: bool = False,
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        url = path + ("?" + urllib.parse.urlencode(query) if query else "")
        connection = self._connection(timeout)
        try:
            connection.request(method, url, body=None if body is None else json.dumps(body), headers=headers)
            response = connection.getresponse()
            data = response.read().decode()
        finally:
            connection.close()
        if response.status >= 400:
            raise ApiError(response.status, data)
        if raw:  # text that may start with "[" or "{" (a pod's log: kopf's lines start "[<time>]")
            return data
        if not data:
            return None
        return json.loads(data) if data[0] in "{[" else data  # /readyz, /healthz answer plain text

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def list(self, path: str, *, labels: str = "", fields: str = "") -> list[dict[str, Any]]:
        """Items at a collection path, filtered by label and field selectors (`a=b,c=d`)."""
        query = {k: v for k, v in (("labelSelector", labels), ("fieldSelector", fields)) if v}
        return list(self.request("GET", path, query=query or None).get("items") or [])

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body)

    def patch(self, path: str, patch: dict[str, Any], *, kind: str = "merge") -> dict[str, Any]:
        content_type = {"merge": "application/merge-patch+json", "strategic": "application/strategic-merge-patch+json",
                        "json": "application/json-patch+json"}[kind]  # fmt: skip
        return self.request("PATCH", path, patch, content_type=content_type)

    def delete(self, path: str, *, propagation: str = "Background", grace: int | None = None) -> None:
        body: dict[str, Any] = {"propagationPolicy": propagation}
        if grace is not None:
            body["gracePeriodSeconds"] = grace
        try:
            self.request("DELETE", path, body)
        except ApiError as err:
            if err.status != 404:
                raise

    def watch(
        self, path: str, *, field_selector: str = "", resource_version: str = "", timeout_seconds: int = 60
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, object) from one watch request, until the server ends it (timeout_seconds)."""
        query = {"watch": "1", "timeoutSeconds": str(timeout_seconds), "allowWatchBookmarks": "false"}
        if field_selector:
            query["fieldSelector"] = field_selector
        if resource_version:
            query["resourceVersion"] = resource_version
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        connection = self._connection(timeout_seconds + 15)
        try:
            connection.request("GET", path + "?" + urllib.parse.urlencode(query), headers=headers)
            response = connection.getresponse()
            if response.status >= 400:
                raise ApiError(response.status, response.read().decode())
            for line in response:
                if line.strip():
                    event = json.loads(line)
                    yield event["type"], event["object"]
        finally:
            connection.close()
