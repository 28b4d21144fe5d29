"""A real TLS proxy in front of the apiserver that a test can partition or have answer for it.

    proxy = ApiProxy(cp)                       # https://127.0.0.1:<port>, a cert of the cluster CA
    proxy.partition_when = lambda r: r.method == "POST" and r.path.endswith("/configmaps")
    proxy.answer = lambda r: (429, {"Retry-After": "2"}) if ... else None
    proxy.heal()

Why a proxy and not a mock: the operator under test is the real process with its real HTTP
clients (urllib3 for the handlers, aiohttp for kopf's watches); only the network between it and
the apiserver is the test double. It terminates TLS with a certificate the cluster CA signed (so
the operator's kubeconfig trusts it as it trusts the apiserver), reads each HTTP/1.1 request and
forwards it on a connection of its own with `Connection: close`, piping the answer back as it
comes (watches stream through).

A partition (`partition()`, or the first request `partition_when` matches, which is then held)
holds everything of every connection: requests are not forwarded, answers not passed on, new
connections not answered. On `heal()` what it held goes through, except what belonged to a
connection its client closed meanwhile: a request the client abandoned (timed out, or the process
exited) is dropped, as the apiserver drops a request whose client went away before it was read.
`answer(request)` may answer a request itself (before forwarding it), or `answer_after` replace
the apiserver's answer to a forwarded one (a write that landed but whose answer was lost).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.cluster.control_plane import ControlPlane

Reply = tuple[int, dict[str, str]] | None


@dataclass
class Request:
    method: str
    path: str  # without the query
    query: str
    at: float  # time.monotonic() when the proxy had read it
    answered: int = 0  # the status the client got (0: none, the connection dropped)
    held: bool = False  # arrived during (or started) a partition
    headers: dict[str, str] = field(default_factory=dict)


class ApiProxy:
    def __init__(self, cp: ControlPlane, name: str = "api-proxy") -> None:
        upstream = urllib.parse.urlsplit(cp.server)
        self.upstream = (upstream.hostname or "127.0.0.1", upstream.port or 443)
        pair = cp.pki.issue(name, name, server_ips=("127.0.0.1",))
        self.server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_tls.load_cert_chain(pair.cert, pair.key)
        self.client_tls = ssl.create_default_context(cafile=str(cp.pki.ca.cert))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[Request] = []
        self.partition_when: Callable[[Request], bool] = lambda _: False
        self.answer: Callable[[Request], Reply] = lambda _: None
        self.answer_after: Callable[[Request], Reply] = lambda _: None
        self.partitioned_at: float | None = None
        self._healed = threading.Event()
        self._healed.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name=name, daemon=True).start()

    # -- what a test does

    def partition(self) -> None:
        with self._lock:
            if self._healed.is_set():
                self.partitioned_at = time.monotonic()
                self._healed.clear()

    def heal(self) -> None:
        self._healed.set()

    def close(self) -> None:
        self._closed.set()
        self._healed.set()
        self.listener.close()

    def seen(self, method: str, path_end: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.endswith(path_end)]

    # -- the proxy

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        with contextlib.closing(raw):
            if not self._wait_healed(raw, tls=False):
                return
            try:
                client = self.server_tls.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError):
                return
            with contextlib.closing(client):
                while self._serve_one(client):
                    pass

    def _serve_one(self, client: ssl.SSLSocket) -> bool:
        """One request on a client connection; whether the connection stays open for another."""
        try:
            head, body = _read_request(client)
        except (OSError, ValueError):
            return False
        if head is None:
            return False
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        path, _, query = target.partition("?")
        headers = dict(line.split(": ", 1) for line in lines if ": " in line)
        request = Request(method, path, query, time.monotonic(), headers=headers)
        with self._lock:
            self.requests.append(request)
        if self.partition_when(request):
            self.partition()
        request.held = not self._healed.is_set()
        if not self._wait_healed(client, tls=True):
            return False  # the client went away while partitioned: its request is dropped
        reply = self.answer(request)
        if reply is not None:
            request.answered = reply[0]
            _send_status(client, *reply, keep_alive=True)
            return True
        self._forward(client, request, head, body)
        return False

    def _forward(self, client: ssl.SSLSocket, request: Request, head: bytes, body: bytes) -> None:
        lines = [ln for ln in head.decode("latin-1").split("\r\n") if not ln.lower().startswith("connection:")]
        upstream_head = "\r\n".join([*lines, "Connection: close"]).encode("latin-1") + b"\r\n\r\n"
        try:
            upstream = self.client_tls.wrap_socket(socket.create_connection(self.upstream), server_hostname="127.0.0.1")
        except OSError:
            _send_status(client, 502, {}, keep_alive=False)
            return
        with contextlib.closing(upstream):
            upstream.sendall(upstream_head + body)
            replaced = self.answer_after(request)
            first = True
            while True:
                if not self._wait_healed(client, tls=True):
                    return  # partitioned and the client left: the rest of the answer is dropped
                if not upstream.pending():
                    ready, _, _ = select.select([upstream, client], [], [], 0.2)
                    if client in ready and _client_gone(client):
                        return
                    if upstream not in ready:
                        continue
                try:
                    data = upstream.recv(65536)
                except (OSError, ssl.SSLError):
                    return
                if not data:
                    return
                if first:
                    first = False
                    request.answered = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
                    if replaced is not None:  # the write landed; the client gets another answer
                        request.answered = replaced[0]
                        _send_status(client, *replaced, keep_alive=False)
                        return
                try:
                    client.sendall(data)
                except OSError:
                    return

    def _wait_healed(self, sock: socket.socket, *, tls: bool) -> bool:
        """Hold while partitioned; False if the client closed its connection meanwhile."""
        while not self._healed.wait(0.1):
            ready, _, _ = select.select([sock], [], [], 0)
            if ready and (_client_gone(sock) if tls else _raw_gone(sock)):
                return False
        return not self._closed.is_set()


def _read_request(client: ssl.SSLSocket) -> tuple[bytes | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lowered = head.lower()
    if b"transfer-encoding: chunked" in lowered:
        while not body.endswith(b"0\r\n\r\n"):
            chunk = client.recv(65536)
            if not chunk:
                raise ValueError("request body cut short")
            body += chunk
        return head, body
    length = 0
    for line in lowered.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(body) < length:
        chunk = client.recv(65536)
        if not chunk:
            raise ValueError("request body cut short")
        body += chunk
    return head, body


def _client_gone(sock: socket.socket) -> bool:
    """Whether a readable TLS client connection is closed (EOF, reset, or close_notify)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""  # a client never sends before its answer: data is unexpected
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def _raw_gone(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _send_status(client: ssl.SSLSocket, status: int, headers: dict[str, str], *, keep_alive: bool) -> None:
    """A metav1.Status answer, as the apiserver writes one."""
    reason = {429: "TooManyRequests", 500: "InternalError", 502: "BadGateway", 503: "ServiceUnavailable",
              504: "Timeout"}.get(status, "Unknown")  # fmt: skip
    body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status,
                       "reason": reason, "message": f"the proxy answered {status}"}).encode()  # fmt: skip
    connection = "keep-alive" if keep_alive else "close"
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}",
             f"Connection: {connection}", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
    with contextlib.suppress(OSError):
        client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
