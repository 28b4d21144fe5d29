"""The chart's operator as its own OS process, so a test can SIGKILL it (HA) or run several replicas.

`ChartOperator` (chart.py) runs kopf in a thread of the test process; a replica that must die
without cleanup, as a pod does when its node vanishes, needs a process of its own:

    with operator_process(cp, release, workdir, "replica-a", SPEEDRUN_OPERATOR_METRICS_PORT="0") as a:
        a.kill()                      # SIGKILL: no cleanup handler, no Lease release
        a.log()                       # everything it printed (kopf's and our log lines)

It runs `python -m speedrun_operator.operator_commands operator` (what the chart's container runs as
`speedrun operator`) with the Deployment's own env read back from the cluster, HOSTNAME set to
the replica's name (a pod's hostname is its name: the leader-election identity), and a
kubeconfig holding a TokenRequest token of the chart's ServiceAccount, so the chart's RBAC is
what the apiserver enforces. `forbidden()` lists the log lines that carry the apiserver's
`User "<its ServiceAccount>" cannot ...`. `server` (default: the apiserver) lets a replica reach it
through a proxy (tests/cluster/api_proxy.py); `token` is its own token (the audit log's credential id).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.cluster.chart import Release
from tests.cluster.control_plane import ControlPlane, write_kubeconfig


class OperatorProcess:
    def __init__(self, cp: ControlPlane, release: Release, workdir: Path, name: str, overrides: dict[str, str],
                 server: str | None = None) -> None:  # fmt: skip
        self.cp, self.release, self.name = cp, release, name
        self.server = server or cp.server
        self.token = ""
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.env = {**release.env, **overrides}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        assert self.proc is None, f"{self.name} is already running"
        self.token = token = self.cp.token(self.release.namespace, self.release.service_account)
        kubeconfig = write_kubeconfig(self.workdir / f"{self.name}.kubeconfig", self.server,
                                      self.cp.pki.ca.cert, "operator", token=token)  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
        env.update({**self.env, "KUBECONFIG": str(kubeconfig), "HOSTNAME": self.name, "PYTHONUNBUFFERED": "1"})
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "speedrun_operator.operator_commands", "operator"],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)  # fmt: skip
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a vanished node: no cleanup runs, nothing is released."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (a pod's graceful termination), SIGKILL after `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def forbidden(self) -> list[str]:
        user = f"system:serviceaccount:{self.release.namespace}:{self.release.service_account}"
        pattern = re.compile(re.escape(user) + r"\W{0,4} cannot ")
        return [line[:500] for line in self.log().splitlines() if pattern.search(line)]


@contextlib.contextmanager
def operator_process(
    cp: ControlPlane, release: Release, workdir: Path, name: str, server: str | None = None, **overrides: str
) -> Iterator[OperatorProcess]:
    replica = OperatorProcess(cp, release, workdir, name, overrides, server).start()
    try:
        yield replica
    finally:
        replica.stop()
