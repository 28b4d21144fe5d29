"""The security contexts of `spec.podOverrides`: the pod's and the trainer container's.

Kubernetes' own types (k8s_schemas.py), with the rules the apiserver checks in Go beyond their
schema (pkg/apis/core/validation: ValidatePodSecurityContext, ValidateSecurityContext): ids not
negative, a Localhost seccomp or AppArmor profile with its path, `privileged` or an added
SYS_ADMIN only with privilege escalation allowed, which the operator's own container context
forbids unless the overlay allows it. `windowsOptions` is gone: the trainer's pods are Linux pods.
"""

from __future__ import annotations

from typing import Any

from speedrun_api import k8s_schemas as ks

PROFILES = ("seccompProfile", "appArmorProfile")
LOCALHOST_HELP = "localhostProfile goes with type Localhost, and only with it"


def _profiles(props: dict[str, Any]) -> None:
    for profile in PROFILES:
        props[profile]["properties"]["type"]["enum"] = ["RuntimeDefault", "Unconfined", "Localhost"]
        props[profile]["x-kubernetes-validations"] = [
            {"rule": "(self.type == 'Localhost') == has(self.localhostProfile)", "message": LOCALHOST_HELP}
        ]


def _security_schema() -> dict[str, Any]:
    node = ks.schema("PodSecurityContext")
    props = node["properties"]
    del props["windowsOptions"]  # the trainer's pods are Linux pods
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        props[key]["minimum"] = 0
    props["supplementalGroups"]["items"]["minimum"] = 0
    props["fsGroupChangePolicy"]["enum"] = ["OnRootMismatch", "Always"]
    props["supplementalGroupsPolicy"]["enum"] = ["Merge", "Strict"]
    props["seLinuxChangePolicy"]["enum"] = ["MountOption", "Recursive"]
    _profiles(props)
    node["description"] = "The pods' security context, over the operator's (non-root, seccomp RuntimeDefault) by key"
    return node


ESCALATING_CAPABILITIES = ("SYS_ADMIN", "CAP_SYS_ADMIN")
ESCALATION_HELP = (
    "privileged or capabilities.add SYS_ADMIN need allowPrivilegeEscalation: true (the operator's default is false)"
)


def _container_security_schema() -> dict[str, Any]:
    node = ks.schema("SecurityContext")
    props = node["properties"]
    del props["windowsOptions"]
    for key in ("runAsUser", "runAsGroup"):
        props[key]["minimum"] = 0
    props["procMount"]["enum"] = ["Default"]  # Unmasked needs a user namespace (hostUsers: false)
    for key in ("add", "drop"):
        props["capabilities"]["properties"][key].update(maxItems=64)
        props["capabilities"]["properties"][key]["items"]["maxLength"] = 64
    _profiles(props)
    escalating = ", ".join(f"'{c}'" for c in ESCALATING_CAPABILITIES)
    node["x-kubernetes-validations"] = [
        {
            "rule": "(has(self.allowPrivilegeEscalation) && self.allowPrivilegeEscalation) || "
            "((!has(self.privileged) || !self.privileged) && (!has(self.capabilities) || "
            f"!has(self.capabilities.add) || !self.capabilities.add.exists(c, c in [{escalating}])))",
            "message": ESCALATION_HELP,
        }
    ]
    node["description"] = (
        "The trainer (and evaluator) container's security context, over the operator's (no privilege"
        " escalation, read-only root, capabilities drop ALL) by key; capabilities.add/drop each replace"
        " the operator's own, e.g. add: [IPC_LOCK] for RDMA"
    )
    return node


def _security_problems(context: dict[str, Any]) -> list[str]:
    return [
        f"{profile}: {LOCALHOST_HELP}"
        for profile in PROFILES
        if profile in context and (context[profile]["type"] == "Localhost") != ("localhostProfile" in context[profile])
    ]


def _container_security_problems(context: dict[str, Any]) -> list[str]:
    problems = _security_problems(context)
    escalates = context.get("privileged") or set(context.get("capabilities", {}).get("add", [])) & set(
        ESCALATING_CAPABILITIES
    )
    if escalates and not context.get("allowPrivilegeEscalation"):
        problems.append(ESCALATION_HELP)
    return problems


SecurityContext = ks.checked(dict[str, Any], "securityContext", _security_schema(), _security_problems)
ContainerSecurityContext = ks.checked(
    dict[str, Any], "containerSecurityContext", _container_security_schema(), _container_security_problems
)
