"""`spec.podOverrides` rows of the admission-parity tables (tests/cluster/test_admission.py) and
the overlay with every field (tests/cluster/test_pod_overrides.py, tests/unit/test_pod_overrides.py).

OVERLAY_REFUSED: (field the refusal names, manifest) that the CRD and the model both refuse: the
operator's own keys, volumes and env vars the apiserver's pod validation would refuse.
OVERLAY_ADMITTED: manifests both admit, whose training and eval Jobs the apiserver admits too.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.support.helpers import tiny_manifest

# Every field of the overlay, and the pass-through fields of spec.resources that go with it
# (host networking, extra device resources such as RDMA NICs or EFA adapters).
EVERY_FIELD: dict[str, Any] = {
    "labels": {"team": "nlp", "example.com/cost-center": "ml-42"},
    "annotations": {"example.com/owner": "nlp-team", "cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
    "imagePullSecrets": [{"name": "registry-cred"}],
    "serviceAccountName": "trainer-identity",
    "automountServiceAccountToken": True,
    "env": [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token", "optional": True}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}},
        {"name": "NCCL_IB_HCA", "value": "mlx5"},
    ],
    "volumes": [
        {"name": "datasets", "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": "extra-config", "configMap": {"name": "extra", "optional": True}},
    ],
    "volumeMounts": [
        {"name": "datasets", "mountPath": "/datasets"},
        {"name": "extra-config", "mountPath": "/etc/extra", "readOnly": True},
    ],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}
                ]
            }
        },
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 10,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"team": "other"}},
                    },
                }
            ]
        },
    },
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}],
    "securityContext": {"supplementalGroups": [4242], "fsGroupChangePolicy": "OnRootMismatch"},
    "containerSecurityContext": {"capabilities": {"add": ["IPC_LOCK"]}},  # RDMA pins memory
    "shmSize": "256Mi",
}
EVERY_RESOURCE: dict[str, Any] = {"hostNetwork": True, "extraResources": {"rdma/hca": 1, "vpc.amazonaws.com/efa": 32}}


def overlay(name: str = "admission", **fields: Any) -> dict[str, Any]:
    return tiny_manifest(**{"metadata.name": name, "spec.podOverrides": copy.deepcopy(fields)})


def every_field(name: str = "admission") -> dict[str, Any]:
    doc = overlay(name, **EVERY_FIELD)
    doc["spec"]["resources"].update(copy.deepcopy(EVERY_RESOURCE))
    return doc


def _volume(**source: Any) -> list[dict[str, Any]]:
    return [{"name": "data", **source}]


FIELD_REF = {"fieldPath": "spec.nodeName"}
OVERLAY_REFUSED = [
    ("spec.podOverrides.labels", overlay(labels={"speedrun.dev/job": "other"})),
    ("spec.podOverrides.labels", overlay(labels={"app.kubernetes.io/instance": "x"})),
    ("spec.podOverrides.labels", overlay(labels={"team": "not a value"})),
    ("spec.podOverrides.annotations", overlay(annotations={"bad key!": "x"})),
    ("spec.podOverrides.annotations", overlay(annotations={"batch.kubernetes.io/job-tracking": ""})),
    ("spec.podOverrides.serviceAccountName", overlay(serviceAccountName="Trainer_SA")),
    ("spec.podOverrides.imagePullSecrets", overlay(imagePullSecrets=[{"name": "Bad Secret"}])),
    ("spec.podOverrides.volumes", overlay(volumes=_volume(emptyDir={}, hostPath={"path": "/data"}))),
    ("spec.podOverrides.volumes", overlay(volumes=_volume())),
    ("spec.podOverrides.volumes", overlay(volumes=[{"name": "dshm", "emptyDir": {}}])),
    ("spec.podOverrides.volumes", overlay(volumes=[{"name": "Data_1", "emptyDir": {}}])),
    ("spec.podOverrides.volumes", overlay(volumes=_volume(emptyDir={"sizeLimit": "lots"}))),
    ("spec.podOverrides.volumes", overlay(volumes=_volume(nfs={"path": "/export"}))),
    ("spec.podOverrides.volumes", overlay(volumes=_volume(emptyDir={}, notASource={}))),
    ("spec.podOverrides.volumeMounts", overlay(volumeMounts=[{"name": "data", "mountPath": "/data"}])),
    (
        "spec.podOverrides.volumeMounts",
        overlay(volumes=_volume(emptyDir={}), volumeMounts=[{"name": "data", "mountPath": "/dev/shm"}]),
    ),
    (
        "spec.podOverrides.volumeMounts",
        overlay(volumes=_volume(emptyDir={}), volumeMounts=[{"name": "data", "mountPath": "/d", "subPath": "../x"}]),
    ),
    ("spec.podOverrides.env", overlay(env=[{"name": "MASTER_ADDR", "value": "10.0.0.1"}])),
    ("spec.podOverrides.env", overlay(env=[{"name": "A", "value": "1", "valueFrom": {"fieldRef": FIELD_REF}}])),
    ("spec.podOverrides.env", overlay(env=[{"name": "A", "valueFrom": {}}])),
    ("spec.podOverrides.securityContext", overlay(securityContext={"runAsUser": -1})),
    ("spec.podOverrides.securityContext", overlay(securityContext={"seccompProfile": {"type": "Localhost"}})),
    ("spec.podOverrides.containerSecurityContext", overlay(containerSecurityContext={"privileged": True})),
    (
        "spec.podOverrides.containerSecurityContext",
        overlay(containerSecurityContext={"capabilities": {"add": ["SYS_ADMIN"]}}),
    ),
    ("spec.podOverrides.containerSecurityContext", overlay(containerSecurityContext={"procMount": "Unmasked"})),
    (
        "spec.podOverrides.containerSecurityContext",
        overlay(containerSecurityContext={"appArmorProfile": {"type": "Localhost"}}),
    ),
    ("spec.podOverrides.securityContext", overlay(securityContext={"windowsOptions": {"hostProcess": True}})),
    ("spec.podOverrides.tolerations", overlay(tolerations=[{"key": "gpu", "operator": "Exists", "value": "x"}])),
    ("spec.podOverrides.shmSize", overlay(shmSize="0")),
    ("spec.podOverrides.shmSize", overlay(shmSize="1 Gi")),
]

OVERLAY_ADMITTED = [
    every_field(),
    overlay(volumes=_volume(persistentVolumeClaim={"claimName": "datasets", "readOnly": True}),
            volumeMounts=[{"name": "data", "mountPath": "/data", "subPath": "shards/v1", "readOnly": True}]),
    overlay(volumes=_volume(csi={"driver": "gcsfuse.csi.storage.gke.io", "volumeAttributes": {"bucketName": "b"}})),
    overlay(env=[{"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}}]),
    overlay(securityContext={"seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/train.json"}}),
    overlay(shmSize="16Gi", annotations={"k8s.v1.cni.cncf.io/networks": "rdma-net"}),
    overlay(labels={"app.kubernetes.io/part-of": "llm-research"}),
    overlay(containerSecurityContext={"privileged": True, "allowPrivilegeEscalation": True},
            securityContext={"runAsNonRoot": False, "runAsUser": 0}),
]  # fmt: skip
