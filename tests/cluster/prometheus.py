"""A real Prometheus server (Debian's /usr/bin/prometheus) for the control-plane tier's e2e test.

    server = Prometheus(binary, workdir, config_template, {"kubeconfig": ..., "operator_target": ...})
    server.query('up{job="speedrun-trainer"}')
    server.close()

The config is a string.Template (tests/data/prometheus/cluster.yml): its trainer job discovers
pods through kubernetes_sd against the test's kube-apiserver. `prometheus_binary()` finds the
binary or returns None (.ci/run installs the package; tests skip without it).
"""

from __future__ import annotations

import json
import shutil
import string
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from speedrun_trainer.cli.launch import free_port

START_TIMEOUT = 30.0


def prometheus_binary() -> str | None:
    return shutil.which("prometheus") or shutil.which("prometheus", path="/usr/bin")


class Prometheus:
    def __init__(self, binary: str, workdir: Path, config_template: Path, values: dict[str, str]) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        config.write_text(string.Template(config_template.read_text()).substitute(values))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = workdir / "prometheus.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready():
            if time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"Prometheus not ready at {self.url} after {START_TIMEOUT:.0f} s")
            time.sleep(0.2)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query (vector or matrix) through /api/v1/query."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def samples(self, expr: str) -> dict[float, float]:
        """{timestamp: value} of the raw samples of one series (a range-vector instant query)."""
        [series] = self.query(expr)
        return {float(t): float(v) for t, v in series["values"]}

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
