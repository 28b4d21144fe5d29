"""Gang start without Kueue (all of a job's pods or none) and topology placement, on the real
scheduler and real kubelets.

The control plane runs Kubernetes' own gang scheduling (KEP-4671: the GenericWorkload and
GangScheduling feature gates, `scheduling.k8s.io/v1alpha2` served; tests/cluster/control_plane.py),
as a cluster would that turns it on; the chart's operator finds it by discovery
(`operator.gangScheduling: auto`) and gives each training attempt a PodGroup with
`gang.minCount` = the job's nodes. The capacity is an extended resource (a "slot") that only this
module's own nodes advertise, one per node: with one such node a 2-node job has room for one pod,
and without a gang the scheduler binds that one (rank 0 would start and hold its node, waiting in
the rendezvous for a peer that cannot come). With the gang neither pod binds until a second node
brings room for both, and then both bind. The pods never train (the chart's trainer image is
never pulled here: chart.py NEVER_PULLED); what the test reads is the binding, `spec.nodeName`.
Topology (`resources.placement`): nodes of this module's own labelled with a block; an exclusive
run's anti-affinity and a one-block run's affinity, as the real scheduler reads them.
Needs root; run: `pytest -m cluster tests/cluster/test_placement.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.cluster.operator_run import ServedNamespace, served_namespace
from tests.cluster.real_nodes import NodeSpec, RealNodes

pytestmark = pytest.mark.cluster

NAMESPACE = "placement-tests"
SLOT = "example.com/gang-slot"
POD_GROUPS = f"/apis/scheduling.k8s.io/v1alpha2/namespaces/{NAMESPACE}/podgroups"


def wait(predicate: Any, what: str, timeout: float = 120.0) -> Any:
    return wait_until(predicate, timeout, what, interval=0.2)


@pytest.fixture(scope="module")
def served(
    control_plane: ControlPlane, kube_nodes: RealNodes, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedNamespace]:
    with served_namespace(control_plane, NAMESPACE, tmp_path_factory.mktemp("placement")) as served:
        yield served


def bound(served: ServedNamespace, name: str) -> dict[str, str]:
    """pod name -> the node it is bound to, for the job's training pods that are bound."""
    return {p["metadata"]["name"]: p["spec"]["nodeName"] for p in served.pods(name) if p["spec"].get("nodeName")}


def unschedulable(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "PodScheduled" and c["status"] == "False" for c in conditions)


def test_a_job_without_kueue_starts_gang_wise(
    control_plane: ControlPlane, kube_nodes: RealNodes, kubectl: Kubectl, served: ServedNamespace
) -> None:
    name = "gang"
    with kube_nodes.added(NodeSpec("gang-0", resources={SLOT: 1})):
        served.apply(kubectl, served.manifest(name, **{"spec.resources.extraResources": {SLOT: 1}}))
        # The scheduler's word on both pods: one has no node with a slot; the other would fit on
        # gang-0, and only its gang keeps it from binding alone.
        decided = wait(lambda: len(p := served.pods(name)) == 2 and all(unschedulable(x) or x["spec"].get("nodeName")
                                                                        for x in p) and p,
                       "the scheduler's decision on both training pods")  # fmt: skip
        assert bound(served, name) == {}, "a pod of the gang was bound while its peer had no room"
        assert all(p["spec"]["schedulingGroup"] == {"podGroupName": f"{name}-train-0"} for p in decided)
        [group] = control_plane.admin.list(POD_GROUPS)
        assert group["metadata"]["name"] == f"{name}-train-0"
        assert group["spec"]["schedulingPolicy"] == {"gang": {"minCount": 2}}
        assert group["metadata"]["ownerReferences"][0]["name"] == f"{name}-train"

        with kube_nodes.added(NodeSpec("gang-1", resources={SLOT: 1})):
            placed = wait(lambda: len(b := bound(served, name)) == 2 and b, "both pods bound once both fit")
            assert sorted(placed.values()) == ["gang-0", "gang-1"]
            served.delete(kubectl, name)
            wait(lambda: served.pods(name) == [], "the job's pods gone before its nodes go")


BLOCK = "example.com/block"  # a topology label of this test's own nodes


def scheduler_says(served: ServedNamespace, name: str) -> str:
    """The PodScheduled=False messages of the job's pods ("" while none has one)."""
    said = [
        c.get("message", "")
        for p in served.pods(name)
        for c in (p.get("status") or {}).get("conditions") or []
        if c["type"] == "PodScheduled" and c["status"] == "False"
    ]
    return " ".join(said)


def blocks(served: ServedNamespace, name: str) -> list[str]:
    """The block of each bound pod of the job."""
    return sorted(node.split("-")[1][0] for node in bound(served, name).values())  # topo-a0 -> a


def test_topology_placement_exclusive_and_one_domain(
    control_plane: ControlPlane, kube_nodes: RealNodes, kubectl: Kubectl, served: ServedNamespace
) -> None:
    """Block a: one node of two slots; block b: two nodes of one. An exclusive run pinned to block a
    keeps a plain run out of a's free slot (its anti-affinity holds both ways) and sends a 2-node
    run to block b. Once it is gone, a 2-node run that asks for one block gets one: both pods on
    topo-a0, or one on each b node; never a node of each block, where the scheduler's default
    spreading would put many."""
    slot = {"spec.resources.extraResources": {SLOT: 1}}
    one_block = {"spec.resources.placement": {"topologyKey": BLOCK}}
    nodes = [NodeSpec("topo-a0", labels={BLOCK: "a"}, resources={SLOT: 2}),
             NodeSpec("topo-b0", labels={BLOCK: "b"}, resources={SLOT: 1}),
             NodeSpec("topo-b1", labels={BLOCK: "b"}, resources={SLOT: 1})]  # fmt: skip
    with kube_nodes.added(*nodes):
        served.apply(kubectl, served.manifest("solo", **slot, **{
            "spec.resources.nodes": 1, "spec.resources.nodeSelector": {BLOCK: "a"},
            "spec.resources.placement": {"topologyKey": BLOCK, "exclusive": True}}))  # fmt: skip
        solo = wait(lambda: bound(served, "solo") or None, "the exclusive run bound")
        assert list(solo.values()) == ["topo-a0"], solo

        served.apply(kubectl, served.manifest("other", **slot, **{
            "spec.resources.nodes": 1, "spec.resources.nodeSelector": {BLOCK: "a"}}))  # fmt: skip
        said = wait(lambda: bound(served, "other") or scheduler_says(served, "other"), "the scheduler's decision")
        assert isinstance(said, str) and "anti-affinity" in said, said  # not bound, though topo-a0 has a free slot
        served.apply(kubectl, served.manifest("pair", **slot, **one_block))
        assert wait(lambda: len(b := blocks(served, "pair")) == 2 and b, "the 2-node run bound") == ["b", "b"]

        for name in ("solo", "other", "pair"):
            served.delete(kubectl, name)
        wait(lambda: all(served.pods(n) == [] for n in ("solo", "other", "pair")), "the first runs' pods gone")
        served.apply(kubectl, served.manifest("pair2", **slot, **one_block))
        placed = wait(lambda: len(b := blocks(served, "pair2")) == 2 and b, "the one-block run bound")
        assert placed in (["a", "a"], ["b", "b"]), bound(served, "pair2")
        served.delete(kubectl, "pair2")
        wait(lambda: served.pods("pair2") == [], "the pods gone before their nodes")
