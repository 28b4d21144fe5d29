"""The pod overlay: the chart's `trainer.podOverrides` under a job's `spec.podOverrides`, laid over
the pods the builders made.

The overlay only adds to what the operator builds: its labels, the trainer container's name,
command and env, its volumes and mount paths stay (the spec refuses keys that would replace them,
api pod_overrides.py), so selectors, the failure policy and the rendezvous keep working. Per
field, the job's own overlay wins over the chart's: maps and keyed lists (env by name, volumes by
name, mounts by path) merge with the job's entry winning; tolerations and pull secrets add up;
scalars, the security context's keys and affinity's kinds (node, pod, pod anti-) replace. The
result goes over the builders' pod: labels, annotations, env, volumes and mounts are added, the
security context's keys replace the operator's, and affinity is merged with the builders' own
(placement), its required node terms ANDed (docs/manifest.md "podOverrides").

Which pods: every field goes to the training pods; the eval pod takes them too, except that the
eval pod of a TPU run (on CPU, builders/tpu.py) takes no affinity and no accelerator toleration,
as it takes no accelerator node selector.
"""

from __future__ import annotations

from typing import Any

from speedrun_api.pod_overrides import PodOverrides
from speedrun_api.spec import SpeedrunJob
from speedrun_operator.builders.common import ACCELERATOR_TAINTS
from speedrun_operator.settings import OperatorSettings

SHM_VOLUME = "dshm"


def _keyed(defaults: list[dict[str, Any]], own: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The chart's entries not replaced by the job's (same `key`), then the job's."""
    mine = {item[key] for item in own}
    return [item for item in defaults if item[key] not in mine] + list(own)


def _unique(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def merged(job: SpeedrunJob, settings: OperatorSettings) -> dict[str, Any]:
    """The overlay of `job`'s pods (camelCase, as it goes into the pod): chart defaults, then the spec."""
    base = _wire(settings.pod_overrides_defaults())
    own = _wire(job.spec.pod_overrides)
    out: dict[str, Any] = {**base, **own}
    for key in ("labels", "annotations", "securityContext", "containerSecurityContext"):
        out[key] = {**base.get(key, {}), **own.get(key, {})}
    # The job's spec.env beats the chart's overlay env of the same name (the spec wins).
    chart_env = [e for e in base.get("env", []) if e["name"] not in job.spec.env]
    out["env"] = _keyed(chart_env, own.get("env", []), "name")
    out["volumes"] = _keyed(base.get("volumes", []), own.get("volumes", []), "name")
    out["volumeMounts"] = _keyed(base.get("volumeMounts", []), own.get("volumeMounts", []), "mountPath")
    out["tolerations"] = _unique(base.get("tolerations", []) + own.get("tolerations", []))
    out["imagePullSecrets"] = _unique(base.get("imagePullSecrets", []) + own.get("imagePullSecrets", []))
    out["affinity"] = {**(base.get("affinity") or {}), **(own.get("affinity") or {})}  # per kind
    return {k: v for k, v in out.items() if v not in ({}, [], None)}


def _wire(overlay: PodOverrides) -> dict[str, Any]:
    return overlay.model_dump(by_alias=True, exclude_none=True, mode="json")


def merge_affinity(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Both affinities at once: preferred terms and required pod (anti-)affinity terms add up (both
    already ANDed or weighed); required node selector terms are ORed within one affinity, so the two
    lists become their cross product (each term of one AND each term of the other)."""
    out: dict[str, Any] = {}
    for kind in ("nodeAffinity", "podAffinity", "podAntiAffinity"):
        a, b = first.get(kind) or {}, second.get(kind) or {}
        if not a or not b:
            if a or b:
                out[kind] = a or b
            continue
        merged_kind: dict[str, Any] = {}
        for field in set(a) | set(b):
            x, y = a.get(field), b.get(field)
            if x is None or y is None:
                merged_kind[field] = x if y is None else y
            elif field == "requiredDuringSchedulingIgnoredDuringExecution" and kind == "nodeAffinity":
                merged_kind[field] = {"nodeSelectorTerms": _and_terms(x["nodeSelectorTerms"], y["nodeSelectorTerms"])}
            else:
                merged_kind[field] = list(x) + list(y)
        out[kind] = merged_kind
    return out


def _and_terms(xs: list[dict[str, Any]], ys: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def both(x: dict[str, Any], y: dict[str, Any]) -> dict[str, Any]:
        term = {}
        for key in ("matchExpressions", "matchFields"):
            if x.get(key) or y.get(key):
                term[key] = list(x.get(key) or []) + list(y.get(key) or [])
        return term

    return [both(x, y) for x in xs for y in ys]


def apply(batch_job: dict[str, Any], job: SpeedrunJob, settings: OperatorSettings, accelerator: bool = True) -> None:
    """Lay the merged overlay over a Job the builders made (in place). `accelerator` False: the
    pod asks for no accelerator (a TPU run's eval pod): no affinity, no accelerator tolerations."""
    overlay = merged(job, settings)
    if not overlay:
        return
    template = batch_job["spec"]["template"]
    meta, pod = template["metadata"], template["spec"]
    container = pod["containers"][0]
    if "labels" in overlay:  # the operator's own labels last: the spec refuses their keys anyway
        meta["labels"] = {**overlay["labels"], **meta.get("labels", {})}
    if "annotations" in overlay:
        meta["annotations"] = {**overlay["annotations"], **meta.get("annotations", {})}
    for key in ("imagePullSecrets", "serviceAccountName", "automountServiceAccountToken"):
        if key in overlay:
            pod[key] = overlay[key]
    if "env" in overlay:  # chart trainer.env of the same name gives way to the overlay's entry
        names = {e["name"] for e in overlay["env"]}
        container["env"] = [e for e in container.get("env", []) if e["name"] not in names] + overlay["env"]
    if "volumes" in overlay:
        pod["volumes"] = pod.get("volumes", []) + overlay["volumes"]
    if "volumeMounts" in overlay:
        container["volumeMounts"] = container.get("volumeMounts", []) + overlay["volumeMounts"]
    if "shmSize" in overlay:
        for volume in pod.get("volumes", []):
            if volume["name"] == SHM_VOLUME:
                volume["emptyDir"] = {**volume["emptyDir"], "sizeLimit": overlay["shmSize"]}
    tolerations = overlay.get("tolerations", [])
    if not accelerator:
        tolerations = [t for t in tolerations if t.get("key") not in ACCELERATOR_TAINTS]
    if tolerations:
        pod["tolerations"] = _unique(pod.get("tolerations", []) + tolerations)
    if "securityContext" in overlay:
        pod["securityContext"] = {**pod.get("securityContext", {}), **overlay["securityContext"]}
    if "containerSecurityContext" in overlay:
        own, extra = container.get("securityContext", {}), overlay["containerSecurityContext"]
        merged_context = {**own, **extra}
        if "capabilities" in extra:  # add and drop each replace the operator's: add IPC_LOCK keeps drop ALL
            merged_context["capabilities"] = {**own.get("capabilities", {}), **extra["capabilities"]}
        container["securityContext"] = merged_context
    if "affinity" in overlay and accelerator:
        pod["affinity"] = merge_affinity(pod.get("affinity") or {}, overlay["affinity"])
