"""The Job controller and kubelet, played by the test, one explicit step at a time.

`ScriptedJobController` creates a Job's pods and writes pod and Job status through the API of an
`EmulatedCluster` (tests/kube_emulator.py), so the operator sees ordinary watch events. On the
control-plane tier the real Job controller and the node agent (tests/cluster/) do this work.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.kube_emulator import EmulatedCluster
from tests.kube_emulator import now_rfc3339 as _now

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
JOB_NAME = "batch.kubernetes.io/job-name"


class ScriptedJobController:
    """Creates the pods of a Job and writes pod and Job status, as the test says when.

    Real clusters do this in the Job controller and the kubelet; here each call is one step of
    their work, written through the API so the operator sees ordinary watch events.
    """

    def __init__(self, cluster: EmulatedCluster) -> None:
        self.cluster = cluster

    def job(self, namespace: str, name: str) -> dict[str, Any]:
        job = self.cluster.get("batch/v1", "jobs", namespace, name)
        if job is None:
            raise AssertionError(f"Job {namespace}/{name} does not exist")
        return job

    def pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        return self.cluster.list("v1", "pods", namespace, {"job-name": job_name})

    def start_pods(self, namespace: str, job_name: str, pod_ip: str = "127.0.0.1") -> list[dict[str, Any]]:
        """Create one Running pod per completion index (Indexed Jobs) or one pod."""
        job = self.job(namespace, job_name)
        spec = job["spec"]
        template = spec["template"]
        indexed = spec.get("completionMode") == "Indexed"
        pods = []
        for index in range(spec.get("parallelism", 1)):
            labels = {**template["metadata"].get("labels", {}), "job-name": job_name, JOB_NAME: job_name}
            pod_spec = copy.deepcopy(template["spec"])
            if indexed:
                labels[COMPLETION_INDEX] = str(index)
                pod_spec["hostname"] = f"{job_name}-{index}"
            owner = {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": job_name,
                "uid": job["metadata"]["uid"],
                "controller": True,
            }
            pod = self.cluster.create(
                "v1",
                "pods",
                namespace,
                {
                    "metadata": {"generateName": f"{job_name}-{index}-", "labels": labels, "ownerReferences": [owner]},
                    "spec": pod_spec,
                },
            )
            container = pod_spec["containers"][0]["name"]
            running = {"name": container, "ready": True, "state": {"running": {"startedAt": _now()}}}
            status = {"phase": "Running", "podIP": pod_ip, "startTime": _now(), "containerStatuses": [running]}
            pods.append(self._pod_status(namespace, pod, status))
        self._job_status(namespace, job_name, {"active": len(pods), "ready": len(pods), "startTime": _now()})
        return pods

    def succeed(self, namespace: str, job_name: str, termination_message: str | None = None) -> None:
        """Every pod exits 0 (rank 0 leaves `termination_message`); the Job completes."""
        pods = self.pods(namespace, job_name)
        for pod in pods:
            self._terminate(namespace, pod, 0, "Completed", termination_message)
        now = _now()
        conditions = [
            {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
            {"type": "Complete", "status": "True", "lastTransitionTime": now},
        ]
        status = {"active": 0, "ready": 0, "succeeded": len(pods), "completionTime": now, "conditions": conditions}
        self._job_status(namespace, job_name, status)

    def fail_pod(self, namespace: str, job_name: str, exit_code: int = 1, message: str = "") -> None:
        """One pod fails and the Job controller replaces it (counts toward backoffLimit)."""
        pods = self.pods(namespace, job_name)
        self._terminate(namespace, pods[0], exit_code, "Error", message)
        failed = self.job(namespace, job_name).get("status", {}).get("failed", 0) + 1
        self._job_status(namespace, job_name, {"failed": failed})

    def fail(self, namespace: str, job_name: str, reason: str, message: str, exit_code: int = 1, log: str = "") -> None:
        """The Job fails for good (BackoffLimitExceeded, PodFailurePolicy, DeadlineExceeded)."""
        pods = self.pods(namespace, job_name)
        if pods:
            self._terminate(namespace, pods[0], exit_code, "Error", log)
        now = _now()
        conditions = [
            {
                "type": "FailureTarget",
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": now,
            },
            {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastTransitionTime": now},
        ]
        failed = self.job(namespace, job_name).get("status", {}).get("failed", 0) + (1 if pods else 0)
        self._job_status(namespace, job_name, {"active": 0, "ready": 0, "failed": failed, "conditions": conditions})

    def sync_suspension(self, namespace: str, job_name: str) -> None:
        """A suspended Job's pods are deleted and it reports Suspended (the Job controller)."""
        job = self.job(namespace, job_name)
        if not job["spec"].get("suspend"):
            return
        for pod in self.pods(namespace, job_name):
            self.cluster.delete("v1", "pods", namespace, pod["metadata"]["name"])
        suspended = {"type": "Suspended", "status": "True", "reason": "JobSuspended", "lastTransitionTime": _now()}
        self._job_status(namespace, job_name, {"active": 0, "ready": 0, "conditions": [suspended]})

    def admit(self, namespace: str, job_name: str) -> None:
        """What Kueue does when the queue has room: unsuspend the Job."""
        self.cluster.patch("batch/v1", "jobs", namespace, job_name, {"spec": {"suspend": False}})

    def _terminate(self, namespace: str, pod: dict[str, Any], code: int, reason: str, message: str | None) -> None:
        container = pod["spec"]["containers"][0]["name"]
        terminated: dict[str, Any] = {"exitCode": code, "reason": reason, "finishedAt": _now()}
        if message:
            terminated["message"] = message
        state = {"name": container, "ready": False, "state": {"terminated": terminated}}
        phase = "Succeeded" if code == 0 else "Failed"
        self._pod_status(namespace, pod, {"phase": phase, "containerStatuses": [state]})

    def _pod_status(self, namespace: str, pod: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        name = pod["metadata"]["name"]
        return self.cluster.patch("v1", "pods", namespace, name, {"status": status}, status=True)

    def _job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.cluster.patch("batch/v1", "jobs", namespace, name, {"status": status}, status=True)
