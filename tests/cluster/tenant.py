"""A tenant of the test control plane: a user with full rights in one namespace and none outside.

The namespaced install mode must work for someone who may not create cluster roles: a
ServiceAccount bound (RoleBinding) to a Role granting every verb on every resource of its
namespace, which is what a namespace's admin holds on a shared cluster. `helm_install_as` runs
the real helm with that user's token, so anything cluster-scoped the chart renders is refused
by the apiserver, as it would be for the tenant.

    kubeconfig = namespace_admin(cp, "team-a")
    release = helm_install_as(cp, kubeconfig, "speedrun", "team-a", {...}, "--skip-crds")
"""

from __future__ import annotations

from pathlib import Path

from tests.cluster.api import ApiError
from tests.cluster.chart import Release, install_chart
from tests.cluster.control_plane import ControlPlane, write_kubeconfig

TENANT = "tenant-admin"


def _create(cp: ControlPlane, path: str, body: dict[str, object]) -> None:
    try:
        cp.admin.create(path, body)
    except ApiError as err:
        if err.status != 409:
            raise


def namespace_admin(cp: ControlPlane, namespace: str) -> Path:
    """Namespace `namespace` with ServiceAccount TENANT, admin of it only; its kubeconfig."""
    cp.namespace(namespace)
    _create(cp, f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": TENANT}})  # fmt: skip
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    _create(cp, f"{rbac}/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "namespace-admin"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
    })  # fmt: skip
    _create(cp, f"{rbac}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "namespace-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "namespace-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": TENANT, "namespace": namespace}],
    })  # fmt: skip
    token = cp.token(namespace, TENANT)
    return write_kubeconfig(cp.workdir / f"{namespace}-{TENANT}.kubeconfig", cp.server, cp.pki.ca.cert, TENANT,
                            token=token, namespace=namespace)  # fmt: skip


def helm_install_as(cp: ControlPlane, kubeconfig: Path, release: str, namespace: str, values: dict[str, str],
                    *extra: str) -> Release:  # fmt: skip
    """`helm install` into an existing namespace as the user of `kubeconfig`; AssertionError with
    helm's message when it fails."""
    return install_chart(cp, release, namespace, values, *extra, kubeconfig=kubeconfig)
