"""Kueue's topology-aware scheduling places a queued job's pods in one block, on real nodes.

What a cluster needs for `spec.resources.placement` with a queue (docs/operator.md "Topology"),
made here as an administrator would: nodes labelled with the topology's levels (this module's own
real nodes, labelled `example.com/block` a or b, and the pool label the flavor selects), a Kueue
`Topology` with the levels [example.com/block, kubernetes.io/hostname], a ResourceFlavor naming
it (`topologyName`) with `nodeLabels` that select those nodes, and a ClusterQueue of that flavor
with a LocalQueue. Kueue (v0.17, tests/cluster/kueue.py; TopologyAwareScheduling is beta and on by
default) reads the pod set's `kueue.x-k8s.io/podset-required-topology` annotation the operator puts
on the training pod template, picks a block with room for both pods at admission, starts the Job
with its pods gated (`kueue.x-k8s.io/topology`), and its TopologyUngater lifts the gate with node
selectors for the chosen domain. The capacity is an extended resource only these nodes
advertise: block a has two nodes of one slot each, block b one node of one slot, so only block a
holds the 2-node run (the scheduler alone, given the flavor's node selector, would spread the pods
over both blocks), and a second such run, with quota enough, waits in the queue with Kueue's
reason until the first is gone. The pods never train (NEVER_PULLED); what the test reads is
Kueue's assignment, the pods' node selectors and their bindings.
Needs root; run: `pytest -m cluster tests/cluster/test_kueue_tas.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster import kueue_queues as q
from tests.cluster.control_plane import ControlPlane, wait_until
from tests.cluster.kubectl import Kubectl
from tests.cluster.kueue import Kueue
from tests.cluster.operator_run import ServedNamespace, served_namespace
from tests.cluster.real_nodes import NodeSpec, RealNodes

pytestmark = pytest.mark.cluster

NAMESPACE = "kueue-tas-tests"
BLOCK, HOSTNAME = "example.com/block", "kubernetes.io/hostname"
POOL = {"example.com/kueue-pool": "tas"}  # the flavor's nodeLabels: this module's nodes only
SLOT = "example.com/tas-slot"
TOPOLOGY, FLAVOR, CLUSTER_QUEUE, QUEUE = "kueue-tas-blocks", "kueue-tas-flavor", "kueue-tas-cq", "tas-queue"
QUOTA = {"cpu": 8, "memory": "16Gi", SLOT: 4}  # room for two runs: the nodes, not the quota, decide
NODES = (
    NodeSpec("tas-a0", labels={BLOCK: "a", **POOL}, resources={SLOT: 1}),
    NodeSpec("tas-a1", labels={BLOCK: "a", **POOL}, resources={SLOT: 1}),
    NodeSpec("tas-b0", labels={BLOCK: "b", **POOL}, resources={SLOT: 1}),
)


def wait(predicate: Any, what: str, timeout: float = 180.0) -> Any:
    return wait_until(predicate, timeout, what, interval=0.5)


@pytest.fixture(scope="module")
def served(
    control_plane: ControlPlane, kube_nodes: RealNodes, kueue: Kueue, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedNamespace]:
    cp = control_plane
    queues = [q.local_queue(QUEUE, NAMESPACE, CLUSTER_QUEUE), q.cluster_queue(CLUSTER_QUEUE, FLAVOR, QUOTA),
              q.resource_flavor(FLAVOR, POOL, TOPOLOGY), q.topology(TOPOLOGY, [BLOCK, HOSTNAME])]  # fmt: skip
    cp.namespace(NAMESPACE)
    q.make(cp, *reversed(queues))
    with served_namespace(cp, NAMESPACE, tmp_path_factory.mktemp("kueue-tas")) as served:
        yield served
    q.delete(cp, *queues)


def bound(served: ServedNamespace, name: str) -> dict[str, str]:
    """pod name -> node, for the job's training pods that are bound."""
    return {p["metadata"]["name"]: p["spec"]["nodeName"] for p in served.pods(name) if p["spec"].get("nodeName")}


def placed_run(served: ServedNamespace, kubectl: Kubectl, name: str) -> None:
    served.apply(kubectl, served.manifest(name, **{
        "spec.runPolicy": {"queueName": QUEUE},
        "spec.resources.extraResources": {SLOT: 1},
        "spec.resources.placement": {"topologyKey": BLOCK}}))  # fmt: skip


