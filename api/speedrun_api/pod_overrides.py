"""`spec.podOverrides`: what a cluster needs added to the run's pods that the spec does not model.

Users of Kubeflow Trainer and JobSet pass pod-template fields through to their pods (Trainer v2's
`podTemplateOverrides`, JobSet's whole `template`): pull secrets, a service account for workload
identity, volumes (datasets on a PVC, a CSI driver), labels and annotations other controllers
read, env from Secrets, affinity, tolerations, a security context, a bigger `/dev/shm`. Here it is
one typed field instead of a raw pod template, because the operator owns most of the pod (the
trainer container, its command, the rendezvous env, the labels that select it): keys that would
break it are refused with a line naming the field, and every field is checked when the
SpeedrunJob is admitted, not when its Job is created. Kubernetes' own types (volumes, mounts,
affinity, security context, env vars) carry Kubernetes' schema (k8s_schemas.py); the rules the
apiserver checks in Go (a volume has exactly one source, names are DNS labels, a mount names a
volume, ...) have a Python check and a CEL twin, so `speedrun plan` and `kubectl apply` agree.

The chart's `trainer.podOverrides` is the same model (operator-wide defaults, checked when the
operator starts); `merge` puts a job's own overlay over it. Host networking and extra device
resources are `spec.resources.hostNetwork` and `spec.resources.extraResources` (the training pods
only): they change the launch too (host ports, `--local-addr`), so they are not pass-through.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from speedrun_api import k8s_schemas as ks
from speedrun_api import kubeformats as kf
from speedrun_api import run_env
from speedrun_api.pod_security import ContainerSecurityContext, SecurityContext
from speedrun_api.spec_types import Base

# The operator's own: its pods' volumes and mount paths (operator builders/common.py), and the
# label/annotation prefixes whose keys it, the Job controller or Kueue set and select on.
RESERVED_VOLUMES = ("config", "dshm", "tmp", "cache")
RESERVED_MOUNT_PATHS = ("/etc/speedrun", "/dev/shm", "/tmp", "/var/cache/speedrun")
RESERVED_KEY_PREFIXES = ("speedrun.dev/", "batch.kubernetes.io/", "kueue.x-k8s.io/")
RESERVED_KEYS = (
    *(f"app.kubernetes.io/{k}" for k in ("name", "instance", "component", "managed-by")),  # operator labels.py
    "job-name",
    "controller-uid",
)
MAX_ITEMS = 32
MAX_META = 64
# 64 annotations of at most this many characters (and 317-character keys) stay under the
# apiserver's 256 KiB total for a pod's annotations (apimachinery ValidateAnnotationsSize).
MAX_ANNOTATION_VALUE = 3072
DNS_LABEL_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
VOLUME_SOURCES = tuple(k for k in ks.schema("Volume")["properties"] if k != "name")
ENV_SOURCES = tuple(ks.schema("EnvVar")["properties"]["valueFrom"]["properties"])
RESERVED_HELP = (
    "speedrun.dev/*, batch.kubernetes.io/*, kueue.x-k8s.io/*, app.kubernetes.io/{name,instance,component,managed-by},"
    " job-name, controller-uid"
)


def _reserved_key_cel(var: str) -> str:
    prefixes = " || ".join(f"{var}.startsWith('{p}')" for p in RESERVED_KEY_PREFIXES)
    keys = ", ".join(f"'{k}'" for k in RESERVED_KEYS)
    return f"!({prefixes} || {var} in [{keys}])"


def _in(var: str, values: tuple[str, ...]) -> str:
    return f"({var} in [{', '.join(repr(v) for v in values)}])"


def _one_of(fields: tuple[str, ...]) -> str:
    return f"[{', '.join(f'has(self.{f})' for f in fields)}].filter(x, x).size() == 1"


def key_problem(key: str) -> str | None:
    if problem := kf.label_key_problem(key):
        return problem
    if key.startswith(RESERVED_KEY_PREFIXES) or key in RESERVED_KEYS:
        return f"{key} is the operator's (reserved: {RESERVED_HELP})"
    return None


def _keys(mapping: dict[str, str]) -> dict[str, str]:
    problems = [p for key in mapping if (p := key_problem(key))]
    if problems:
        raise ValueError("; ".join(problems))
    return mapping


def _meta_field(what: str) -> Any:
    return Field(
        {},
        max_length=MAX_META,
        description=f"{what} of the run's pods (not the operator's own keys: {RESERVED_HELP})",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"self.all(k, {kf.label_key_cel('k')} && {_reserved_key_cel('k')})",
                    "message": f"every key must be {kf.LABEL_KEY_HELP}, not the operator's ({RESERVED_HELP})",
                }
            ]
        },
    )


# ---- Kubernetes types, with the Go rules the apiserver adds to their schema -----------------------


def _keyed_list(item: dict[str, Any], key: str, description: str, max_items: int = MAX_ITEMS) -> dict[str, Any]:
    """An array of `item` that the apiserver merges by `key` (a list-map, as Kubernetes' own)."""
    return {
        "type": "array",
        "maxItems": max_items,
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": [key],
        "description": description,
    }


def _volume_schema() -> dict[str, Any]:
    item = ks.schema("Volume")
    item["properties"]["name"]["maxLength"] = 63
    item["x-kubernetes-validations"] = [
        {
            "rule": f"self.name.matches('{DNS_LABEL_RE}') && !{_in('self.name', RESERVED_VOLUMES)}",
            "message": f"name must be a DNS label (lowercase, digits, '-'), not the operator's {RESERVED_VOLUMES}",
        },
        {"rule": _one_of(VOLUME_SOURCES), "message": "give exactly one volume source (emptyDir, csi, ...)"},
    ]
    return _keyed_list(
        item, "name", "Extra volumes of the run's pods (Kubernetes Volumes); mount them with volumeMounts"
    )


def _mount_schema() -> dict[str, Any]:
    item = ks.schema("VolumeMount")
    for key, length in (("name", 63), ("mountPath", 4096), ("subPath", 4096), ("subPathExpr", 4096)):
        item["properties"][key]["maxLength"] = length
    item["properties"]["mountPropagation"]["enum"] = ["None", "HostToContainer"]
    item["properties"]["recursiveReadOnly"]["enum"] = ["Disabled", "IfPossible", "Enabled"]
    item["x-kubernetes-validations"] = [
        {
            "rule": f"self.mountPath.startsWith('/') && !self.mountPath.contains(':') && "
            f"!{_in('self.mountPath', RESERVED_MOUNT_PATHS)}",
            "message": f"mountPath must be an absolute path without ':', not the operator's {RESERVED_MOUNT_PATHS}",
        },
        {
            "rule": "!has(self.subPath) || (!self.subPath.startsWith('/') && "
            "!self.subPath.split('/').exists(p, p == '..'))",
            "message": "subPath must be a relative path without '..'",
        },
        {
            "rule": "!has(self.recursiveReadOnly) || self.recursiveReadOnly == 'Disabled' || "
            "(has(self.readOnly) && self.readOnly && (!has(self.mountPropagation) || self.mountPropagation == 'None'))",
            "message": "recursiveReadOnly needs readOnly: true and no mountPropagation",
        },
    ]
    return _keyed_list(item, "mountPath", "Where the trainer (and evaluator) container mounts the overlay's volumes")


def _env_schema() -> dict[str, Any]:
    item = ks.schema("EnvVar")
    item["properties"]["name"]["maxLength"] = run_env.MAX_ENV_NAME
    item["properties"]["value"]["maxLength"] = run_env.MAX_ENV_VALUE
    item["properties"]["valueFrom"]["x-kubernetes-validations"] = [
        {"rule": _one_of(ENV_SOURCES), "message": f"give exactly one of {', '.join(ENV_SOURCES)}"}
    ]
    item["x-kubernetes-validations"] = [
        {
            "rule": run_env.env_cel("self.name"),
            "message": f"name must be {run_env.ENV_HELP} that the launchers do not set (RANK, SPEEDRUN_*, ...)",
        },
        {"rule": "!(has(self.value) && has(self.valueFrom))", "message": "give value or valueFrom, not both"},
    ]
    description = (
        "Env vars of the run's containers as Kubernetes writes them (valueFrom: Secrets, ConfigMaps, the pod's"
        " fields); names as spec.env's, and not also in spec.env"
    )
    return _keyed_list(item, "name", description, run_env.MAX_ENV)


def _affinity_schema() -> dict[str, Any]:
    node = ks.schema("Affinity")
    node["description"] = "Node and pod (anti-)affinity of the run's pods (Kubernetes Affinity)"
    return node


def _duplicates(items: list[dict[str, Any]], key: str, where: str) -> list[str]:
    seen: set[str] = set()
    out = []
    for i, item in enumerate(items):
        if item.get(key) in seen:
            out.append(f"{where}[{i}].{key}: duplicate value {item[key]!r}")
        seen.add(item.get(key))
    return out


def _volume_problems(volumes: list[dict[str, Any]]) -> list[str]:
    out = _duplicates(volumes, "name", "volumes")
    for i, v in enumerate(volumes):
        if not re.match(DNS_LABEL_RE, v["name"]) or v["name"] in RESERVED_VOLUMES:
            out.append(f"volumes[{i}].name: {v['name']!r} must be a DNS label, not the operator's {RESERVED_VOLUMES}")
        if len(set(v) & set(VOLUME_SOURCES)) != 1:
            out.append(f"volumes[{i}]: give exactly one volume source (emptyDir, csi, ...)")
    return out


def _mount_problems(mounts: list[dict[str, Any]]) -> list[str]:
    out = _duplicates(mounts, "mountPath", "volumeMounts")
    for i, m in enumerate(mounts):
        path, sub = m["mountPath"], m.get("subPath")
        if not path.startswith("/") or ":" in path or path in RESERVED_MOUNT_PATHS:
            out.append(f"volumeMounts[{i}].mountPath: {path!r} must be absolute, without ':', not the operator's")
        if sub is not None and (sub.startswith("/") or ".." in sub.split("/")):
            out.append(f"volumeMounts[{i}].subPath: must be a relative path without '..'")
        recursive = m.get("recursiveReadOnly", "Disabled")
        if recursive != "Disabled" and (not m.get("readOnly") or m.get("mountPropagation", "None") != "None"):
            out.append(f"volumeMounts[{i}].recursiveReadOnly: needs readOnly: true and no mountPropagation")
    return out


def _env_problems(env: list[dict[str, Any]]) -> list[str]:
    out = _duplicates(env, "name", "env")
    for i, var in enumerate(env):
        if problem := run_env.env_name_problem(var["name"]):
            out.append(f"env[{i}].name: {problem}")
        if "value" in var and "valueFrom" in var:
            out.append(f"env[{i}]: give value or valueFrom, not both")
        if "valueFrom" in var and len(var["valueFrom"]) != 1:
            out.append(f"env[{i}].valueFrom: give exactly one of {', '.join(ENV_SOURCES)}")
    return out


Volumes = ks.checked(list[dict[str, Any]], "volumes", _volume_schema(), _volume_problems)
VolumeMounts = ks.checked(list[dict[str, Any]], "volumeMounts", _mount_schema(), _mount_problems)
EnvVars = ks.checked(list[dict[str, Any]], "env", _env_schema(), _env_problems)
Affinity = ks.checked(dict[str, Any], "affinity", _affinity_schema())


class PullSecret(Base):
    name: kf.DnsSubdomain


MOUNTS_NAME_VOLUMES = "every volumeMounts[].name must name one of volumes"


class PodOverrides(Base):
    """The overlay; docs/manifest.md "podOverrides" says which pods take which field."""

    labels: Annotated[dict[str, kf.LabelValue], AfterValidator(_keys)] = _meta_field("Labels")
    annotations: Annotated[dict[str, Annotated[str, Field(max_length=MAX_ANNOTATION_VALUE)]], AfterValidator(_keys)] = (
        _meta_field("Annotations")
    )
    image_pull_secrets: list[PullSecret] = Field(
        [], max_length=16, description="Secrets the kubelet pulls the trainer image with (a private registry)"
    )
    service_account_name: kf.DnsSubdomain | None = Field(
        None, description="The pods' ServiceAccount (workload identity: IRSA, GKE); over the chart's"
    )
    automount_service_account_token: bool | None = Field(
        None, description="Mount the ServiceAccount's token (the operator's default: no)"
    )
    env: EnvVars = Field([])
    volumes: Volumes = Field([])
    volume_mounts: VolumeMounts = Field([])
    affinity: Affinity | None = None
    tolerations: list[kf.Toleration] = Field(
        [], max_length=kf.MAX_TOLERATIONS, description="Added to resources.tolerations"
    )
    security_context: SecurityContext | None = None
    container_security_context: ContainerSecurityContext | None = None
    shm_size: kf.Quantity | None = Field(
        None,
        description="Size of /dev/shm (a memory emptyDir; NCCL and DataLoader workers use it); default: no"
        " limit but the pod's memory",
    )

    @field_validator("volume_mounts")
    @classmethod
    def _mounts_name_volumes(cls, mounts: list[dict[str, Any]], info: ValidationInfo) -> list[dict[str, Any]]:
        names = {v["name"] for v in info.data.get("volumes", [])}
        missing = [f"[{i}].name {m['name']!r}" for i, m in enumerate(mounts) if m["name"] not in names]
        if missing:
            raise ValueError(f"{MOUNTS_NAME_VOLUMES} ({', '.join(missing)} does not)")
        return mounts

    @field_validator("shm_size")
    @classmethod
    def _positive(cls, size: str | None) -> str | None:
        if size is not None and kf.quantity_value(size) <= 0:
            raise ValueError("must be more than 0")
        return size


# CEL twins of PodOverrides' own checks (crd.py attaches them to spec.podOverrides).
CEL_RULES = [
    {
        "rule": "!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) && "
        "self.volumes.exists(v, v.name == m.name))",
        "message": f"spec.podOverrides.volumeMounts: {MOUNTS_NAME_VOLUMES}",
        "fieldPath": ".volumeMounts",
    },
    {
        "rule": "!has(self.shmSize) || quantity(self.shmSize).isGreaterThan(quantity('0'))",
        "message": "spec.podOverrides.shmSize: must be more than 0",
        "fieldPath": ".shmSize",
    },
]
