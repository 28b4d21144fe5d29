"""Pods played without their program, in real containers: for tests where training is not the point.

The operator's training and eval pods run `python -m speedrun_trainer...`. Point its chart's
`trainer.image.repository`/`tag` at the player image (tests/support/player_image.py: the
session's Python base plus the player, tests/support/player_program.py, as the image's `python`)
and each such pod runs the player in a real container on a real kubelet, with everything else the
operator's: securityContext (uid 1000, read-only root), env, volumes, termination-message policy.
The Job controller, scheduler, kubelet and garbage collector stay Kubernetes' own. The player
asks the test what to do over HTTP (this module's `PodPlayers`, on `pod_net.host_ip`), which it
finds in the env var POD_PLAYER_URL (the chart's `trainer.env`, or a job's `spec.env`; a
`SPEEDRUN_` name would be refused: api run_env.py reserves the prefix for the launchers).
- `play(prefix, metrics_port, exposition, namespace)`: pods whose name starts with `prefix` (in
  `namespace`, when given) are played from their next start on; rank 0 (JOB_COMPLETION_INDEX 0)
  serves `exposition` on `metrics_port` (the gauges the operator scrapes at `<podIP>:<port>`);
- `finish(prefix, code, message, log)`: every player started so far under `prefix` prints `log`,
  writes `message` to /dev/termination-log (the kubelet's `terminated.message`; the operator's
  pods use FallbackToLogsOnError, so a failed pod without a message shows its log's tail) and
  exits with `code`; returns the pods asked. Pods started later (a Job's replacement pods) keep
  running until asked themselves;
- `playing(prefix)`: the pods started under `prefix` not asked yet; `clear()`: play nothing more
  (one module's prefixes must not catch another's pods).
A pod of the player image that is not played runs like a long trainer until it is deleted (the
kubelet's SIGTERM ends it, exit 143).

Fixtures (session-scoped; tests/conftest.py loads this module as a pytest plugin, so any module
of tests/cluster or tests/e2e asks for them by name):
    player_image   a `PlayerImage`: `.ref` (the player image in a loopback registry the real nodes
                   trust: the registry runs for the session), `.repository`, `.tag`, and
                   `.chart_values(players)`, the helm values that make an operator's pods players
    pod_players    the `PodPlayers` server; `.url` is what POD_PLAYER_URL must hold

    values = {**CHART_VALUES, **player_image.chart_values(pod_players)}   # helm --set values
    pod_players.play("happy-train-", metrics_port=port, exposition=text, namespace=ns)
    pod_players.finish("happy-train-", code=0)

    with played_operator(cp, namespace, workdir, player_image, pod_players) as op: ...  # the chart's operator

Used by tests/cluster/test_lifecycle.py, test_restarts.py and test_stuck_nodes.py; the e2e tests run
the real trainer image instead.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from http import server
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.chart import CHART_VALUES, ChartOperator
from tests.cluster.control_plane import ControlPlane
from tests.cluster.network import PodNetwork
from tests.cluster.operator_run import chart_operator_in
from tests.cluster.real_nodes import RealNodes
from tests.support import images
from tests.support.image_registry import running_registry
from tests.support.player_image import ensure_player

URL_ENV = "POD_PLAYER_URL"
LONG_POLL_SECONDS = 20.0  # a player's /wait answers 204 after this, and the player asks again


@dataclass(frozen=True)
class Part:
    metrics_port: int = 0
    exposition: str = ""


@dataclass(frozen=True)
class Finish:
    code: int = 0
    message: str = ""
    log: str = ""


class PodPlayers:
    """The test's side: which pods are played, and the verbs that end them, served over HTTP."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.parts: dict[str, Part] = {}  # "<namespace>/<prefix>" -> its part
        self.started: dict[str, str] = {}  # pod name -> its namespace ("" when the player could not tell)
        self.asked: dict[tuple[str, str], Finish] = {}  # (namespace, pod) -> how it must end
        self._cond = threading.Condition()
        self._closing = False
        self._server = server.ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="pod-players", daemon=True)

    def start(self) -> PodPlayers:
        self._thread.start()
        return self

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    # The test's verbs.
    def play(self, prefix: str, metrics_port: int = 0, exposition: str = "", namespace: str = "") -> None:
        """Play pods whose name starts with `prefix` (in `namespace`, when given) from their next start on."""
        with self._cond:
            self.parts[f"{namespace}/{prefix}"] = Part(metrics_port, exposition)

    def stop_playing(self, prefix: str, namespace: str = "") -> None:
        with self._cond:
            self.parts.pop(f"{namespace}/{prefix}", None)

    def clear(self) -> None:
        """Play nothing from now on (a module's prefixes must not catch another module's pods)."""
        with self._cond:
            self.parts.clear()

    def finish(self, prefix: str, code: int = 0, message: str = "", log: str = "") -> list[str]:
        """Ask every player started so far under `prefix` to exit; returns the pods asked."""
        with self._cond:
            names = sorted(name for name in self.started if name.startswith(prefix))
            for name in names:
                self.asked[(self.started.pop(name), name)] = Finish(code, message, log)
            self._cond.notify_all()
        return names

    def playing(self, prefix: str) -> list[str]:
        """The pods started under `prefix` that were not asked to exit yet."""
        with self._cond:
            return sorted(name for name in self.started if name.startswith(prefix))

    # The players' requests.
    def part_of(self, pod: str, namespace: str) -> Part | None:
        """The part of a starting pod (the longest matching prefix), or None when it is not played."""
        with self._cond:
            keys = [k for k in self.parts for ns, prefix in [k.split("/", 1)]
                    if pod.startswith(prefix) and (ns in ("", namespace) or not namespace)]  # fmt: skip
            if not keys:
                return None
            self.started[pod] = namespace
            return self.parts[max(keys, key=len)]

    def wait_for_finish(self, pod: str, namespace: str) -> Finish | None:
        """How the pod must end, once the test says; None after the long poll (ask again)."""
        with self._cond:
            self._cond.wait_for(lambda: (namespace, pod) in self.asked or self._closing, LONG_POLL_SECONDS)
            return self.asked.get((namespace, pod))  # kept: a lost answer is given again


