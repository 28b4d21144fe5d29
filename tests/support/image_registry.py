"""A real container registry on loopback for the image tests and the real nodes.

The distribution registry (Debian's `docker-registry` 2.8, the same code as Docker's `registry:2`)
serves plain HTTP on a free 127.0.0.1 port. Its storage lives under a cache directory that
outlives the run (~/.cache/speedrun-operator/images/registry), so a later run, on any port, finds
the images an earlier one pushed: tests/support/images.py asks the registry for a tag before it
builds anything. The registry answers by repository and tag; the host:port part of a reference is
only how this run reaches it. Yet the port is kept where it can be (PORT, when free): buildah
remembers which blobs a registry has by host:port, and on a new port it recompresses a 5 GB layer
only to learn the registry has it (~100 s a push); on the same port it skips it at once.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHE = Path(os.environ.get("SPEEDRUN_IMAGE_CACHE") or Path.home() / ".cache" / "speedrun-operator" / "images")
REGISTRY_BINARY = "docker-registry"
# What a pull asks for: OCI (buildah's default) and Docker's schema 2, single images and indexes.
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


PORT = int(os.environ.get("SPEEDRUN_REGISTRY_PORT", "5055"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Free to listen on: as the registry binds (SO_REUSEADDR), so the last run's closed
    connections on it (TIME_WAIT) do not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Registry:
    """A running registry: `host` is `127.0.0.1:<port>`, the prefix of every reference to it."""

    host: str
    storage: Path
    process: subprocess.Popen[bytes] | None = None

    def ref(self, repository: str, tag: str) -> str:
        return f"{self.host}/{repository}:{tag}"

    def _request(self, path: str, method: str = "GET", body: bytes | None = None,
                 content_type: str = "") -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        headers = {"Accept": MANIFEST_TYPES, **({"Content-Type": content_type} if content_type else {})}
        req = urllib.request.Request(f"http://{self.host}{path}", data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), b""

    def digest(self, repository: str, tag: str) -> str | None:
        """The manifest digest the registry holds for repository:tag, None when it has no such tag."""
        status, headers, _ = self._request(f"/v2/{repository}/manifests/{tag}", method="HEAD")
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError(f"registry {self.host}: HEAD {repository}:{tag} answered {status}")
        return headers.get("Docker-Content-Digest") or headers.get("docker-content-digest")

    def manifest(self, repository: str, tag: str) -> dict[str, Any]:
        status, _, body = self._request(f"/v2/{repository}/manifests/{tag}")
        if status != 200:
            raise RuntimeError(f"registry {self.host}: GET {repository}:{tag} answered {status}")
        return dict(json.loads(body))

    def pull_size(self, repository: str, tag: str) -> int:
        """Bytes a node downloads for the image: its compressed layers and its config."""
        manifest = self.manifest(repository, tag)
        return int(manifest["config"]["size"]) + sum(int(layer["size"]) for layer in manifest["layers"])

    def copy(self, repository: str, tag: str, to_repository: str, to_tag: str) -> str:
        """Push repository:tag again as to_repository:to_tag, as `skopeo copy` between two names
        of one registry does: its blobs mounted (no bytes move), its manifest put unchanged, so
        the digest is the same. Returns that digest."""
        status, headers, body = self._request(f"/v2/{repository}/manifests/{tag}")
        if status != 200:
            raise RuntimeError(f"registry {self.host}: GET {repository}:{tag} answered {status}")
        manifest = json.loads(body)
        for blob in (manifest["config"], *manifest["layers"]):
            mount = f"/v2/{to_repository}/blobs/uploads/?mount={blob['digest']}&from={repository}"
            status = self._request(mount, method="POST", body=b"")[0]
            if status != 201:
                raise RuntimeError(f"registry {self.host}: mounting {blob['digest']} in {to_repository}: {status}")
        content_type = headers.get("Content-Type") or manifest["mediaType"]
        put = self._request(f"/v2/{to_repository}/manifests/{to_tag}", "PUT", body, content_type)
        if put[0] != 201:
            raise RuntimeError(f"registry {self.host}: PUT {to_repository}:{to_tag} answered {put[0]}")
        return put[1].get("Docker-Content-Digest") or put[1].get("docker-content-digest") or ""

    def delete(self, repository: str, digest: str) -> None:
        """Drop the manifest `digest` (and every tag on it) from `repository` only; the blobs stay."""
        status = self._request(f"/v2/{repository}/manifests/{digest}", method="DELETE")[0]
        if status not in (202, 404):
            raise RuntimeError(f"registry {self.host}: DELETE {repository}@{digest} answered {status}")

    def ready(self) -> bool:
        try:
            return self._request("/v2/")[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def registry_config(storage: Path, port: int) -> str:
    """The registry's config.yml: loopback only, no auth, deletes allowed (a test may drop a tag)."""
    return "\n".join(
        [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{port}",
            "  secret: speedrun-operator-tests",  # only signs upload state; a fixed one silences a warning
            "",
        ]
    )


def start_registry(storage: Path | None = None, attempts: int = 3) -> Registry:
    """Start `docker-registry serve` on a free loopback port and wait until /v2/ answers."""
    binary = shutil.which(REGISTRY_BINARY)
    if binary is None:
        raise RuntimeError(f"{REGISTRY_BINARY} is not installed (Debian: apt-get install docker-registry)")
    storage = storage or CACHE / "registry"
    storage.mkdir(parents=True, exist_ok=True)
    run_dir = storage.parent / "run"  # its config and log, beside the storage
    run_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):  # another process may take a port between free_port() and the bind
        port = PORT if attempt == 0 and port_is_free(PORT) else free_port()
        config = run_dir / f"registry-{port}.yml"
        config.write_text(registry_config(storage, port))
        log = (run_dir / f"registry-{port}.log").open("wb")
        process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        registry = Registry(host=f"127.0.0.1:{port}", storage=storage, process=process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            if registry.ready():
                return registry
            time.sleep(0.1)
        registry.stop()
    raise RuntimeError(f"{REGISTRY_BINARY} did not start; see {run_dir}/registry-*.log")


@contextmanager
def running_registry(storage: Path | None = None) -> Iterator[Registry]:
    registry = start_registry(storage)
    try:
        yield registry
    finally:
        registry.stop()
