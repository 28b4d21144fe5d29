"""Side effects that hold, and scrapes that never stall the resync (issue 25, Deliver 9).

Control plane only (apiserver, controller-manager, scheduler; no kubelets, so no real-node lock):
the operator is the chart's, run in this process under its RBAC (tests/cluster/operator_run.py).
- A real admission control refuses the operator's Job patches: a ValidatingAdmissionPolicy (the
  apiserver's own CEL admission) denies any change of a Job's `activeDeadlineSeconds` or
  `ttlSecondsAfterFinished` in this namespace, as a webhook or a policy engine could for a while.
  The audit log shows the refusals; once the binding is deleted the next resync applies what the
  statuses still owe: the stop of a training Job whose pods never started (the Job controller then
  ends it: DeadlineExceeded) with its TTL, and the TTL of a training Job that failed on its own.
- A scrape target that never finishes answering (it accepts, sends a status line, then one header
  byte a second: every read returns before a socket timeout) holds one scrape; no cluster here
  enforces NetworkPolicy, so this real socket stands for the target a default-deny policy hides.
  A second job's start-up deadline, which only the periodic resync can notice (no Job event comes
  when nothing happens), still fails it while that connection is held.
- The shard cache's size limit reaches the pods the Job controller creates, as the apiserver
  admits it: derived from the tokens a job reads, or the job's own `spec.data.cacheSize`.
Run: `pytest -m cluster tests/cluster/test_side_effects.py` (as root).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from speedrun_api.manifest import parse_job
from speedrun_operator.builders.shard_cache import cache_size_limit
from tests.cluster.control_plane import ControlPlane, host_address, wait_until
from tests.cluster.kubectl import Kubectl
from tests.cluster.operator_run import ServedNamespace, served_namespace

pytestmark = pytest.mark.cluster

NAMESPACE = "side-effects-tests"
POLICY = "speedrun-test-refuse-job-stops"
TTL = 3600  # long: the Jobs must still be there to be read back
JOBS = "/apis/batch/v1/namespaces/" + NAMESPACE + "/jobs"
# The pods stay unbound, so no kubelet of the session's real nodes (if another module started
# them) reports on a pod whose status this module plays (make_ready).
NO_NODE = {"spec.resources.nodeSelector": {"speedrun.test/no-such-node": "true"}}


def wait(predicate: Any, what: str, timeout: float = 180.0) -> Any:
    return wait_until(predicate, timeout, what, interval=0.2)


@pytest.fixture(scope="module")
def served(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedNamespace]:
    control_plane.namespace(NAMESPACE)
    with served_namespace(control_plane, NAMESPACE, tmp_path_factory.mktemp("operator")) as served:
        yield served


def _opt(field: str) -> str:
    """The field unchanged by the update (CEL: an absent optional field reads as -1)."""
    new, old = (f"(has({o}.spec.{field}) ? {o}.spec.{field} : -1)" for o in ("object", "oldObject"))
    return f"{new} == {old}"


REFUSE = {
    "apiVersion": "admissionregistration.k8s.io/v1",
    "kind": "ValidatingAdmissionPolicy",
    "metadata": {"name": POLICY},
    "spec": {
        "failurePolicy": "Fail",
        "matchConstraints": {"resourceRules": [
            {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["jobs"]}]},
        "validations": [{"expression": f"{_opt('activeDeadlineSeconds')} && {_opt('ttlSecondsAfterFinished')}",
                         "reason": "Invalid", "message": "refused for the test: Job stops and TTLs"}],
    },
}  # fmt: skip
BINDING = {
    "apiVersion": "admissionregistration.k8s.io/v1",
    "kind": "ValidatingAdmissionPolicyBinding",
    "metadata": {"name": POLICY},
    "spec": {"policyName": POLICY, "validationActions": ["Deny"],
             "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}}},
}  # fmt: skip
ADMISSION = "/apis/admissionregistration.k8s.io/v1"


def refusing(cp: ControlPlane) -> None:
    """Install the policy and wait until the apiserver enforces it (a dry-run patch of a probe Job)."""
    cp.admin.create(f"{ADMISSION}/validatingadmissionpolicies", REFUSE)
    cp.admin.create(f"{ADMISSION}/validatingadmissionpolicybindings", BINDING)
    probe = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "probe"},
             "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [
                 {"name": "c", "image": "registry.test/none:1"}]}}}}  # fmt: skip
    cp.admin.create(JOBS, probe)

    def enforced() -> bool:
        try:
            cp.admin.request("PATCH", f"{JOBS}/probe", {"spec": {"ttlSecondsAfterFinished": 1}},
                             query={"dryRun": "All"}, content_type="application/merge-patch+json")  # fmt: skip
        except Exception as err:
            return "refused for the test" in str(err)
        return False

    wait(enforced, "the ValidatingAdmissionPolicy enforced")
    cp.admin.delete(f"{JOBS}/probe")


def refused_patches(cp: ControlPlane, user: str, job: str) -> int:
    """The audit log's PATCHes of Job `job` by `user` that admission refused (422)."""
    count = 0
    for line in cp.audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if (event.get("stage") == "ResponseComplete" and event.get("verb") == "patch"
                and (event.get("user") or {}).get("username") == user and ref.get("resource") == "jobs"
                and ref.get("name") == job and (event.get("responseStatus") or {}).get("code") == 422):  # fmt: skip
            count += 1
    return count


