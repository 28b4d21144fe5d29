"""The operator under test as the chart deploys it: `helm install`, then run with the chart's identity.

`install_chart` runs the real helm (tests/support/helm_tool.py) against the control plane:
`helm install <release> charts/speedrun-operator --namespace <ns> --set replicaCount=0 ...`,
so the CRD, ServiceAccount, Role/RoleBinding (or ClusterRole) and Deployment are the chart's
(`installed_release` reads back a release installed by other means, e.g. the README's command).
No container runtime can run the operator image here, so the Deployment keeps 0 replicas and
`ChartOperator` runs the same process in the test (kopf's KopfRunner, `speedrun operator`'s
argv) with:
- the Deployment's own container env (the chart's settings), read back from the cluster;
- a kubeconfig holding a token for the chart's ServiceAccount from the TokenRequest API,
  so the chart's RBAC is what the apiserver enforces;
and `forbidden()` lists every request the apiserver denied it (the log lines, any logger, that
carry the apiserver's `User "<its ServiceAccount>" cannot ...`): a test fails when that list is
not empty.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kopf.testing import KopfRunner

from speedrun_operator.operator_commands import kopf_run_argv
from speedrun_operator.settings import OperatorSettings
from tests.cluster.control_plane import ControlPlane, write_kubeconfig
from tests.support.helm_tool import HelmUnavailable, helm_path
from tests.support.helpers import ROOT

CHART = ROOT / "charts" / "speedrun-operator"
# A trainer image no registry holds (`.test` never resolves, RFC 2606): the real kubelets leave the
# operator's pods waiting (ErrImagePull, then ImagePullBackOff) well inside the start-up deadline
# (3600 s by default), so pods exist, bound, and nothing trains where a test needs no training.
NEVER_PULLED = {"trainer.image.repository": "registry.test/speedrun-trainer", "trainer.image.tag": "test"}
PULL_REASONS = ("ErrImagePull", "ImagePullBackOff")  # the kubelet alternates between them
# The values the operator tests install with; the intervals the operator module reads at import
# (kopf timers; the chart passes them as env).
CHART_VALUES = {
    "operator.defaultStorageUri": "s3://speedrun-test/runs",
    "operator.progressInterval": "1",
    "operator.resyncInterval": "5",
    **NEVER_PULLED,
}


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    service_account: str
    env: dict[str, str]


def install_chart(cp: ControlPlane, release: str, namespace: str, values: dict[str, str], *extra: str,
                  kubeconfig: Path | None = None) -> Release:  # fmt: skip
    """`helm install` into `namespace`; returns the release's identity and operator env.

    As the admin (the default) the namespace is created; as the user of `kubeconfig` (a tenant)
    it must exist. `extra` are further helm flags. AssertionError with helm's message on failure.
    """
    try:
        helm = helm_path()
    except HelmUnavailable as err:
        pytest.skip(f"needs helm: {err}")
    sets = [f"--set={k}={v}" for k, v in {"replicaCount": "0", **values}.items()]
    create = [] if kubeconfig else ["--create-namespace"]
    user = kubeconfig or cp.kubeconfig
    cmd = [str(helm), "install", release, str(CHART), f"--namespace={namespace}", *create,
           f"--kubeconfig={user}", "--wait=false", *extra, *sets]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        who = f" as {kubeconfig.name}" if kubeconfig else ""
        raise AssertionError(f"helm install{who} failed: {proc.stderr.strip()}")
    return installed_release(cp, release, namespace)


def installed_release(cp: ControlPlane, release: str, namespace: str) -> Release:
    """The identity and operator env of a release helm has installed (however it was installed)."""
    deployments = cp.admin.list(f"/apis/apps/v1/namespaces/{namespace}/deployments",
                                labels=f"app.kubernetes.io/instance={release}")  # fmt: skip
    assert len(deployments) == 1, deployments
    pod = deployments[0]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value", "") for e in pod["containers"][0].get("env") or [] if "value" in e}
    return Release(release, namespace, pod["serviceAccountName"], env)


class ChartOperator:
    """Start/stop the operator with a release's env and ServiceAccount token."""

    def __init__(self, cp: ControlPlane, release: Release, workdir: Path, overrides: dict[str, str]) -> None:
        self.cp, self.release, self.workdir = cp, release, workdir
        self.env = {**release.env, **overrides}
        self.kubeconfig = workdir / "operator.kubeconfig"
        self._stack: contextlib.ExitStack | None = None
        self.runner: KopfRunner | None = None
        self.denied: list[str] = []
        # The apiserver's refusals name the user: only this operator's count (tests may run two).
        user = f"system:serviceaccount:{release.namespace}:{release.service_account}"
        self._handler = _DeniedHandler(self.denied, re.compile(re.escape(user) + r"\W{0,4} cannot "))

    def start(self) -> KopfRunner:
        assert self._stack is None, "the operator is already running"
        token = self.cp.token(self.release.namespace, self.release.service_account)
        write_kubeconfig(self.kubeconfig, self.cp.server, self.cp.pki.ca.cert, "operator", token=token)
        settings = OperatorSettings.from_env(self.env)
        self._stack = contextlib.ExitStack()
        mp = self._stack.enter_context(pytest.MonkeyPatch.context())
        for key, value in {**self.env, "KUBECONFIG": str(self.kubeconfig)}.items():
            mp.setenv(key, value)
        mp.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in-cluster: use the kubeconfig
        self._stack.enter_context(_root_logging_kept())
        logging.getLogger().addHandler(self._handler)
        self._stack.callback(logging.getLogger().removeHandler, self._handler)
        self.runner = self._stack.enter_context(KopfRunner(kopf_run_argv(settings, verbose=True), timeout=60))
        return self.runner

    def stop(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()

    def forbidden(self) -> list[str]:
        """The operator's log lines about requests the apiserver denied (RBAC), so far."""
        return list(self.denied)


_kept_root: list[tuple[list[logging.Handler], int]] = []  # the root logger before the first running operator


@contextlib.contextmanager
def _root_logging_kept() -> Iterator[None]:
    """Give the root logger back as it was once the last in-process operator stops.

    kopf's `run` (kopf/_core/actions/loggers.py `configure`) sets the root level to DEBUG and adds a
    stream handler bound to `sys.stderr` as it is when the operator's thread gets there, which may
    be a test's own capture (capsys) that pytest closes after that test: left behind, the handler
    then writes "Logging error ... I/O operation on closed file" into every later test's stderr."""
    root = logging.getLogger()
    if not _kept_root:
        _kept_root.append((list(root.handlers), root.level))
    else:
        _kept_root.append(_kept_root[0])
    try:
        yield
    finally:
        handlers, level = _kept_root.pop()
        if not _kept_root:  # no other operator runs in this process
            root.handlers[:] = handlers
            root.setLevel(level)


class _DeniedHandler(logging.Handler):
    def __init__(self, found: list[str], pattern: re.Pattern[str]) -> None:
        super().__init__(logging.DEBUG)
        self.found, self.pattern = found, pattern

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            message = record.getMessage()
            if self.pattern.search(message):
                self.found.append(message[:500])


@contextlib.contextmanager
def chart_operator(cp: ControlPlane, release: Release, workdir: Path, **overrides: str) -> Iterator[ChartOperator]:
    operator = ChartOperator(cp, release, workdir, overrides)
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()