def _handler(players: PodPlayers) -> type[server.BaseHTTPRequestHandler]:
    class Handler(server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
            pod, namespace = query.get("pod", ""), query.get("namespace", "")
            body: dict[str, Any] | None
            if url.path == "/start":
                part = players.part_of(pod, namespace)
                body = {"played": part is not None, **(asdict(part) if part else {})}
            elif url.path == "/wait":
                finish = players.wait_for_finish(pod, namespace)
                body = asdict(finish) if finish else None
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(200 if body is not None else 204)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@dataclass(frozen=True)
class PlayerImage:
    ref: str

    @property
    def repository(self) -> str:
        return self.ref.rpartition(":")[0]

    @property
    def tag(self) -> str:
        return self.ref.rpartition(":")[2]

    def chart_values(self, players: PodPlayers) -> dict[str, str]:
        """Helm values (`--set`) that make the chart's operator run its pods as players of `players`."""
        return {"trainer.image.repository": self.repository, "trainer.image.tag": self.tag,
                f"trainer.env.{URL_ENV}": players.url}  # fmt: skip


@pytest.fixture(scope="session")
def player_image(kube_nodes: RealNodes) -> Iterator[PlayerImage]:
    reason = images.missing_tools()
    if reason:
        pytest.skip(f"player image: {reason}")
    with running_registry() as registry:
        start = time.monotonic()
        ref, built = ensure_player(registry)
        how = "built and pushed" if built else "found in the registry"
        print(f"\nplayer image {ref} {how} in {time.monotonic() - start:.1f} s", flush=True)
        kube_nodes.trust_registry(registry.host)
        yield PlayerImage(ref)


@pytest.fixture(scope="session")
def pod_players(pod_net: PodNetwork) -> Iterator[PodPlayers]:
    players = PodPlayers(pod_net.host_ip).start()
    try:
        yield players
    finally:
        players.close()


@contextlib.contextmanager
def played_operator(
    cp: ControlPlane, namespace: str, workdir: Path, image: PlayerImage, players: PodPlayers, **values: str
) -> Iterator[ChartOperator]:
    """The chart's operator serving `namespace` (operator_run.chart_operator_in: the release is named
    after it) with the tests' CHART_VALUES and `values` over them, its trainer and eval pods played
    by `players`, which play nothing more once it has stopped."""
    try:
        with chart_operator_in(cp, namespace, workdir, {**CHART_VALUES, **image.chart_values(players), **values}) as op:
            yield op
    finally:
        players.clear()
