"""Kubernetes value formats the spec passes on to pods and Jobs, as regexes and CEL rules.

A SpeedrunJob field that ends up in a child object must satisfy the child's validation, or the
apiserver admits the SpeedrunJob and then refuses its Job (or the kubelet never starts its pod).
Each format here is written once and used twice: as a pydantic `pattern` (which the CRD generator
copies into the OpenAPI schema) and, where a pattern cannot reach (map keys, cross-field rules of
a toleration, cluster-only rules), as a CEL rule under `x-kubernetes-validations`.

Sources (Kubernetes' own, k8s.io/apimachinery and k8s.io/kubernetes):
- quantity: api/resource/quantity.go (the grammar in the comment of `Quantity`); requests and
  limits must also be >= 0 (pkg/apis/core/validation: ValidateResourceQuantityValue), so no sign.
- label key (qualified name) and value: util/validation/validation.go (IsQualifiedName,
  IsValidLabelValue); DNS-1123 subdomain: IsDNS1123Subdomain (Secret and PriorityClass names).
- tolerations: pkg/apis/core/validation/validation.go (ValidateTolerations).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

# <quantity> ::= <number><suffix>; <number> ::= <digits> | <digits>.<digits> | <digits>. | .<digits>;
# <suffix> ::= Ki|Mi|Gi|Ti|Pi|Ei | n|u|m||k|M|G|T|P|E | e<int>|E<int> (the parser takes integer exponents).
QUANTITY_RE = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9]+)?$"
LABEL_VALUE_RE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
DNS_SUBDOMAIN_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# [prefix/]name: the prefix a DNS subdomain (at most 253), the name at most 63 characters.
LABEL_KEY_RE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_KEY_PREFIX_MAX = 253
MAX_NODE_SELECTOR = 64
MAX_TOLERATIONS = 64

LABEL_VALUE_HELP = "at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"
LABEL_KEY_HELP = f"a label key: [prefix/]name, name {LABEL_VALUE_HELP}, prefix a lowercase DNS subdomain"


def _cel_regex(regex: str) -> str:
    """A regex as a single-quoted CEL string literal (backslashes doubled)."""
    return "'" + regex.replace("\\", "\\\\") + "'"


def label_key_cel(var: str) -> str:
    prefix = f"{var}.indexOf('/') <= {LABEL_KEY_PREFIX_MAX}"
    return f"{var}.matches({_cel_regex(LABEL_KEY_RE)}) && (!{var}.contains('/') || {prefix})"


Quantity = Annotated[
    str,
    Field(
        max_length=64,
        pattern=QUANTITY_RE,
        description="A Kubernetes quantity, e.g. 1500m, 8, 64Gi, 1e9",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "isQuantity(self)", "message": "must be a Kubernetes quantity, e.g. 1500m, 8, 64Gi"}
            ]
        },
    ),
]
LabelValue = Annotated[
    str, Field(max_length=63, pattern=LABEL_VALUE_RE, description=f"A label value: {LABEL_VALUE_HELP}")
]
DnsSubdomain = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_RE)]


_SUFFIX_FACTORS = {
    **{s: 1024**k for k, s in enumerate(("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: 1000**k for k, s in enumerate(("", "k", "M", "G", "T", "P", "E"))},
    "n": 1e-9, "u": 1e-6, "m": 1e-3,
}  # fmt: skip


def quantity_value(quantity: str) -> float:
    """The number a Kubernetes quantity stands for ("80Gi" -> 85899345920.0, "1e9" -> 1e9; inf past floats).

    Only for strings QUANTITY_RE accepts (the spec validated them); ValueError otherwise.
    """
    match = re.match(QUANTITY_RE, quantity)
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    number, suffix = match.group(1), match.group(3) or ""
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        exponent = int(suffix[1:])
        if exponent > 400:  # past any float: Kubernetes caps such a quantity too
            return float("inf") if float(number) else 0.0
        return float(number) * 10.0 ** max(exponent, -400)
    return float(number) * _SUFFIX_FACTORS[suffix]


def node_selector_field() -> Any:
    """`resources.nodeSelector`: label values by type, label keys by a CEL rule (no pattern reaches keys)."""
    return Field(
        {},
        max_length=MAX_NODE_SELECTOR,
        description="Extra node labels the pods require (keys and values as Kubernetes labels)",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": f"self.all(k, {label_key_cel('k')})", "message": f"every key must be {LABEL_KEY_HELP}"}
            ]
        },
    )


def label_key_problem(key: str) -> str | None:
    if not re.match(LABEL_KEY_RE, key) or ("/" in key and key.index("/") > LABEL_KEY_PREFIX_MAX):
        return f"{key!r} is not {LABEL_KEY_HELP}"
    return None


# Toleration rules (ValidateTolerations), in CEL over one toleration object and in Python.
TOLERATION_CEL = [
    {
        "rule": f"!has(self.key) || self.key == '' || ({label_key_cel('self.key')})",
        "message": f"key must be {LABEL_KEY_HELP}",
    },
    {
        "rule": "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
        "message": "operator must be Exists when key is empty (which matches every taint)",
    },
    {
        "rule": "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
        "message": "value must be empty when operator is Exists",
    },
    {
        "rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
        "message": "effect must be NoExecute when tolerationSeconds is set",
    },
]


def toleration_problems(
    key: str | None, operator: str | None, value: str | None, effect: str | None, seconds: int | None
) -> list[str]:
    """What ValidateTolerations would say about one toleration; [] when it is fine."""
    problems = []
    if key and (problem := label_key_problem(key)):
        problems.append(f"key: {problem}")
    if not key and operator != "Exists":
        problems.append("operator must be Exists when key is empty (which matches every taint)")
    if operator == "Exists" and value:
        problems.append("value must be empty when operator is Exists")
    if seconds is not None and effect != "NoExecute":
        problems.append("effect must be NoExecute when tolerationSeconds is set")
    return problems


class Toleration(BaseModel):
    """A pod toleration; Kubernetes' rules for tolerations apply (ValidateTolerations)."""

    # spec_types.Base's configuration (camelCase, strict, frozen), plus the rules as CEL for the CRD.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True,
        json_schema_extra={"x-kubernetes-validations": TOLERATION_CEL},
    )  # fmt: skip
    key: str | None = Field(None, max_length=LABEL_KEY_PREFIX_MAX + 64)
    operator: Literal["Exists", "Equal"] | None = None
    value: LabelValue | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: Annotated[int, Field(ge=0, le=2**53 - 1)] | None = None

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> Toleration:
        problems = toleration_problems(self.key, self.operator, self.value, self.effect, self.toleration_seconds)
        if problems:
            raise ValueError("; ".join(problems))
        return self


