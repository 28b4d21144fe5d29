"""Manifests the CRD must refuse, checked twice: offline against the schema (tests/unit/api/test_crd.py)
and on the real kube-apiserver (tests/cluster/test_crd.py), so that both read the same table.

SCHEMA_REJECTS: (where the first problem is, manifest) that the openAPIV3Schema refuses.
CEL_REJECTS: (message, manifest, whether the pydantic model refuses it too) that only the
x-kubernetes-validations rules refuse; the schema alone admits them.
"""

from __future__ import annotations

from typing import Any

import yaml

from tests.support.helpers import EXAMPLES, with_changes


def example_docs() -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml"))]


def tiny(**changes: Any) -> dict[str, Any]:
    """tiny-cpu with dotted-path changes; None deletes the key."""
    return with_changes(yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text()), **changes)


def tpu(accelerator: str, topology: str | None, nodes: int, **changes: Any) -> dict[str, Any]:
    """tiny-cpu on a TPU slice (batchSize 128: whole micro-batches on up to 16 chips)."""
    slice_ = {"accelerator": accelerator, "topology": topology, "nodes": nodes, "procsPerNode": 1}
    resources = {f"spec.resources.{k}": v for k, v in slice_.items()}
    return tiny(**{**resources, "spec.train.batchSize": 128, **changes})


SCHEMA_REJECTS = [
    ("spec.model.activation: 'tanh' is not one of", tiny(**{"spec.model.activation": "tanh"})),
    ("spec.model.vocabSize: 0 is less than the minimum", tiny(**{"spec.model.vocabSize": 0})),
    ("spec.train.optimizer.learningRate: 0 is less than or equal", tiny(**{"spec.train.optimizer.learningRate": 0})),
    ("spec.metrics.port: 80 is less than the minimum", tiny(**{"spec.metrics.port": 80})),
    ("spec: 'data' is a required property", tiny(**{"spec.data": None})),
    ("spec.resources.placement: 'topologyKey' is a required property", tiny(**{"spec.resources.placement": {}})),
    (
        "spec.resources.placement.mode: 'strict' is not one of",
        tiny(**{"spec.resources.placement": {"topologyKey": "rack", "mode": "strict"}}),
    ),
]


CEL_REJECTS = [
    ("spec.model.hiddenDim: must be divisible by numHeads", tiny(**{"spec.model.numHeads": 3}), True),
    ("spec.model.numHeads: must be divisible by numKvHeads", tiny(**{"spec.model.numKvHeads": 3}), True),
    ("head dim) must be even", tiny(**{"spec.model.hiddenDim": 132, "spec.model.intermediateDim": 512}), True),
    ("give exactly one training horizon", tiny(**{"spec.train.tokens": 1000}), True),
    ("give exactly one training horizon", tiny(**{"spec.train.steps": None}), True),
    ("spec.resources.nodes: invalid node count", tiny(**{"spec.resources.minNodes": 1}), True),
    ("minNodes and maxNodes go together", tiny(**{"spec.resources.nodes": None, "spec.resources.minNodes": 1}), True),
    (
        "must not exceed maxNodes",
        tiny(**{"spec.resources.nodes": None, "spec.resources.minNodes": 2, "spec.resources.maxNodes": 1}),
        True,
    ),
    ("unknown accelerator", tiny(**{"spec.resources.accelerator": "nvidia-b200"}), True),
    # A name the table lacks is a GPU (with deviceFlops); one that says TPU or CPU is refused.
    ("unknown accelerator", tiny(**{"spec.resources.accelerator": "tpu-v9", "spec.resources.deviceFlops": 1e15}), True),
    ("unknown accelerator", tiny(**{"spec.resources.accelerator": "cpu-x", "spec.resources.deviceFlops": 1e12}), True),
    ("spec.resources.topology: required for a TPU", tpu("tpu-v5e", None, 1), True),
    ("spec.resources.topology: only a TPU", tiny(**{"spec.resources.topology": "2x2"}), True),
    (
        "spec.resources.procsPerNode: must be 1 for a TPU",
        tpu("tpu-v5e", "2x2", 1, **{"spec.resources.procsPerNode": 4}),
        True,
    ),
    ("spec.resources.topology: tpu-v5e takes", tpu("tpu-v5e", "3x3", 1), True),
    ("spec.resources.topology: tpu-v5p takes AxBxC", tpu("tpu-v5p", "4x4", 4), True),
    ("spec.resources.nodes: must be the host count", tpu("tpu-v6e", "4x4", 2), True),
    ("required for a CORE target", tiny(**{"spec.target": {"metric": "core", "value": 0.25}}), True),
    ("at most 52 characters", tiny(**{"metadata.name": "x" * 53}), True),
    ("must start with a letter", tiny(**{"metadata.name": "7up"}), True),
    ("every key must be a C identifier", tiny(**{"spec.env": {"RANK": "1"}}), True),
    ("every key must be a C identifier", tiny(**{"spec.env": {"SPEEDRUN_RUN_ID": "x"}}), True),
    ("every key must be a C identifier", tiny(**{"spec.env": {"NCCL-DEBUG": "INFO"}}), True),
    ("every key must be an extended resource name", tiny(**{"spec.resources.extraResources": {"ib": 1}}), True),
    (
        "every key must be an extended resource name",
        tiny(**{"spec.resources.extraResources": {"kubernetes.io/ib": 1}}),
        True,
    ),
    ("must be a label key: [prefix/]name", tiny(**{"spec.resources.placement": {"topologyKey": "a b"}}), True),
    (
        "placement.exclusive: Kueue's topology-aware scheduling",
        tiny(
            **{"spec.resources.placement": {"topologyKey": "rack", "exclusive": True}, "spec.runPolicy.queueName": "q"}
        ),
        True,
    ),
]