def test_kueue_places_both_pods_in_one_block(
    control_plane: ControlPlane, kube_nodes: RealNodes, kubectl: Kubectl, served: ServedNamespace
) -> None:
    cp, name = control_plane, "blocked"
    with kube_nodes.added(*NODES):
        placed_run(served, kubectl, name)
        job = wait(lambda: served.job(name), "the training Job")
        template = job["spec"]["template"]
        assert template["metadata"]["annotations"]["kueue.x-k8s.io/podset-required-topology"] == BLOCK
        assert "podAffinity" not in (template["spec"].get("affinity") or {}), "Kueue places a queued job, not affinity"

        # Kueue's admission: one pod set, both pods in domains of block a.
        workload = wait(lambda: q.is_true(w := q.workload_of(cp, job), "Admitted") and w, "the Workload admitted")
        [assignment] = workload["status"]["admission"]["podSetAssignments"]
        topology = assignment["topologyAssignment"]
        levels = topology["levels"]
        assert levels[-1] == HOSTNAME and set(levels) <= {BLOCK, HOSTNAME}, topology
        domains = topology_domains(topology)
        assert sum(count for _, count in domains) == 2, topology
        assert sorted(values[levels.index(HOSTNAME)] for values, _ in domains) == ["tas-a0", "tas-a1"], topology

        # The Job as Kueue started it: its pods gated (the gate TopologyUngater lifts), the flavor's labels.
        started = wait(lambda: (j := served.job(name) or {})["spec"]["suspend"] is False and j, "the Job unsuspended")
        pod_spec = started["spec"]["template"]["spec"]
        assert q.TOPOLOGY_GATE in [g["name"] for g in pod_spec.get("schedulingGates") or []], pod_spec
        assert pod_spec["nodeSelector"] == POOL, pod_spec
        # The pods: ungated by Kueue with its node selector for the domain, bound in block a.
        placed = wait(lambda: len(b := bound(served, name)) == 2 and b, "both pods bound")
        assert sorted(placed.values()) == ["tas-a0", "tas-a1"], placed
        for pod in served.pods(name):
            selector = pod["spec"].get("nodeSelector") or {}
            assert selector.get(HOSTNAME) == pod["spec"]["nodeName"], selector  # Kueue's choice, per pod
            assert POOL.items() <= selector.items(), selector  # the flavor's nodeLabels
            assert q.TOPOLOGY_GATE not in [g["name"] for g in pod["spec"].get("schedulingGates") or []]
            assert pod["metadata"]["annotations"].get("kueue.x-k8s.io/workload") == workload["metadata"]["name"]

        # A second such run: quota enough, but no block has room for both its pods while the first
        # holds block a. It waits in the queue with Kueue's word, and gets block a once that is free.
        placed_run(served, kubectl, "second")
        second = wait(lambda: served.job("second"), "the second run's Job")
        reserved = wait(lambda: q.condition(q.workload_of(cp, second), "QuotaReserved").get("message"),
                        "Kueue's word on the second run")  # fmt: skip
        assert "topology" in reserved and not q.is_true(q.workload_of(cp, second), "Admitted"), reserved
        training = lambda: served.condition("second", "Training").get("message", "")
        wait(
            lambda: served.phase("second") == "Queued" and reserved in training(),
            "the second run Queued, quoting Kueue",
        )
        assert served.pods("second") == [] and (served.job("second") or {})["spec"]["suspend"] is True
        served.delete(kubectl, name)
        placed = wait(lambda: len(b := bound(served, "second")) == 2 and b, "the second run bound once block a is free")
        assert sorted(placed.values()) == ["tas-a0", "tas-a1"], placed
        served.delete(kubectl, "second")
        wait(lambda: served.pods(name) == served.pods("second") == [], "the pods gone before their nodes")


def topology_domains(topology: dict[str, Any]) -> list[tuple[list[str], int]]:
    """(values per level, pod count) of each domain of a v1beta2 TopologyAssignment (its slices:
    each level's values and the pod counts either `universal` to the slice or `individual`)."""
    domains = []
    for piece in topology["slices"]:
        n = piece["domainCount"]
        columns = []
        for level in piece["valuesPerLevel"]:
            if "universal" in level:
                columns.append([level["universal"]] * n)
            else:
                one = level["individual"]
                columns.append([f"{one.get('prefix', '')}{root}{one.get('suffix', '')}" for root in one["roots"]])
        counts = piece["podCounts"]
        per_domain = [counts["universal"]] * n if "universal" in counts else counts["individual"]
        domains += [([column[i] for column in columns], per_domain[i]) for i in range(n)]
    return domains