def job_spec(cp: ControlPlane, name: str) -> dict[str, Any]:
    return (cp.admin.get(f"{JOBS}/{name}") or {}).get("spec") or {}


def job_failed_with(cp: ControlPlane, name: str, reason: str) -> bool:
    conditions = ((cp.admin.get(f"{JOBS}/{name}") or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Failed" and c["status"] == "True" and c.get("reason") == reason for c in conditions)


def test_a_refused_stop_and_ttl_are_applied_on_a_later_pass(
    served: ServedNamespace, control_plane: ControlPlane, kubectl: Kubectl
) -> None:
    cp = control_plane
    user_name = f"system:serviceaccount:{NAMESPACE}:{served.operator.release.service_account}"
    refusing(cp)
    try:
        # No node runs the pods: "stuck" fails its start-up deadline, "deadline" hits its own
        # activeDeadlineSeconds (the Job controller fails the Job, a failure no restart retries).
        served.apply(kubectl, served.manifest("stuck", **{"spec.runPolicy.startupDeadlineSeconds": 4,
                                                          "spec.runPolicy.ttlSecondsAfterFinished": TTL}))  # fmt: skip
        deadline = {"spec.runPolicy.activeDeadlineSeconds": 4, "spec.runPolicy.maxRestarts": 0,
                    "spec.runPolicy.ttlSecondsAfterFinished": TTL}  # fmt: skip
        served.apply(kubectl, served.manifest("deadline", **deadline))
        wait(lambda: served.phase("stuck") == "Failed" and served.phase("deadline") == "Failed", "both jobs Failed")
        assert served.condition("stuck", "Failed")["reason"] == "StartupDeadlineExceeded"
        assert served.condition("deadline", "Failed")["reason"] == "DeadlineExceeded"
        # The operator tried: the apiserver refused its patch of each training Job (the audit log
        # is written in batches, every second).
        wait(lambda: refused_patches(cp, user_name, "stuck-train") and refused_patches(cp, user_name, "deadline-train"),
             "the refused patches in the audit log")  # fmt: skip
        assert job_spec(cp, "stuck-train").get("activeDeadlineSeconds") is None
        assert job_spec(cp, "deadline-train").get("ttlSecondsAfterFinished") is None
    finally:
        cp.admin.delete(f"{ADMISSION}/validatingadmissionpolicybindings/{POLICY}")
        cp.admin.delete(f"{ADMISSION}/validatingadmissionpolicies/{POLICY}")
    # The refusal is over: a later pass (the resync of finished jobs) applies what is still owed.
    wait(lambda: job_spec(cp, "stuck-train").get("activeDeadlineSeconds") == 4, "the stop applied")
    assert job_spec(cp, "stuck-train").get("ttlSecondsAfterFinished") == TTL
    wait(lambda: job_failed_with(cp, "stuck-train", "DeadlineExceeded"), "the Job controller ended the stopped Job")
    wait(lambda: job_spec(cp, "deadline-train").get("ttlSecondsAfterFinished") == TTL, "the TTL applied")
    served.delete(kubectl, "stuck")
    served.delete(kubectl, "deadline")


class Trickle:
    """An HTTP target that never finishes answering: a status line, then a header byte a second."""

    def __init__(self) -> None:
        self.server = socket.create_server(("0.0.0.0", 0))
        self.port = self.server.getsockname()[1]
        self.open = 0  # connections being held now
        self.accepted = 0
        self._done = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.server.settimeout(0.5)
        while not self._done.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        with self._lock:
            self.open, self.accepted = self.open + 1, self.accepted + 1
        try:
            conn.recv(65536)  # the request
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not self._done.wait(1.0):
                conn.sendall(b"a")
        except OSError:
            pass  # the scraper gave up and closed
        finally:
            conn.close()
            with self._lock:
                self.open -= 1

    def close(self) -> None:
        self._done.set()
        self.server.close()


def make_ready(cp: ControlPlane, pod: dict[str, Any], ip: str) -> None:
    """What a kubelet would report of a running, ready pod (no kubelet runs here)."""
    now = "2026-01-01T00:00:00Z"
    status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": now,
              "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now},
                             {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}]}  # fmt: skip
    meta = pod["metadata"]
    cp.admin.patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status", {"status": status})


