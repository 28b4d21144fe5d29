"""The Job controller half of the e2e harness (tests/process_kubelet.py runs it in its loop).

What kube-controller-manager's Job controller does for the Jobs the operator creates: pods per
completion index (Indexed) or per completion, with the index label, annotation, env var and
hostname; replacements after a back-off while failures stay within `backoffLimit`;
`podFailurePolicy` rules (FailJob, Ignore, Count; on exit codes and pod conditions);
`activeDeadlineSeconds`; `suspend`; and the status the operator reads (active, ready,
succeeded, failed, completedIndexes, SuccessCriteriaMet+Complete or FailureTarget+Failed). The
pods it creates are bound to the process kubelet's node; their phase comes from the kubelet.
Its limits are listed in tests/process_kubelet.py.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import logging
import time
from typing import Any

from tests.kube_emulator import ApiError, EmulatedCluster

log = logging.getLogger("process-kubelet")

NODE_NAME = "process-kubelet"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
JOB_NAME_KEYS = ("batch.kubernetes.io/job-name", "job-name")
CONTROLLER_UID_KEYS = ("batch.kubernetes.io/controller-uid", "controller-uid")
FINISHED = ("Succeeded", "Failed")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def label(obj: dict[str, Any], keys: tuple[str, ...] | str) -> str | None:
    labels = obj["metadata"].get("labels") or {}
    return next((labels[k] for k in ((keys,) if isinstance(keys, str) else keys) if k in labels), None)


def phase(pod: dict[str, Any]) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def _intervals(indexes: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5", the format of status.completedIndexes."""
    runs: list[list[int]] = []
    for i in indexes:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def condition(type_: str, reason: str = "", message: str = "", status: str = "True") -> dict[str, Any]:
    at = now()
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastProbeTime": at, "lastTransitionTime": at}


def _is_true(conditions: list[dict[str, Any]], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)


