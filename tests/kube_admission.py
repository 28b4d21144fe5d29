"""What the apiserver does with a custom resource on admission: defaults, schema, CEL rules.

Used by `KubeApiEmulator.register_crd` (tests/kube_emulator.py) and by tests/test_crd.py:
structural defaulting from the CRD's `default`s, the openAPIV3Schema checked with jsonschema
(draft 4, the dialect of Kubernetes' OpenAPI v3 subset), and `x-kubernetes-validations` CEL rules
evaluated with cel-python where it is installed (skipped otherwise).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
from typing import Any

import jsonschema
import kmock

try:  # optional: CEL rules are checked only where cel-python is installed
    import celpy

    logging.getLogger("celpy").setLevel(logging.WARNING)  # its DEBUG output drowns kopf's --verbose
except ImportError:  # pragma: no cover - depends on the environment
    celpy = None


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
    """One served version of a CRD: its resource, discovery info and admission checks."""

    def __init__(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        version = next(v for v in spec["versions"] if v.get("served", True))
        self.resource = kmock.resource(spec["group"], version["name"], spec["names"]["plural"])
        self.info = kmock.ResourceInfo(
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            kind=spec["names"]["kind"],
            singular=spec["names"].get("singular"),
            shortnames=spec["names"].get("shortNames", []),
            categories=spec["names"].get("categories", []),
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            subresources=set(version.get("subresources", {})),
        )
        self.schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
        self._validator = jsonschema.Draft4Validator(self.schema)

    def default(self, obj: dict[str, Any]) -> dict[str, Any]:
        return apply_defaults(self.schema, obj)

    def validate(self, obj: dict[str, Any]) -> list[str]:
        """Schema errors, then failed CEL rules: one line each, as `kubectl apply` shows them."""
        problems = [
            f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
            for err in sorted(self._validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        ]
        if not problems and celpy is not None:
            problems = self._cel_failures(self.schema, obj)
        return problems

    def _cel_failures(self, schema: dict[str, Any], value: Any) -> list[str]:
        out: list[str] = []
        for rule in schema.get("x-kubernetes-validations", []):
            if not evaluate_cel(rule["rule"], value):
                out.append(rule.get("message", rule["rule"]))
        if isinstance(value, dict):
            for name, prop in schema.get("properties", {}).items():
                if name in value:
                    out += self._cel_failures(prop, value[name])
        elif isinstance(value, list) and "items" in schema:
            for item in value:
                out += self._cel_failures(schema["items"], item)
        return out


def evaluate_cel(rule: str, value: Any) -> bool:
    """True when the rule holds for `self = value`; evaluation errors count as failures."""
    if celpy is None:
        raise RuntimeError("cel-python is not installed")
    return _cel_holds(rule, json.dumps(value, sort_keys=True))


@functools.lru_cache(maxsize=4096)
def _cel_holds(rule: str, value_json: str) -> bool:
    # celpy is slow (~30 ms a rule); tests apply the same few manifests again and again.
    try:
        return bool(_cel_program(rule).evaluate({"self": celpy.json_to_cel(json.loads(value_json))}))
    except Exception:
        return False


@functools.lru_cache(maxsize=256)
def _cel_program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))
