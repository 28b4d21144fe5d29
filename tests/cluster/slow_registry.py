"""A slow image pull made real: a registry proxy that holds a pull until the test releases it.

A real kubelet shows a pod ContainerCreating
while containerd pulls the pod's image. So this HTTP reverse proxy stands in front of the session's
loopback registry (tests/support/image_registry.py, where `built_images` pushed) and serves every
image there under a name of the test's: `<host>/<name>/<repository>:<tag>` is the registry's
`<repository>:<tag>`. A held name's requests (the manifest first: containerd resolves the tag
before anything else) wait in the proxy, so the pull is really in progress, containerd's and the
kubelet's, and the pod is really Pending with ContainerCreating; released, they go through and the
pull completes. Each node's containerd sends its node's name in a header (`hosts.toml`'s
`header`), so a hold can be released on one node and kept on another (rank 0 starts, rank 1 still
pulls). A ref the registry does not hold (`missing`) is a real ErrImagePull.

    slow_registry.hold("half")                     # every pull of half/... waits
    ref = slow_registry.trainer("half")            # the trainer image under that name
    slow_registry.waiting("half")                  # the requests held now: [(node, path), ...]
    slow_registry.release("half", node="node-cpu-0")  # go on on that node only; no node: everywhere
    slow_registry.hello("mine"), slow_registry.missing("broken")

Use a name once per session: a node that pulled a ref has it, and `IfNotPresent` pulls no more.
`slow_registry` is a session fixture (loaded by tests/conftest.py): it needs `built_images`.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.static_images import write_oci_archive

NODE_HEADER = "X-Speedrun-Node"
PATH = re.compile(r"^/v2/(?P<name>[^/]+)/(?P<repository>.+)/(?P<kind>manifests|blobs|tags)/(?P<rest>.*)$")
FORWARDED = ("Accept", "Range", "If-None-Match")  # what a pull asks with; hop-by-hop headers stay behind
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class SlowRegistry:
    """The proxy: `host` is 127.0.0.1:<port>; `upstream` the registry's host:port."""

    def __init__(self, upstream: str, hello_ref: str = "", trainer_ref: str = "") -> None:
        self.upstream, self.hello_ref, self.trainer_ref = upstream, hello_ref, trainer_ref
        self._cond = threading.Condition()
        self._holds: dict[str, set[str]] = {}  # held name prefix -> the nodes released from it
        self._waiting: list[tuple[str, str]] = []
        self.seen: list[tuple[str, str, str]] = []  # (node, method, path) of every request, in order
        self._closed = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="slow-registry", daemon=True)
        self._thread.start()

    # -- what tests use

    def ref(self, name: str, image: str) -> str:
        """`image` (a ref to the upstream registry) served under `name`."""
        repository = image.removeprefix(self.upstream + "/")
        return f"{self.host}/{name}/{repository}"

    def hello(self, name: str) -> str:
        return self.ref(name, self.hello_ref)

    def trainer(self, name: str) -> str:
        return self.ref(name, self.trainer_ref)

    def missing(self, name: str) -> str:
        """A ref the registry does not hold: the kubelet's ErrImagePull (then ImagePullBackOff)."""
        return f"{self.host}/{name}/speedrun-test/missing:0"

    def hold(self, prefix: str) -> None:
        """Requests for names starting with `prefix` wait, from every node, until released."""
        with self._cond:
            self._holds[prefix] = set()

    def release(self, prefix: str, node: str | None = None) -> None:
        """Let `node`'s held requests for `prefix` go on (and its later ones); no node: the hold ends."""
        with self._cond:
            if node is None:
                self._holds.pop(prefix, None)
            elif prefix in self._holds:
                self._holds[prefix].add(node)
            self._cond.notify_all()

    def waiting(self, prefix: str = "") -> list[tuple[str, str]]:
        """The (node, path) of each request held now for a name starting with `prefix`."""
        with self._cond:
            return [(node, path) for node, path in self._waiting if path.startswith(f"/v2/{prefix}")]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    # -- the proxy's side

    def _held(self, name: str, node: str) -> bool:
        return not self._closed and any(name.startswith(p) and node not in nodes for p, nodes in self._holds.items())

    def wait_while_held(self, name: str, node: str, path: str) -> None:
        with self._cond:
            if not self._held(name, node):
                return
            entry = (node, path)
            self._waiting.append(entry)
            try:
                self._cond.wait_for(lambda: not self._held(name, node))
            finally:
                self._waiting.remove(entry)


