"""Integration: `speedrun operator` itself, as a separate process, against the emulated API.

The other operator tests run the same kopf argv in-process (KopfRunner); this one checks the
command's own wiring: flags -> environment -> kopf, its metrics port, and a clean stop on SIGINT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.kube_emulator import wait_for
from tests.operator_fixtures import NAMESPACE, Speedruns, emulated_cluster, free_port, tiny_job

ROOT = Path(__file__).resolve().parent.parent


def test_speedrun_operator_command_runs_kopf_with_its_flags(tmp_path: Path) -> None:
    port = free_port()
    with emulated_cluster(tmp_path) as cluster:
        runs = Speedruns(cluster)
        command = [
            sys.executable,
            "-m",
            "speedrun_operator.commands",
            "operator",
            "--namespace",
            NAMESPACE,
            "--image",
            "example.test/trainer:flag",
            "--metrics-port",
            str(port),
        ]
        env = {**os.environ, "SPEEDRUN_OPERATOR_DEFAULT_STORAGE_URI": "s3://b/p", "SPEEDRUN_OPERATOR_STANDALONE": "1"}
        log = (tmp_path / "operator.log").open("w")
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            runs.apply(tiny_job("cmd"))
            job = wait_for(lambda: runs.job("cmd-train"), timeout=30, what="the training Job")
            [container] = job["spec"]["template"]["spec"]["containers"]
            assert container["image"] == "example.test/trainer:flag"

            def metrics() -> str:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                        return response.read().decode()
                except OSError:
                    return ""

            pending = 'speedrun_operator_jobs{phase="Pending"} 1.0'

            def pending_in_metrics() -> bool:
                return pending in metrics()

            wait_for(pending_in_metrics, timeout=30, what="the Pending job in the operator's metrics")
        finally:
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=30)
            log.close()
        output = (tmp_path / "operator.log").read_text()
        assert code == 0, output[-3000:]
        assert "speedrun-operator: image example.test/trainer:flag" in output