# Extended resources (pkg/apis/core/helper IsExtendedResourceName; validation
# validateContainerResourceName, ValidateResourceRequirements): a name outside the kubernetes.io
# domain, with a prefix, not starting "requests.", and "requests.<name>" a qualified name; the
# quantity a whole number, requested and limited alike (extended resources are never overcommitted).
MAX_EXTRA_RESOURCES = 16
EXTENDED_RESOURCE_HELP = (
    "an extended resource name: <domain>/<name> outside kubernetes.io, e.g. rdma/ib or nvidia.com/hostdev"
)


def extended_resource_cel(var: str) -> str:
    qualified = f"('requests.' + {var})"
    return (
        f"{var}.contains('/') && !{var}.contains('kubernetes.io/') && !{var}.startsWith('requests.')"
        f" && {label_key_cel(qualified)}"
    )


def extended_resource_problem(name: str) -> str | None:
    qualified = "requests." + name
    if (
        "/" not in name
        or "kubernetes.io/" in name
        or name.startswith("requests.")
        or label_key_problem(qualified) is not None
    ):
        return f"{name!r} is not {EXTENDED_RESOURCE_HELP}"
    return None


def extra_resources_field() -> Any:
    """`resources.extraResources`: whole counts by type, names by a CEL rule (no pattern reaches keys)."""
    return Field(
        {},
        max_length=MAX_EXTRA_RESOURCES,
        description="Extended resources each training pod requests and is limited to, e.g. rdma/ib: 1"
        " (RDMA NICs from a device plugin); name: whole count",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"self.all(k, {extended_resource_cel('k')})",
                    "message": f"every key must be {EXTENDED_RESOURCE_HELP}",
                }
            ]
        },
    )
