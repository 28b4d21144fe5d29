"""E2E: a real Prometheus scrapes the trainer's rank-0 pod and the operator; the test reads them back.

Prometheus (Debian's /usr/bin/prometheus, installed by .ci/run; the test skips without it) runs
tests/data/prometheus/prometheus.yml: the trainer pods are discovered the way a cluster's
`kubernetes_sd_configs` would find them (the test writes the same `__meta_kubernetes_*` labels
into file_sd target files) and relabelled as the chart's PodMonitor selects them: completion
index 0's `metrics` port; the operator is a static target. The train loss Prometheus stored is
checked against the trainer's own log, step by step. Run: `pytest -m e2e tests/test_e2e_prometheus.py`.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e_fixtures import E2E, Prometheus, e2e, prometheus, speedrun_manifest  # noqa: F401 - fixtures
from tests.kube_emulator import wait_for

pytestmark = pytest.mark.e2e

STEPS = 100
LOG_EVERY = 10  # the gauges change every 10 steps, and the trainer logs every STEPS // 20 = 5
LOGGED_LOSS = re.compile(r"\bstep\s+(\d+)/\d+ \| loss (\d+\.\d+)")


def _label_name(key: str) -> str:
    """A label key as kubernetes_sd names it: `speedrun.dev/job` -> `speedrun_dev_job`."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def pod_targets(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What `kubernetes_sd_configs: [{role: pod}]` yields: one target per declared container port."""
    groups = []
    for pod in pods:
        meta, ip = pod["metadata"], (pod.get("status") or {}).get("podIP")
        if not ip:
            continue
        labels = {f"__meta_kubernetes_pod_label_{_label_name(k)}": v for k, v in meta["labels"].items()}
        labels |= {"__meta_kubernetes_namespace": meta["namespace"], "__meta_kubernetes_pod_name": meta["name"],
                   "__meta_kubernetes_pod_ip": ip}
        for container in pod["spec"]["containers"]:
            for port in container.get("ports") or []:
                groups.append({
                    "targets": [f"{ip}:{port['containerPort']}"],
                    "labels": {**labels, "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                               "__meta_kubernetes_pod_container_port_number": str(port["containerPort"])},
                })
    return groups


def samples(prometheus: Prometheus, expr: str) -> dict[float, float]:  # noqa: F811
    """{timestamp: value} of the raw samples of one series (a range-vector instant query)."""
    [series] = prometheus.query(expr)
    return {float(t): float(v) for t, v in series["values"]}


def test_prometheus_scrapes_the_trainer_and_the_operator(e2e: E2E, prometheus: Prometheus) -> None:  # noqa: F811
    e2e.apply(speedrun_manifest("watched", e2e.bucket, steps=STEPS, checkpoint_every=50,
                                **{"spec.train.logEvery": LOG_EVERY}))
    def addressed() -> list[dict[str, Any]]:
        pods = [p for p in e2e.kubelet.pods("watched-train") if (p.get("status") or {}).get("podIP")]
        return pods if len(pods) == 2 else []

    running = wait_for(addressed, timeout=120, what="both training pods' addresses")
    prometheus.set_targets("watched-train", pod_targets(running))
    e2e.follow("watched", "Evaluating")  # training is over; its samples are all in Prometheus

    # One trainer target survives the relabelling: the rank-0 pod's metrics port.
    rank0 = next(p for p in running if p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == "0")
    up = prometheus.query('up{job="speedrun-trainer"}')
    assert [s["metric"]["pod"] for s in up] == [rank0["metadata"]["name"]]
    port = e2e.runs.get("watched")["spec"]["metrics"]["port"]
    assert up[0]["metric"]["instance"] == f"{rank0['status']['podIP']}:{port}"

    # The train loss, read back through the query API, is the loss the trainer logged at that step.
    selector = '{job="speedrun-trainer", speedrun_job="watched"}[10m]'
    steps = samples(prometheus, f"speedrun_step{selector}")
    losses = samples(prometheus, f"speedrun_train_loss{selector}")
    scraped = {int(steps[t]): losses[t] for t in steps if t in losses and steps[t] > 0}
    logged = {int(s): float(loss) for s, loss in LOGGED_LOSS.findall(e2e.kubelet.log(rank0["metadata"]["name"]))}
    assert scraped, f"no training-time scrape: steps {steps}"
    print(f"scraped (step, train loss): {sorted(scraped.items())}")
    for step, loss in scraped.items():
        assert step % LOG_EVERY == 0 and step <= STEPS
        assert loss == pytest.approx(logged[step], abs=5e-5), (step, loss, logged[step])
    final = e2e.read_json("watched/train_summary.json")["train_loss"]
    if STEPS in scraped:  # the last scrape may or may not land before rank 0 exits
        assert scraped[STEPS] == final

    # The operator's own metrics: it is up, and it counted this job in Training.
    [operator_up] = prometheus.query('up{job="speedrun-operator"}')
    assert operator_up["value"][1] == "1"
    [training] = prometheus.query('max_over_time(speedrun_operator_jobs{phase="Training"}[10m])')
    assert training["value"][1] == "1"
