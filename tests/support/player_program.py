"""The player: the `python` of the player test image (tests/support/player_image.py), standard library only.

The operator's pods run `python -m speedrun_trainer.train.torchrun ...`; in the player image that
`python` is this program, which ignores its arguments and asks the test what to do instead, over
HTTP, at $POD_PLAYER_URL (the test's PodPlayers, tests/cluster/players.py), in the spirit of
Kubernetes' e2e image agnhost: one small program in a real container, steered by the test.
- `GET /start?pod=&namespace=&index=`: is this pod played? The answer holds the metrics port and the
  Prometheus exposition to serve when the pod is rank 0 (JOB_COMPLETION_INDEX 0, or none).
- `GET /wait?pod=&namespace=`: a long poll (204: ask again) answered once the test calls `finish`;
  then the player prints the log line, writes the message to the termination-log file (the
  kubelet's /dev/termination-log) and exits with the code.
A pod not played, or one without $POD_PLAYER_URL, runs like a long trainer: until SIGTERM. The
process is PID 1 of its container, where a signal without a handler is ignored, so SIGTERM has one
(exit 143, as a process the signal killed). The namespace is the first search domain the kubelet
writes into /etc/resolv.conf (`<namespace>.svc.<domain>`): the operator's pods mount no
ServiceAccount token, and their env does not carry it.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

TERMINATION_LOG = "/dev/termination-log"
POLL_SECONDS = 60  # longer than the controller's long poll


def namespace(resolv_conf: Path = Path("/etc/resolv.conf")) -> str:
    try:
        for line in resolv_conf.read_text().splitlines():
            fields = line.split()
            if fields[:1] == ["search"] and len(fields) > 1 and ".svc." in fields[1]:
                return fields[1].split(".svc.", 1)[0]
    except OSError:
        pass
    return ""


def ask(base: str, path: str, query: dict[str, str]) -> dict[str, Any] | None:
    """GET base/path?query as JSON; None on 204 (ask again). Retries while the test is unreachable."""
    url = f"{base.rstrip('/')}/{path}?{urllib.parse.urlencode(query)}"
    said = False
    while True:
        try:
            with urllib.request.urlopen(url, timeout=POLL_SECONDS) as response:
                return None if response.status == 204 else dict(json.loads(response.read()))
        except (OSError, urllib.error.URLError) as err:
            if not said:
                print(f"player: {url}: {err}; retrying", flush=True)
                said = True
            time.sleep(1)


def serve_metrics(port: int, exposition: bytes) -> None:
    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(exposition)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("", port), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def wait_for_sigterm() -> None:
    while True:
        signal.pause()


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    index = os.environ.get("JOB_COMPLETION_INDEX", "")
    base = os.environ.get("POD_PLAYER_URL", "")
    pod = {"pod": os.environ.get("POD_NAME") or os.uname().nodename, "namespace": namespace()}
    if not base:
        print("player: no POD_PLAYER_URL; running until SIGTERM", flush=True)
        wait_for_sigterm()
    part = ask(base, "start", {**pod, "index": index}) or {}
    if not part.get("played"):
        print(f"player: {pod['namespace']}/{pod['pod']} is not played; running until SIGTERM", flush=True)
        wait_for_sigterm()
    if part.get("metrics_port") and index in ("", "0"):  # rank 0 serves, as the trainer does
        serve_metrics(int(part["metrics_port"]), str(part.get("exposition", "")).encode())
    print("player started", index, flush=True)
    asked = None
    while asked is None:
        asked = ask(base, "wait", pod)
    if asked.get("log"):
        print(asked["log"], flush=True)
    if asked.get("message"):
        Path(os.environ.get("SPEEDRUN_TERMINATION_LOG") or TERMINATION_LOG).write_text(asked["message"])
    return int(asked.get("code", 0))


if __name__ == "__main__":
    sys.exit(main())
