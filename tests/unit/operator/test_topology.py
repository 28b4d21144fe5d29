"""Topology-aware placement of the training pods (`spec.resources.placement`, builders/placement.py):
the affinity without Kueue, Kueue's annotations with it, and the spec's checks. The scheduler's
side is tests/cluster/test_placement.py."""

from __future__ import annotations

from typing import Any

import pytest

from speedrun_api.manifest import SpecError, parse_job
from speedrun_operator import builders
from speedrun_operator.builders import placement
from speedrun_operator.settings import OperatorSettings
from tests.support.helpers import tiny_manifest

SETTINGS = OperatorSettings(default_storage_uri="s3://bucket/runs")
BLOCK = "cloud.google.com/gce-topology-block"


def template(attempt: int = 0, **changes: Any) -> dict[str, Any]:
    doc = tiny_manifest(**changes)
    doc["metadata"]["namespace"] = "team"
    return builders.build_train_job(parse_job(doc), SETTINGS, attempt=attempt)["spec"]["template"]


def test_required_placement_is_an_affinity_to_the_attempts_own_pods() -> None:
    pod = template(3, **{"spec.resources.placement": {"topologyKey": BLOCK}})
    own = {"speedrun.dev/job": "test-tiny", "speedrun.dev/role": "train", "speedrun.dev/attempt": "3"}
    assert pod["spec"]["affinity"] == {
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": own}, "topologyKey": BLOCK}
            ]
        }
    }
    assert set(own.items()) <= set(pod["metadata"]["labels"].items())  # the pods match their own term
    assert not (pod["metadata"].get("annotations") or {}).keys() & {placement.KUEUE_REQUIRED_TOPOLOGY}


def test_preferred_placement_is_a_weighted_term() -> None:
    pod = template(**{"spec.resources.placement": {"topologyKey": BLOCK, "mode": "preferred"}})
    [term] = pod["spec"]["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["weight"] == 100 and term["podAffinityTerm"]["topologyKey"] == BLOCK


def test_exclusive_placement_keeps_every_other_runs_pods_out_of_the_domain() -> None:
    pod = template(**{"spec.resources.placement": {"topologyKey": BLOCK, "exclusive": True}})
    elsewhere, here = pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    runs = {"key": "speedrun.dev/job", "operator": "Exists"}
    assert elsewhere == {
        "labelSelector": {"matchExpressions": [runs]},
        "namespaceSelector": {
            "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["team"]}]
        },
        "topologyKey": BLOCK,
    }
    assert here == {
        "labelSelector": {
            "matchExpressions": [runs, {"key": "speedrun.dev/job", "operator": "NotIn", "values": ["test-tiny"]}]
        },
        "topologyKey": BLOCK,
    }  # no namespaceSelector: the pod's own namespace
    assert "podAffinity" in pod["spec"]["affinity"]


def test_the_overlays_affinity_is_kept_beside_the_placements() -> None:
    node = {"nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]}]}
    pod = template(**{
        "spec.resources.placement": {"topologyKey": BLOCK},
        "spec.podOverrides.affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": node}},
    })  # fmt: skip
    assert set(pod["spec"]["affinity"]) == {"nodeAffinity", "podAffinity"}


@pytest.mark.parametrize(
    ("mode", "annotation"), [("required", "podset-required-topology"), ("preferred", "podset-preferred-topology")]
)
def test_a_queued_job_asks_kueue_for_the_topology_and_sets_no_pod_affinity(mode: str, annotation: str) -> None:
    pod = template(
        **{"spec.resources.placement": {"topologyKey": BLOCK, "mode": mode}, "spec.runPolicy.queueName": "q"}
    )
    assert pod["metadata"]["annotations"][f"kueue.x-k8s.io/{annotation}"] == BLOCK
    assert "affinity" not in pod["spec"]


def test_no_placement_no_affinity() -> None:
    pod = template()
    assert "affinity" not in pod["spec"] and not (pod["metadata"].get("annotations") or {})


@pytest.mark.parametrize(
    ("placement", "queue", "says"),
    [
        ({"topologyKey": "rack one"}, None, "spec.resources.placement.topologyKey: 'rack one' is not a label key"),
        ({"topologyKey": BLOCK, "mode": "packed"}, None, "spec.resources.placement.mode"),
        ({}, None, "spec.resources.placement.topologyKey"),
        (
            {"topologyKey": BLOCK, "exclusive": True},
            "q",
            "spec.resources.placement.exclusive: Kueue's topology-aware scheduling (runPolicy.queueName) has no"
            " exclusive placement",
        ),
    ],
)
def test_a_bad_placement_is_one_line_naming_the_field(placement: dict[str, Any], queue: str | None, says: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_job(tiny_manifest(**{"spec.resources.placement": placement, "spec.runPolicy.queueName": queue}))
    assert any(says in line for line in refused.value.lines), refused.value.lines