def _handler(registry: SlowRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request a connection: the body ends where the connection does

        def do_GET(self) -> None:
            self._proxy()

        def do_HEAD(self) -> None:
            self._proxy()

        def _proxy(self) -> None:
            node = self.headers.get(NODE_HEADER, "")
            registry.seen.append((node, self.command, self.path))
            path, match = self.path, PATH.match(self.path)
            if match:
                registry.wait_while_held(match["name"], node, self.path)
                path = f"/v2/{match['repository']}/{match['kind']}/{match['rest']}"
            upstream = http.client.HTTPConnection(registry.upstream, timeout=600)
            try:
                headers = {k: v for k in FORWARDED if (v := self.headers.get(k))}
                upstream.request(self.command, path, headers=headers)
                answer = upstream.getresponse()
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.end_headers()
                while self.command != "HEAD" and (chunk := answer.read(1 << 20)):
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # containerd gave up on this request (a cancelled pull)
            finally:
                upstream.close()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # `seen` records the requests

    return Handler


def name_nodes(nodes: Any, host: str) -> None:
    """Each node's containerd pulls from `host` over plain HTTP saying which node it is: the
    hosts.toml `trust_registry` wrote with a `header` (containerd's docs/hosts.md), and no
    `skip_verify`, which has containerd try HTTPS first on that host and lose its header."""
    for name, node in nodes.nodes.items():
        (node.runtime.certs_dir / host / "hosts.toml").write_text(
            f'server = "http://{host}"\n[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n'
            f'  [host."http://{host}".header]\n    {NODE_HEADER} = ["{name}"]\n'
        )


def served_hello(archive: Path, out: Path) -> Path:
    """The static hello image with other bytes (a comment after the program): not the image every
    node imported. A pull of the same content under another name would share its blobs and image
    id, and with containerd's `discard_unpacked_layers` the node then lost the imported name."""
    with tarfile.open(archive) as tar:

        def blob(digest: str) -> bytes:
            member = tar.extractfile(f"blobs/sha256/{digest.split(':')[1]}")
            assert member is not None, digest
            return member.read()

        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        layer = blob(manifest["layers"][0]["digest"])
    with tarfile.open(fileobj=io.BytesIO(layer)) as files:
        binary = files.extractfile("hello").read()  # type: ignore[union-attr]
    write_oci_archive(out, "localhost/speedrun-test/hello-served:0", "hello", binary + b"\n# slow registry\n")
    return out


def push_archive(archive: str, ref: str) -> None:
    """An OCI archive (a static image's) into the upstream registry as `ref` (skopeo, plain HTTP)."""
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci-archive:{archive}",
                    f"docker://{ref}"], check=True, capture_output=True, timeout=120)  # fmt: skip


@pytest.fixture(scope="session")
def slow_registry(
    kube_nodes: Any, built_images: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SlowRegistry]:
    """The proxy in front of the built images' registry, trusted by every node, a static hello
    image pushed there too (a pull of a few hundred kB once released)."""
    if shutil.which("skopeo") is None:
        pytest.skip("slow registry: needs `skopeo` to push the hello image (apt: skopeo)")
    trainer = built_images["trainer"].ref
    upstream = trainer.split("/", 1)[0]
    archive = served_hello(kube_nodes.hello.archive, tmp_path_factory.mktemp("slow-registry") / "hello.oci.tar")
    hello = f"{upstream}/speedrun-test/hello-served:{kube_nodes.hello.name.rpartition(':')[2]}"
    push_archive(str(archive), hello)
    registry = SlowRegistry(upstream, hello_ref=hello, trainer_ref=trainer)
    try:
        kube_nodes.trust_registry(registry.host)
        name_nodes(kube_nodes, registry.host)
        yield registry
    finally:
        registry.close()
