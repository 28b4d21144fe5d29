"""Smoke test of bench/bench_control_plane.py: one SpeedrunJob through the real control plane, and the
JSON report has the keys bench/README.md documents. No timing assertions (figures depend on the
machine and on what else runs on it). Run: `pytest -m cluster tests/cluster/test_bench_control_plane.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from speedrun_operator.settings import OperatorSettings
from tests.cluster.fixtures import tier_missing
from tests.support.helpers import ROOT

pytestmark = pytest.mark.cluster

RUN_KEYS = {"n", "phases", "requests_per_job", "requests_per_job_total", "requests_by_resource",
            "handler_calls_per_job", "handler_mean_ms", "apply_to_train_job_s", "apply_to_train_pods_s",
            "operator_rss_mib", "operator_peak_rss_mib", "job_post_round_trip_s", "job_create_to_pod_s",
            "handler_threads", "bare_burst_to_pods_s"}  # fmt: skip


def test_one_job_through_the_bench() -> None:
    missing = tier_missing()
    if missing:
        pytest.skip(f"control-plane tier: {missing}")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_control_plane.py"), "--sizes", "1", "--json"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    [run] = report["runs"]
    assert set(run) == RUN_KEYS
    assert run["phases"] == {"Succeeded": 1}
    assert run["requests_per_job"]["create"] >= 3  # at least the ConfigMap, the Service and the Job
    assert run["apply_to_train_pods_s"]["measured"] == 1 and run["operator_rss_mib"] > 0
    assert run["apply_to_train_job_s"]["measured"] == 1 and run["requests_by_resource"]["create jobs"] == 2
    assert run["handler_calls_per_job"]["create"] >= 1 and report["growth"] == report["side_by_side"] == []
    assert run["handler_threads"] == OperatorSettings.handler_threads and run["bare_burst_to_pods_s"]["measured"] == 1
