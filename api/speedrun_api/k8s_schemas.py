"""Kubernetes' own OpenAPI schemas for the pod fields a SpeedrunJob passes through (`spec.podOverrides`).

Volumes, volume mounts, affinity, security contexts and env vars are Kubernetes types with
dozens of nested sources; writing them again as pydantic models would drift from Kubernetes. They
are vendored instead, from Kubernetes' published OpenAPI v3 document
(kubernetes `api/openapi-spec/v3/api__v1_openapi.json`, v1.36.3), made structural the way
controller-gen embeds core types in CRDs: `$ref`s inlined, descriptions, defaults and patch
hints dropped, quantities and int-or-strings as `x-kubernetes-int-or-string`, object metadata
(an ephemeral volume's claim template) left to the apiserver's pod validation. The CRD embeds
these schemas (api crd.py), and `problems` checks a value against the same schema in Python, so
`speedrun plan` and `kubectl apply` refuse the same shapes.

    python -m speedrun_api.k8s_schemas <api__v1_openapi.json>   # re-vendor k8s_core_v1.json
"""

from __future__ import annotations

import json
import re
import sys
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, WithJsonSchema

from speedrun_api.kubeformats import QUANTITY_RE

VENDORED = Path(__file__).with_name("k8s_core_v1.json")
SOURCE = "kubernetes v1.36.3 api/openapi-spec/v3/api__v1_openapi.json"
ROOTS = {
    "Volume": "io.k8s.api.core.v1.Volume",
    "VolumeMount": "io.k8s.api.core.v1.VolumeMount",
    "Affinity": "io.k8s.api.core.v1.Affinity",
    "PodSecurityContext": "io.k8s.api.core.v1.PodSecurityContext",
    "SecurityContext": "io.k8s.api.core.v1.SecurityContext",
    "EnvVar": "io.k8s.api.core.v1.EnvVar",
}
_DROPPED = {"description", "default", "x-kubernetes-patch-strategy", "x-kubernetes-patch-merge-key"}
_DROPPED.add("x-kubernetes-unions")  # hints for clients; a CRD schema cannot carry them
_QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
_INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
_OPAQUE = {"io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}  # validated by the apiserver's pod validation
_TIME = "io.k8s.apimachinery.pkg.apis.meta.v1.Time"


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(x, defs) for x in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref") or (node["allOf"][0].get("$ref") if len(node.get("allOf", [])) == 1 else None)
    if ref:
        name = ref.rsplit("/", 1)[-1]
        if name == _QUANTITY:
            return {"anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": QUANTITY_RE,
                    "x-kubernetes-int-or-string": True}  # fmt: skip
        if name == _INT_OR_STRING:
            return {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
        if name == _TIME:
            return {"type": "string", "format": "date-time"}
        if name in _OPAQUE:
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        return _inline(defs[name], defs)
    return {k: _inline(v, defs) for k, v in node.items() if k not in _DROPPED}


def vendor(openapi: Path) -> dict[str, Any]:
    defs = json.loads(openapi.read_text())["components"]["schemas"]
    return {"source": SOURCE, "schemas": {short: _inline(defs[full], defs) for short, full in ROOTS.items()}}


@cache
def _vendored() -> dict[str, Any]:
    return json.loads(VENDORED.read_text())["schemas"]


def schema(name: str) -> dict[str, Any]:
    """The structural schema of one vendored type (a fresh copy: callers may add to it)."""
    return json.loads(json.dumps(_vendored()[name]))


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def problems(node: dict[str, Any], value: Any, where: str) -> list[str]:
    """What the apiserver's OpenAPI check (strict field validation) says of `value`: one line each."""
    if node.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            return [f"{where}: must be an integer or a string"]
        if isinstance(value, str) and "pattern" in node and not re.search(node["pattern"], value):
            return [f"{where}: {value!r} does not match {node['pattern']!r}"]
        return []
    kind = node.get("type")
    if kind and (not isinstance(value, _TYPES[kind]) or (kind != "boolean" and isinstance(value, bool))):
        return [f"{where}: must be of type {kind}"]
    if "minimum" in node and not isinstance(value, bool) and value < node["minimum"]:
        return [f"{where}: {value} is less than the minimum {node['minimum']}"]
    if "enum" in node and value not in node["enum"]:
        return [f"{where}: {value!r} is not one of {node['enum']}"]
    if isinstance(value, str):
        if "maxLength" in node and len(value) > node["maxLength"]:
            return [f"{where}: longer than {node['maxLength']} characters"]
        if "pattern" in node and not re.search(node["pattern"], value):
            return [f"{where}: {value!r} does not match {node['pattern']!r}"]
        return []
    if isinstance(value, list):
        if "maxItems" in node and len(value) > node["maxItems"]:
            return [f"{where}: more than {node['maxItems']} items"]
        return [p for i, item in enumerate(value) for p in problems(node.get("items", {}), item, f"{where}[{i}]")]
    if isinstance(value, dict):
        return _object_problems(node, value, where)
    return []


def _object_problems(node: dict[str, Any], value: dict[str, Any], where: str) -> list[str]:
    out = [f"{where}.{key}: required" for key in node.get("required", []) if key not in value]
    props, extra = node.get("properties"), node.get("additionalProperties")
    for key, item in value.items():
        if props is not None and key in props:
            out += problems(props[key], item, f"{where}.{key}")
        elif isinstance(extra, dict):
            out += problems(extra, item, f"{where}.{key}")
        elif props is not None and not node.get("x-kubernetes-preserve-unknown-fields"):
            out.append(f'{where}.{key}: unknown field "{key}"')
    return out


def checked(kind: Any, name: str, node: dict[str, Any], *checks: Any) -> Any:
    """A pass-through field: Kubernetes' schema (`node`) in the CRD and in Python, then `checks`
    (the Python twins of the CEL rules), each `value -> list of problems`."""

    def validate(value: Any) -> Any:
        found = problems(node, value, name)
        if not found:
            found = [p for check in checks for p in check(value)]
        if found:  # "volumes[0].name: ..." -> "[0].name: ...": the error names the field already
            raise ValueError("\n".join(p.removeprefix(name).removeprefix(".") for p in found))
        return value

    return Annotated[kind, AfterValidator(validate), WithJsonSchema(node)]


if __name__ == "__main__":
    VENDORED.write_text(json.dumps(vendor(Path(sys.argv[1])), indent=None, sort_keys=True) + "\n")
    print(f"wrote {VENDORED}")