def test_a_stalled_scrape_does_not_delay_another_jobs_resync(
    served: ServedNamespace, control_plane: ControlPlane, kubectl: Kubectl
) -> None:
    trickle = Trickle()
    try:
        served.apply(
            kubectl,
            served.manifest("a-stalled", **{"spec.metrics.port": trickle.port, "spec.resources.nodes": 1, **NO_NODE}),
        )
        pods = wait(lambda: served.pods("a-stalled"), "a-stalled's training pod")
        make_ready(control_plane, pods[0], host_address())
        wait(lambda: served.phase("a-stalled") == "Training", "a-stalled Training")
        wait(lambda: trickle.open, "a scrape of a-stalled held by the target")
        # Only a resync notices a start-up deadline passing: no Job event comes while pods wait.
        served.apply(kubectl, served.manifest("b-waiting", **{"spec.runPolicy.startupDeadlineSeconds": 3, **NO_NODE}))
        wait(lambda: served.phase("b-waiting") == "Failed", "b-waiting Failed at its start-up deadline", timeout=120)
        assert served.condition("b-waiting", "Failed")["reason"] == "StartupDeadlineExceeded"
        # Every scrape is cut off at its deadline and tried again later, not left to hang.
        wait(lambda: trickle.accepted >= 2, "a-stalled scraped again")
        assert served.phase("a-stalled") == "Training"
    finally:
        trickle.close()
    served.delete(kubectl, "a-stalled")
    served.delete(kubectl, "b-waiting")


def cache_limit(pod: dict[str, Any]) -> str | None:
    [cache] = [v for v in pod["spec"]["volumes"] if v["name"] == "cache"]
    return cache["emptyDir"].get("sizeLimit")


def test_the_shard_cache_size_limit_reaches_the_pods(served: ServedNamespace, kubectl: Kubectl) -> None:
    derived = served.manifest("cache-derived", **{"spec.resources.nodes": 1})
    sized = served.manifest("cache-sized", **{"spec.resources.nodes": 1, "spec.data.cacheSize": "3Gi"})
    for doc in (derived, sized):
        served.apply(kubectl, doc)
    pod = wait(lambda: (served.pods("cache-derived") or [None])[0], "cache-derived's training pod")
    assert cache_limit(pod) == cache_size_limit(parse_job(derived)) == "9Gi"
    pod = wait(lambda: (served.pods("cache-sized") or [None])[0], "cache-sized's training pod")
    assert cache_limit(pod) == "3Gi"
    served.delete(kubectl, "cache-derived")
    served.delete(kubectl, "cache-sized")