class JobController:
    """Reconciles the batch/v1 Jobs of one namespace (call `sync` for each Job on every pass)."""

    def __init__(self, cluster: EmulatedCluster, namespace: str, backoff_seconds: float) -> None:
        self.cluster, self.namespace, self.backoff_seconds = cluster, namespace, backoff_seconds
        self.creation_order: dict[str, int] = {}  # pod name -> n (creationTimestamp has only seconds)
        self._failures: dict[str, tuple[int, float]] = {}  # Job uid -> (counted failures, when the last was seen)

    def sync(self, job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        """One pass over one Job: its pods (all of them, by controller uid) -> new pods and status."""
        spec, status = job["spec"], job.get("status") or {}
        conditions: list[dict[str, Any]] = list(status.get("conditions") or [])
        active = [p for p in pods if phase(p) not in FINISHED and not p["metadata"].get("deletionTimestamp")]
        if _is_true(conditions, "Complete") or _is_true(conditions, "Failed"):
            self._delete_pods(active)
            return
        succeeded = [p for p in pods if phase(p) == "Succeeded"]
        failed, verdict = self._failures_and_verdict(job, [p for p in pods if phase(p) == "Failed"])
        indexed = spec.get("completionMode") == "Indexed"
        completions, parallelism = spec.get("completions", 1), spec.get("parallelism", 1)
        done = sorted({int(label(p, INDEX_KEY) or 0) for p in succeeded}) if indexed else []
        new: dict[str, Any] = {"startTime": status.get("startTime") or (None if spec.get("suspend") else now())}
        deadline = spec.get("activeDeadlineSeconds")
        if verdict is None and failed > spec.get("backoffLimit", 6):
            verdict = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        if verdict is None and deadline is not None and new["startTime"] and self._age(new["startTime"]) > deadline:
            verdict = ("DeadlineExceeded", "Job was active longer than specified deadline")
        if verdict is not None:
            self._delete_pods(active)
            active = []
            conditions += [condition("FailureTarget", *verdict), condition("Failed", *verdict)]
        elif (len(done) if indexed else len(succeeded)) >= completions:
            conditions += [
                condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
            ]
            new["completionTime"] = now()
        elif spec.get("suspend"):
            self._delete_pods(active)
            active = []
            if not _is_true(conditions, "Suspended"):
                conditions = [c for c in conditions if c["type"] != "Suspended"]
                conditions.append(condition("Suspended", "JobSuspended", "Job suspended"))
        else:
            if _is_true(conditions, "Suspended"):
                conditions = [c for c in conditions if c["type"] != "Suspended"]
                conditions.append(condition("Suspended", "JobResumed", "Job resumed", status="False"))
            if self._backoff_over(job["metadata"]["uid"], failed):
                active += self._create_missing(job, active, done, len(succeeded), indexed, completions, parallelism)
        new.update(
            active=len(active),
            ready=sum(1 for p in active if phase(p) == "Running"),
            succeeded=len(succeeded),
            failed=failed,
            conditions=conditions,
        )
        if indexed:
            new["completedIndexes"] = _intervals(done)
        if any(status.get(k) != v for k, v in new.items()):
            with contextlib.suppress(ApiError):  # 404: deleted meanwhile
                self.cluster.patch("batch/v1", "jobs", self.namespace, job["metadata"]["name"], {"status": new},
                                   status=True)

    def _failures_and_verdict(
        self, job: dict[str, Any], failed_pods: list[dict[str, Any]]
    ) -> tuple[int, tuple[str, str] | None]:
        """Failed pods that count toward backoffLimit, and (reason, message) if a FailJob rule matched."""
        rules = (job["spec"].get("podFailurePolicy") or {}).get("rules") or []
        counted = 0
        for pod in failed_pods:
            action, message = match_failure_policy(rules, pod)
            if action == "FailJob":
                return counted + 1, ("PodFailurePolicy", message)
            if action != "Ignore":
                counted += 1
        uid = job["metadata"]["uid"]
        if counted > self._failures.get(uid, (0, 0.0))[0]:
            self._failures[uid] = (counted, time.monotonic())
        return counted, None

    def _backoff_over(self, job_uid: str, failed: int) -> bool:
        if not failed:
            return True
        _, since = self._failures.get(job_uid, (0, 0.0))
        return time.monotonic() - since >= self.backoff_seconds * 2 ** (failed - 1)

    def _create_missing(
        self,
        job: dict[str, Any],
        active: list[dict[str, Any]],
        done: list[int],
        succeeded: int,
        indexed: bool,
        completions: int,
        parallelism: int,
    ) -> list[dict[str, Any]]:
        room = parallelism - len(active)
        if indexed:
            busy = {int(label(p, INDEX_KEY) or 0) for p in active}
            missing: list[int | None] = [i for i in range(completions) if i not in done and i not in busy]
        else:
            missing = [None] * (completions - succeeded - len(active))
        return [self._create_pod(job, index) for index in missing[: max(0, room)]]

    def _create_pod(self, job: dict[str, Any], index: int | None) -> dict[str, Any]:
        meta, template = job["metadata"], job["spec"]["template"]
        name, uid = meta["name"], meta["uid"]
        labels = {**(template.get("metadata") or {}).get("labels", {})}
        labels.update({k: uid for k in CONTROLLER_UID_KEYS} | {k: name for k in JOB_NAME_KEYS})
        annotations = dict((template.get("metadata") or {}).get("annotations") or {})
        spec = copy.deepcopy(template["spec"])
        spec["nodeName"] = NODE_NAME
        if index is not None:
            labels[INDEX_KEY] = annotations[INDEX_KEY] = str(index)
            spec["hostname"] = f"{name}-{index}"
            index_env = {"name": "JOB_COMPLETION_INDEX",
                         "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{INDEX_KEY}']"}}}
            for container in spec["containers"]:
                container["env"] = [index_env, *(container.get("env") or [])]
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
                 "controller": True, "blockOwnerDeletion": True}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": f"{name}-{index}-" if index is not None else f"{name}-",
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [owner],
            },
            "spec": spec,
        }
        created = self.cluster.create("v1", "pods", self.namespace, pod)
        self.creation_order[created["metadata"]["name"]] = len(self.creation_order)
        log.info(f"job {name}: created pod {created['metadata']['name']}")
        return created

    def _delete_pods(self, pods: list[dict[str, Any]]) -> None:
        for pod in pods:
            with contextlib.suppress(ApiError):
                self.cluster.delete("v1", "pods", self.namespace, pod["metadata"]["name"])

    @staticmethod
    def _age(timestamp: str) -> float:
        started = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
        return (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()


def match_failure_policy(rules: list[dict[str, Any]], pod: dict[str, Any]) -> tuple[str | None, str]:
    """(action, message) of the first podFailurePolicy rule the failed pod matches, else (None, "")."""
    meta, status = pod["metadata"], pod.get("status") or {}
    where = f"{meta['namespace']}/{meta['name']}"
    for i, rule in enumerate(rules):
        codes = rule.get("onExitCodes")
        if codes is not None:
            for cs in status.get("containerStatuses") or []:
                code = ((cs.get("state") or {}).get("terminated") or {}).get("exitCode")
                if code in (None, 0) or codes.get("containerName") not in (None, cs["name"]):
                    continue
                if (code in codes["values"]) == (codes["operator"] == "In"):
                    return rule["action"], (f"Container {cs['name']} for pod {where} failed with exit code {code} "
                                            f"matching {rule['action']} rule at index {i}")
        for want in rule.get("onPodConditions") or []:
            for cond in status.get("conditions") or []:
                if cond["type"] == want["type"] and cond.get("status") == want.get("status", "True"):
                    return rule["action"], f"Pod {where} has condition {want['type']} matching {rule['action']} " \
                                           f"rule at index {i}"
    return None, ""
