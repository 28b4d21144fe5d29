"""Two operator replicas on the real control plane: one active (the Lease holder), one standby.

The chart is installed with `helm install` (tests/cluster/chart.py) and two replicas run as
their own processes with its ServiceAccount's token (tests/cluster/operator_process.py), as two
pods of the Deployment would. The active replica is SIGKILLed (no cleanup, the Lease is not
released, as when its node vanishes); the standby must take the Lease over and carry on, and no
child is ever created twice: the apiserver's audit log holds exactly one successful create per
child. The training pods go to the real nodes and wait there on an image no registry holds:
nothing trains. Run: `pytest -m cluster tests/cluster/test_ha.py -s` (prints the measured hand-over).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from speedrun_trainer.cli.launch import free_port
from tests.cluster.chart import NEVER_PULLED, install_chart
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.cluster.operator_process import OperatorProcess, operator_process
from tests.cluster.real_nodes import RealNodes
from tests.support.helpers import tiny_manifest

pytestmark = pytest.mark.cluster

NAMESPACE = "speedruns-ha"
SRJ_PATH = f"/apis/speedrun.dev/v1alpha1/namespaces/{NAMESPACE}/speedrunjobs"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"
# Short Lease timings so the test is quick; the chart's defaults are client-go's (15/10/2 s).
LEASE_DURATION = 6
HA_VALUES = {
    "operator.defaultStorageUri": "s3://speedrun-test/runs",
    "operator.resyncInterval": "5",
    "leaderElection.enabled": "true",
    "leaderElection.leaseDuration": str(LEASE_DURATION),
    "leaderElection.renewDeadline": "4",
    "leaderElection.retryPeriod": "1",
    **NEVER_PULLED,  # the pods wait in ErrImagePull (chart.py)
}
# The stated bound: the standby holds the Lease within this many seconds of the SIGKILL
# (lease duration + retry period when the machine is idle; generous for shared CPUs).
HANDOVER_BOUND = 60.0
CHILDREN = {"configmaps": "/api/v1", "services": "/api/v1", "jobs": "/apis/batch/v1"}


def wait(predicate: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    return wait_until(predicate, timeout, what, interval=0.2)


def children(cp: ControlPlane, name: str) -> dict[str, dict[str, str]]:
    """name -> uid of each child kind of SpeedrunJob `name`."""
    selector = f"speedrun.dev/job={name}"
    return {plural: {o["metadata"]["name"]: o["metadata"]["uid"]
                     for o in cp.admin.list(f"{base}/namespaces/{NAMESPACE}/{plural}", labels=selector)}
            for plural, base in CHILDREN.items()}  # fmt: skip


def all_children(cp: ControlPlane, name: str) -> dict[str, dict[str, str]] | None:
    found = children(cp, name)
    return found if all(found.values()) else None


def lease(cp: ControlPlane) -> dict[str, Any]:
    """The chart's Lease (named as the release's objects: SPEEDRUN_OPERATOR_LEASE_NAME)."""
    found = cp.admin.list(LEASES)
    assert len(found) <= 1, found
    return found[0] if found else {}


def holder(cp: ControlPlane) -> str:
    """The replica (pod name) holding the Lease: identities are `<pod name>_<random>`."""
    lease_ = lease(cp)
    return str((lease_.get("spec") or {}).get("holderIdentity") or "").rsplit("_", 1)[0]


def successful_creates(audit_log: Path, user: str) -> dict[str, int]:
    """`<resource>/<name>` -> count of creates by `user` in NAMESPACE the apiserver answered 201."""
    counts: dict[str, int] = {}
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if (event.get("verb") != "create" or event.get("stage") != "ResponseComplete"
                or event["user"].get("username") != user or ref.get("namespace") != NAMESPACE
                or (event.get("responseStatus") or {}).get("code") != 201):  # fmt: skip
            continue
        key = f"{ref.get('resource')}/{ref.get('name', '?')}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def apply(kubectl: Kubectl, name: str) -> None:
    doc = tiny_manifest()
    doc["metadata"] = {"name": name, "namespace": NAMESPACE}
    kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(doc))


def reconciled(replica: OperatorProcess) -> bool:
    """Whether kopf ran one of our resource handlers in this replica."""
    return "Handler 'create_children' succeeded" in replica.log()


def test_killing_the_active_replica_hands_over_without_duplicating_children(
    control_plane: ControlPlane, kube_nodes: RealNodes, kubectl: Kubectl, tmp_path: Path
) -> None:
    cp = control_plane
    release = install_chart(cp, "speedrun-ha", NAMESPACE, HA_VALUES)
    cp.namespace(NAMESPACE)

    def replica(name: str) -> Any:
        return operator_process(cp, release, tmp_path, name, SPEEDRUN_OPERATOR_METRICS_PORT=str(free_port()),
                                SPEEDRUN_OPERATOR_LIVENESS=f"http://127.0.0.1:{free_port()}/healthz")  # fmt: skip

    with replica("replica-a") as a, replica("replica-b") as b:
        apply(kubectl, "ha-one")
        first = wait(lambda: all_children(cp, "ha-one"), "the children of ha-one")
        active, standby = (a, b) if holder(cp) == a.name else (b, a)
        assert holder(cp) == active.name and reconciled(active) and not reconciled(standby), (
            f"lease holder {holder(cp)!r}; {a.name} reconciled: {reconciled(a)}, {b.name}: {reconciled(b)}"
        )

        killed_at = time.monotonic()
        active.kill()
        wait(lambda: holder(cp) == standby.name, "the standby to take the Lease", timeout=HANDOVER_BOUND)
        handover = time.monotonic() - killed_at
        print(f"\nhand-over: the standby held the Lease {handover:.1f} s after the SIGKILL "
              f"(lease duration {LEASE_DURATION} s)")  # fmt: skip
        assert lease(cp)["spec"]["leaseTransitions"] >= 1

        apply(kubectl, "ha-two")
        wait(lambda: all_children(cp, "ha-two"), "the children of ha-two from the new active replica")
        # The children may come from the new replica's resync before its create handler has run
        # (both reconcile): wait for the handler rather than assume the order.
        wait(lambda: reconciled(standby), "the new active replica's create handler")
        # The new active replica resumed ha-one: the same children, none re-created.
        wait(lambda: "ha-one" in standby.log(), "the new active replica to resume ha-one")
        assert children(cp, "ha-one") == first
        assert standby.forbidden() == [] and active.forbidden() == []

        user = f"system:serviceaccount:{NAMESPACE}:{release.service_account}"
        expected = [f"{kind}/{name}{suffix}" for name in ("ha-one", "ha-two")
                    for kind, suffix in (("configmaps", "-run"), ("services", ""), ("jobs", "-train"))]  # fmt: skip
        # The audit backend writes in batches (every second): wait until it has them all.
        creates = wait(lambda: (lambda c: c if all(k in c for k in expected) else None)(
            successful_creates(cp.audit_log, user)), "the creates in the audit log")  # fmt: skip
        assert {k: creates[k] for k in expected} == dict.fromkeys(expected, 1), creates
        cp.drain(NAMESPACE, SRJ_PATH, timeout=120)
