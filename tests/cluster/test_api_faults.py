"""The operator against a network that fails it: a leader partitioned mid-reconcile, and an
apiserver that throttles (429 + Retry-After) or loses the answer to a create (503).

Both run the chart's operator as its own process (operator_process.py) reaching the real
apiserver through a real TLS proxy (api_proxy.py) that the test partitions or has answer; only
the control plane is needed (no nodes: the pods stay Pending, nothing trains).

The partition: replica A leads, replica B waits; A is cut off from the apiserver just as it
sends its first write of a new SpeedrunJob (the ConfigMap create), B takes the Lease, and then
the partition heals. The apiserver's audit log must hold no write of A (its own token: the
credential id of each audit event) received at or after its Lease expired (the Lease's last
renewTime A wrote + leaseDurationSeconds). Before the renew deadline bounded every call, A's
held create went through on healing, after B had taken over.
Run: `pytest -m cluster tests/cluster/test_api_faults.py -s`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from speedrun_trainer.cli.launch import free_port
from tests.cluster.api_proxy import ApiProxy, Request
from tests.cluster.chart import NEVER_PULLED, install_chart
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.cluster.operator_process import OperatorProcess, operator_process
from tests.support.helpers import tiny_manifest

pytestmark = pytest.mark.cluster

WRITES = ("create", "update", "patch", "delete", "deletecollection")
CHILDREN = {"configmaps": ("/api/v1", "-run"), "services": ("/api/v1", ""), "jobs": ("/apis/batch/v1", "-train")}
BASE_VALUES = {"operator.defaultStorageUri": "s3://speedrun-test/runs", **NEVER_PULLED}
# Short Lease timings (as test_ha.py): A must stop 2 s (6 - 4) before B may take over.
LEADER_VALUES = {**BASE_VALUES, "operator.resyncInterval": "5", "leaderElection.enabled": "true",
                 "leaderElection.leaseDuration": "6", "leaderElection.renewDeadline": "4",
                 "leaderElection.retryPeriod": "1"}  # fmt: skip


def wait(predicate: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    return wait_until(predicate, timeout, what, interval=0.2)


def apply(kubectl: Kubectl, namespace: str, name: str) -> None:
    doc = tiny_manifest()
    doc["metadata"] = {"name": name, "namespace": namespace}
    kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(doc))


def all_children(cp: ControlPlane, namespace: str, name: str) -> bool:
    return all(cp.admin.get(f"{base}/namespaces/{namespace}/{plural}/{name}{suffix}")
               for plural, (base, suffix) in CHILDREN.items())  # fmt: skip


def lease_spec(cp: ControlPlane, namespace: str) -> dict[str, Any]:
    found = cp.admin.list(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases")
    return (found[0].get("spec") or {}) if found else {}


def credential_id(token: str) -> str:
    """What the audit log names a ServiceAccount token by: `JTI=<its jti claim>`."""
    payload = token.split(".")[1]
    return "JTI=" + json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]


def audit_events(cp: ControlPlane, replica: OperatorProcess, namespace: str) -> list[dict[str, Any]]:
    """The audit events (ResponseComplete) of requests `replica` made into `namespace`."""
    jti = credential_id(replica.token)
    found = []
    for line in cp.audit_log.read_text().splitlines():
        event = json.loads(line)
        extra = (event.get("user") or {}).get("extra") or {}
        ids = extra.get("authentication.kubernetes.io/credential-id") or []
        if (event.get("stage") == "ResponseComplete" and jti in ids
                and (event.get("objectRef") or {}).get("namespace") == namespace):  # fmt: skip
            found.append(event)
    return found


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def describe(event: dict[str, Any]) -> str:
    ref = event.get("objectRef") or {}
    code = (event.get("responseStatus") or {}).get("code")
    return f"{event['requestReceivedTimestamp']} {event['verb']} {ref.get('resource')}/{ref.get('name', '')} -> {code}"


def replica(cp: ControlPlane, release: Any, workdir: Path, name: str, server: str | None = None) -> Any:
    return operator_process(cp, release, workdir, name, server=server,
                            SPEEDRUN_OPERATOR_METRICS_PORT=str(free_port()),
                            SPEEDRUN_OPERATOR_LIVENESS=f"http://127.0.0.1:{free_port()}/healthz")  # fmt: skip


def test_a_leader_partitioned_mid_reconcile_writes_nothing_after_its_lease_expired(
    control_plane: ControlPlane, kubectl: Kubectl, tmp_path: Path
) -> None:
    cp, namespace = control_plane, "speedruns-partition"
    release = install_chart(cp, "speedrun-partition", namespace, LEADER_VALUES)
    cp.namespace(namespace)
    proxy = ApiProxy(cp, "partition-proxy")
    try:
        with replica(cp, release, tmp_path, "replica-a", server=proxy.url) as a:
            wait(lambda: lease_spec(cp, namespace).get("holderIdentity", "").startswith("replica-a_"), "A to lead")
            with replica(cp, release, tmp_path, "replica-b") as b:
                wait(lambda: "standby: Lease" in b.log(), "B on standby")
                # A is cut off as it sends its first write for the new job: mid-reconcile.
                proxy.partition_when = lambda r: r.method == "POST" and r.path.endswith(f"/{namespace}/configmaps")
                apply(kubectl, namespace, "part-one")
                wait(lambda: proxy.partitioned_at is not None, "A's create of the ConfigMap (the partition)")
                last_of_a: dict[str, Any] = {}

                def taken_over() -> bool:
                    spec = lease_spec(cp, namespace)
                    holder = str(spec.get("holderIdentity") or "")
                    if holder.startswith("replica-a_"):
                        last_of_a.update(spec)
                    return holder.startswith("replica-b_")

                wait(taken_over, "B to take the Lease", timeout=120)
                proxy.heal()
                healed = datetime.now(timezone.utc)
                expiry = when(last_of_a["renewTime"]) + timedelta(seconds=int(last_of_a["leaseDurationSeconds"]))
                wait(lambda: all_children(cp, namespace, "part-one"), "the children")
                # The audit backend writes in batches: wait until it holds B's requests (its Lease
                # renewals) from 2 s after the healing, so what A sent on healing is in it too.
                flushed = healed + timedelta(seconds=2)
                wait(lambda: any(when(e["requestReceivedTimestamp"]) > flushed for e in audit_events(cp, b, namespace)),
                     "B's later requests in the audit log")  # fmt: skip
                wait(lambda: not a.alive, "A to exit")
                writes_of_a = [e for e in audit_events(cp, a, namespace) if e["verb"] in WRITES]
                late = [describe(e) for e in writes_of_a if when(e["requestReceivedTimestamp"]) >= expiry]
                print(f"\nA's Lease expired at {expiry.isoformat()}; A's writes: "
                      f"{[describe(e) for e in writes_of_a]}; A's log tail: {a.log()[-600:]}")  # fmt: skip
                assert writes_of_a, "no write of A in the audit log: the credential id does not identify it"
                assert late == [], f"A wrote after its Lease expired at {expiry.isoformat()}: {late}"
                assert "leader election lost" in a.log()
                cp.drain(namespace, f"/apis/speedrun.dev/v1alpha1/namespaces/{namespace}/speedrunjobs", timeout=120)
    finally:
        proxy.close()


def test_the_operator_waits_out_429_and_adopts_a_create_whose_answer_was_lost(
    control_plane: ControlPlane, kubectl: Kubectl, tmp_path: Path
) -> None:
    cp, namespace = control_plane, "speedruns-throttled"
    release = install_chart(cp, "speedrun-throttled", namespace, {**BASE_VALUES, "operator.resyncInterval": "30"})
    cp.namespace(namespace)
    proxy = ApiProxy(cp, "throttle-proxy")
    once: set[str] = set()

    def first(key: str) -> bool:
        new = key not in once
        once.add(key)
        return new

    def answer(r: Request) -> tuple[int, dict[str, str]] | None:
        if r.method == "POST" and r.path.endswith(f"/{namespace}/configmaps") and first("429"):
            return 429, {"Retry-After": "2"}  # throttled: the apiserver did not handle it
        if r.method == "GET" and r.path.endswith(f"/{namespace}/jobs/throttled-train") and first("503"):
            return 503, {}  # unavailable, no Retry-After: backoff
        return None

    def answer_after(r: Request) -> tuple[int, dict[str, str]] | None:
        if r.method == "POST" and r.path.endswith(f"/{namespace}/services") and first("lost"):
            return 504, {}  # the create landed, its answer is lost
        return None

    proxy.answer, proxy.answer_after = answer, answer_after

    try:
        with replica(cp, release, tmp_path, "throttled", server=proxy.url) as op:

            def creates() -> list[str] | None:
                found = sorted(describe(e).split(" ", 1)[1] for e in audit_events(cp, op, namespace)
                               if e["verb"] == "create" and e["objectRef"].get("resource") in CHILDREN)  # fmt: skip
                return found if len(found) >= 4 else None

            apply(kubectl, namespace, "throttled")
            wait(lambda: all_children(cp, namespace, "throttled"), "the children")
            wait(lambda: "Handler 'create_children' succeeded" in op.log(), "the create handler")
            # Read before the drain: a reconcile racing the garbage collector may create a child again.
            audited, log = wait(creates, "the creates in the audit log"), op.log()
            configmaps = proxy.seen("POST", f"/{namespace}/configmaps")
            services = proxy.seen("POST", f"/{namespace}/services")
            cp.drain(namespace, f"/apis/speedrun.dev/v1alpha1/namespaces/{namespace}/speedrunjobs", timeout=120)
        print(f"\nConfigMap creates: {[(r.answered, round(r.at - configmaps[0].at, 2)) for r in configmaps]}; "
              f"Service creates: {[r.answered for r in services]}")  # fmt: skip
        assert [r.answered for r in configmaps] == [429, 201]
        assert configmaps[1].at - configmaps[0].at >= 2.0, "the retry did not wait as Retry-After asked"
        assert [r.answered for r in services] == [504, 409]  # the retry found it: adopted, not failed
        for problem in ("TooManyRequests", "ServiceUnavailable", "the proxy answered", "failed with an exception"):
            assert problem not in log, f"{problem!r} reached the operator's log:\n{log[-3000:]}"
        # One create of each child by the operator, the Service's twice (landed, then 409).
        assert audited == sorted(
            f"create {plural}/throttled{suffix} -> {code}" for plural, (_, suffix) in CHILDREN.items()
            for code in ((201, 409) if plural == "services" else (201,)))  # fmt: skip
    finally:
        proxy.close()
