"""Pods played without their program: for control-plane tests where training is not the point.

`PodPlayers` is the node agent's `stand_in`: a pod whose name starts with a prefix given to
`play(prefix)` runs a small Python "player" instead of its container's command, with everything
else the pod's (env, volumes, working directory, network namespace, termination-log file), and
the Job controller, scheduler and garbage collector stay Kubernetes' own. A player:
- serves a fixed Prometheus exposition on `metrics_port` when given and its completion index is
  0 (rank 0's gauges, which the operator scrapes at `<podIP>:<port>`), on every address of the pod;
- runs until the test asks it to exit: `finish(prefix, code, message, log)` makes every player
  started so far under that prefix print `log`, write `message` to its termination-message file
  (what the kubelet reports as `terminated.message`), and exit with `code`. Pods started later
  (a Job's replacement pods) keep running until asked themselves.
Pods that are deleted get SIGTERM from the agent like any other, and stop.

Used by tests/cluster/test_lifecycle.py; the end-to-end tests run the real trainer instead.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# argv[1]: the exit-request file; argv[2]: the metrics port (0: none); argv[3]: the exposition.
PLAYER = """\
import http.server, json, os, pathlib, sys, threading, time
request, port, exposition = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(exposition)
    def log_message(self, *args):
        pass
if port and os.environ.get("JOB_COMPLETION_INDEX", "0") == "0":  # rank 0 serves, as the trainer
    server = http.server.ThreadingHTTPServer(("", port), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("player started", os.environ.get("JOB_COMPLETION_INDEX", ""), flush=True)
while not request.exists():
    time.sleep(0.1)
asked = json.loads(request.read_text())
print(asked["log"], flush=True)
if asked["message"]:
    pathlib.Path(os.environ["SPEEDRUN_TERMINATION_LOG"]).write_text(asked["message"])
sys.exit(asked["code"])
"""


@dataclass(frozen=True)
class Part:
    metrics_port: int = 0
    exposition: str = ""


class PodPlayers:
    """The node agent's stand_in: which pods are played, and the verbs that end them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.parts: dict[str, Part] = {}
        self.started: dict[str, Path] = {}  # pod name -> its exit-request file
        self._lock = threading.Lock()

    def play(self, prefix: str, metrics_port: int = 0, exposition: str = "", namespace: str = "") -> None:
        """Play pods whose name starts with `prefix` (in `namespace`, when given) from their next start on."""
        self.parts[f"{namespace}/{prefix}"] = Part(metrics_port, exposition)

    def stop_playing(self, prefix: str, namespace: str = "") -> None:
        self.parts.pop(f"{namespace}/{prefix}", None)

    def clear(self) -> None:
        """Play nothing from now on (a module's prefixes must not catch another module's pods)."""
        self.parts.clear()

    def __call__(self, pod: dict[str, Any]) -> list[str] | None:
        meta = pod["metadata"]
        keys = [k for k in self.parts for ns, prefix in [k.split("/", 1)]
                if meta["name"].startswith(prefix) and ns in ("", meta["namespace"])]  # fmt: skip
        if not keys:
            return None
        name = meta["name"]
        part = self.parts[max(keys, key=len)]
        request = self.workdir / f"{name}-{pod['metadata']['uid'][:8]}.exit.json"
        script = self.workdir / "player.py"
        with self._lock:
            if not script.exists():
                self.workdir.mkdir(parents=True, exist_ok=True)
                script.write_text(PLAYER)
            self.started[name] = request
        return [sys.executable, str(script), str(request), str(part.metrics_port), part.exposition]

    def finish(self, prefix: str, code: int = 0, message: str = "", log: str = "") -> list[str]:
        """Ask every player started so far under `prefix` to exit; returns the pods asked."""
        with self._lock:
            asked = {name: path for name, path in self.started.items() if name.startswith(prefix)}
            for name in asked:
                del self.started[name]
        for path in asked.values():
            partial = path.with_suffix(".partial")
            partial.write_text(json.dumps({"code": code, "message": message, "log": log}))
            partial.rename(path)  # the player never reads half a request
        return sorted(asked)

    def playing(self, prefix: str) -> list[str]:
        """The pods started under `prefix` that were not asked to exit yet."""
        with self._lock:
            return sorted(name for name in self.started if name.startswith(prefix))
