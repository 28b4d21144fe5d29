"""The e2e harness itself: the process kubelet (tests/process_kubelet.py) on plain Python commands.

No operator and no torch here, so these run in seconds: Indexed Job pods (index, hostname, env,
fieldRef, secretKeyRef, ConfigMap volume, own loopback address, DNS rewriting), the termination
message and FallbackToLogsOnError, podFailurePolicy FailJob, backoffLimit, a Secret that appears
late, deletion stopping a pod's processes, suspend/resume and activeDeadlineSeconds; how
launcher commands become local ones.
Run: `pytest -m e2e tests/test_e2e_harness.py`.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube_emulator import EmulatedCluster, wait_for
from tests.process_kubelet import ProcessKubelet, local_command

pytestmark = pytest.mark.e2e

NS = "harness"
INDEX = "batch.kubernetes.io/job-completion-index"

# Writes what the pod saw as its termination message; argv[1] is a rendezvous-style host:port.
REPORT = textwrap.dedent("""
    import json, os, socket, sys
    seen = {k: os.environ.get(k) for k in ("JOB_COMPLETION_INDEX", "POD_NAME", "POD_IP", "TOKEN", "HOSTNAME")}
    seen["argv"] = sys.argv[1:]
    seen["config"] = open(sys.argv[2]).read()
    host, port = sys.argv[1].rsplit(":", 1)
    if seen["JOB_COMPLETION_INDEX"] == "0":  # index 0 listens where index 1 was told to connect
        server = socket.create_server((host, int(port)))
        server.accept()[0].sendall(b"hello")
    else:
        for _ in range(100):
            try:
                seen["received"] = socket.create_connection((host, int(port)), timeout=5).recv(5).decode()
                break
            except OSError:
                __import__("time").sleep(0.1)
    open(os.environ["SPEEDRUN_TERMINATION_LOG"], "w").write(json.dumps(seen))
