"""What the apiserver does with a custom resource on admission, for the fast tier: defaults, schema.

Used by tests/unit/api/test_crd.py, the unit tier that runs without Go: structural defaulting from the
CRD's `default`s and the openAPIV3Schema checked with jsonschema
(draft 4, the dialect of Kubernetes' OpenAPI v3 subset). The `x-kubernetes-validations` CEL rules
are evaluated by the real kube-apiserver in the control-plane tier (tests/cluster/test_crd.py),
not here.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the apiserver does it: fill missing properties that have one."""
    if not isinstance(value, dict) or schema.get("type") != "object":
        if isinstance(value, list) and "items" in schema:
            return [apply_defaults(schema["items"], item) for item in value]
        return value
    out = dict(value)
    for name, prop in schema.get("properties", {}).items():
        if name not in out and "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
        if name in out:
            out[name] = apply_defaults(prop, out[name])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for name in set(out) - set(schema.get("properties", {})):
            out[name] = apply_defaults(extra, out[name])
    return out


class CustomResourceSchema:
    """One served version of a CRD: its structural defaults and OpenAPI schema check."""

    def __init__(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        version = next(v for v in spec["versions"] if v.get("served", True))
        self.schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
        self._validator = jsonschema.Draft4Validator(self.schema)

    def default(self, obj: dict[str, Any]) -> dict[str, Any]:
        return apply_defaults(self.schema, obj)

    def validate(self, obj: dict[str, Any]) -> list[str]:
        """Schema errors, one line each, as `kubectl apply` shows them."""
        return [
            f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
            for err in sorted(self._validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        ]