""")


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[tuple[EmulatedCluster, ProcessKubelet]]:
    with EmulatedCluster(namespaces=("default", NS)) as cluster, \
            ProcessKubelet(cluster, NS, tmp_path / "pods", interval=0.1, backoff_seconds=0.2) as kubelet:
        yield cluster, kubelet
    kubelet.check()


def job(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "python", "command": command, **spec.pop("container", {})}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": {"metadata": {"labels": {"app": name}},
                              "spec": {"restartPolicy": "Never", "containers": [container],
                                       **spec.pop("pod", {})}}, **spec},
    }


def finished(cluster: EmulatedCluster, name: str) -> dict[str, Any]:
    def condition() -> dict[str, Any] | None:
        status = (cluster.get("batch/v1", "jobs", NS, name) or {}).get("status") or {}
        done = [c for c in status.get("conditions") or [] if c["type"] in ("Complete", "Failed")]
        return status if done else None

    return wait_for(condition, timeout=30, what=f"Job {name} finished")


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def test_indexed_job_pods_get_index_address_env_volumes_and_dns(harness: tuple[EmulatedCluster, ProcessKubelet]):
    cluster, kubelet = harness
    token = base64.b64encode(b"s3cr3t").decode()
    cluster.create("v1", "secrets", NS, {"metadata": {"name": "creds"}, "data": {"TOKEN": token}})
    cluster.create("v1", "configmaps", NS, {"metadata": {"name": "cfg"}, "data": {"run.json": '{"steps": 3}'}})
    cluster.create("v1", "services", NS, {"metadata": {"name": "mesh"}, "spec": {"clusterIP": "None"}})
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "TOKEN"}}},
    ]
    manifest = job(
        "idx", ["python", "-c", REPORT, "idx-0.mesh:29400", "/etc/cfg/run.json"],
        completionMode="Indexed", completions=2, parallelism=2, backoffLimit=0,
        container={"env": env, "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}]},
        pod={"subdomain": "mesh", "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}]},
    )
    cluster.create("batch/v1", "jobs", NS, manifest)

    status = finished(cluster, "idx")
    assert (status["succeeded"], status["failed"], status["completedIndexes"]) == (2, 0, "0-1")
    assert [c["type"] for c in status["conditions"]] == ["SuccessCriteriaMet", "Complete"]
    pods = kubelet.pods("idx")
    reports = [json.loads(terminated(p)["message"]) for p in pods]
    addresses = [p["status"]["podIP"] for p in pods]
    assert len(set(addresses)) == 2 and all(a.startswith("127.0.") and a != "127.0.0.1" for a in addresses)
    for i, (pod, seen) in enumerate(zip(pods, reports, strict=True)):
        meta = pod["metadata"]
        assert meta["labels"][INDEX] == meta["annotations"][INDEX] == str(i)
        assert pod["spec"]["hostname"] == seen["HOSTNAME"] == f"idx-{i}" and pod["spec"]["subdomain"] == "mesh"
        assert seen["JOB_COMPLETION_INDEX"] == str(i) and seen["POD_NAME"] == meta["name"]
        assert seen["POD_IP"] == addresses[i] and seen["TOKEN"] == "s3cr3t"
        assert seen["config"] == '{"steps": 3}' and seen["argv"][1] != "/etc/cfg/run.json"  # mapped
        # The DNS name of index 0 became its address, on a host port standing in for 29400.
        host, port = seen["argv"][0].rsplit(":", 1)
        assert host == addresses[0] and port != "29400"
    assert reports[1]["received"] == "hello"
    assert "TOKEN" not in os.environ  # the secret reached the pod, not the test process


def test_fail_job_rule_fails_at_once_with_the_log_tail(harness: tuple[EmulatedCluster, ProcessKubelet]) -> None:
    cluster, kubelet = harness
    policy = {"rules": [{"action": "FailJob",
                         "onExitCodes": {"containerName": "main", "operator": "In", "values": [2]}}]}
    script = "import sys; print('loading', flush=True); print('spec.x: invalid', file=sys.stderr); sys.exit(2)"
    cluster.create("batch/v1", "jobs", NS, job(
        "bad", ["python", "-c", script], backoffLimit=3, podFailurePolicy=policy,
        container={"terminationMessagePolicy": "FallbackToLogsOnError"},
    ))

    status = finished(cluster, "bad")
    [pod] = kubelet.pods("bad")  # no retry
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    assert failed["message"] == (f"Container main for pod {NS}/{pod['metadata']['name']} failed with exit code 2 "
                                 "matching FailJob rule at index 0")
    assert terminated(pod)["exitCode"] == 2
    assert terminated(pod)["message"].splitlines() == ["loading", "spec.x: invalid"]


def test_failures_are_retried_up_to_the_backoff_limit(harness: tuple[EmulatedCluster, ProcessKubelet]) -> None:
    cluster, kubelet = harness
    cluster.create("batch/v1", "jobs", NS, job("flaky", ["python", "-c", "raise SystemExit(1)"], backoffLimit=1))

    status = finished(cluster, "flaky")
    assert [p["status"]["phase"] for p in kubelet.pods("flaky")] == ["Failed", "Failed"]
    assert status["failed"] == 2
    assert [(c["type"], c["reason"]) for c in status["conditions"]] == [
        ("FailureTarget", "BackoffLimitExceeded"),
        ("Failed", "BackoffLimitExceeded"),
    ]


def test_a_missing_secret_keeps_the_pod_pending_until_it_exists(harness: tuple[EmulatedCluster, ProcessKubelet]):
    cluster, kubelet = harness
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "TOKEN"}}}]
    script = "import os; open(os.environ['SPEEDRUN_TERMINATION_LOG'], 'w').write(os.environ['TOKEN'])"
    cluster.create("batch/v1", "jobs", NS, job("patient", ["python", "-c", script], container={"env": env}))

    def waiting() -> dict[str, Any] | None:
        pods = kubelet.pods("patient")
        statuses = (pods[0].get("status") or {}).get("containerStatuses") if pods else None
        return statuses[0]["state"].get("waiting") if statuses else None

    reason = wait_for(waiting, timeout=10, what="the pod waiting for its Secret")
    assert reason == {"reason": "CreateContainerConfigError", "message": 'secret "late" not found'}
    secret = {"metadata": {"name": "late"}, "data": {"TOKEN": base64.b64encode(b"ok").decode()}}
    cluster.create("v1", "secrets", NS, secret)
    assert finished(cluster, "patient")["succeeded"] == 1
    assert terminated(kubelet.pods("patient")[0])["message"] == "ok"


def test_deleting_a_job_stops_its_pods_processes(harness: tuple[EmulatedCluster, ProcessKubelet]) -> None:
    cluster, kubelet = harness
    script = "import os, time; open('pid', 'w').write(str(os.getpid())); time.sleep(60)"  # cwd: the pod's dir
    cluster.create("batch/v1", "jobs", NS, job("doomed", ["python", "-c", script]))
    pid_file = wait_for(lambda: [p for p in kubelet.workdir.glob("doomed-*/pid") if p.read_text()], timeout=10,
                        what="the pod's process running")[0]
    pid = int(pid_file.read_text())

    cluster.delete("batch/v1", "jobs", NS, "doomed")  # garbage collection takes the pod with it

    wait_for(lambda: not kubelet.pods("doomed"), timeout=10, what="the pod gone")
    wait_for(lambda: not _alive(pid), timeout=15, what="its process stopped")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_suspended_job_gets_no_pods_until_resumed(harness: tuple[EmulatedCluster, ProcessKubelet]) -> None:
    cluster, kubelet = harness
    cluster.create("batch/v1", "jobs", NS, job("later", ["python", "-c", "pass"], suspend=True))

    def suspended() -> bool:
        status = (cluster.get("batch/v1", "jobs", NS, "later") or {}).get("status") or {}
        return any(c["type"] == "Suspended" and c["status"] == "True" for c in status.get("conditions") or [])

    wait_for(suspended, timeout=10, what="the Job reported Suspended")
    assert kubelet.pods("later") == []
    cluster.patch("batch/v1", "jobs", NS, "later", {"spec": {"suspend": False}})  # what Kueue does on admission
    status = finished(cluster, "later")
    assert status["succeeded"] == 1
    assert [(c["type"], c["status"]) for c in status["conditions"]][:1] == [("Suspended", "False")]


def test_active_deadline_fails_the_job_and_stops_its_pod(harness: tuple[EmulatedCluster, ProcessKubelet]) -> None:
    cluster, kubelet = harness
    cluster.create("batch/v1", "jobs", NS, job("slow", ["python", "-c", "import time; time.sleep(60)"],
                                               activeDeadlineSeconds=1))

    status = finished(cluster, "slow")
    assert [c["reason"] for c in status["conditions"] if c["type"] == "Failed"] == ["DeadlineExceeded"]
    wait_for(lambda: not kubelet.pods("slow"), timeout=10, what="the running pod deleted")


RDZV = ["--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.2:40000", "-m", "speedrun_trainer.train"]


@pytest.mark.parametrize(
    ("command", "ip", "expected"),
    [
        (["torchrun", *RDZV], "127.0.0.2",
         [sys.executable, "-m", "torch.distributed.run", "--local-addr=127.0.0.2", "--rdzv-conf=is_host=true", *RDZV]),
        (["python", "-m", "speedrun_trainer.train.torchrun", "--rdzv-conf=timeout=60", *RDZV], "127.0.0.3",
         [sys.executable, "-m", "speedrun_trainer.train.torchrun", "--local-addr=127.0.0.3",
          "--rdzv-conf=timeout=60,is_host=false", *RDZV]),
        (["torchrun", "--standalone", "-m", "speedrun_trainer.evaluation"], "127.0.0.4",
         [sys.executable, "-m", "torch.distributed.run", "--local-addr=127.0.0.4", "--standalone", "-m",
          "speedrun_trainer.evaluation"]),
        (["python", "-m", "speedrun_trainer.evaluation"], "127.0.0.5",
         [sys.executable, "-m", "speedrun_trainer.evaluation"]),
        (["sleep", "1"], "127.0.0.6", ["sleep", "1"]),
    ],
)
def test_launcher_commands_run_here_with_the_pod_address(command: list[str], ip: str, expected: list[str]) -> None:
    assert local_command(command, ip) == expected
