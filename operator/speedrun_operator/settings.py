"""Operator settings: one frozen dataclass read from the environment.

Each field is the variable `SPEEDRUN_OPERATOR_<FIELD>` (`trainer_image`: SPEEDRUN_TRAINER_IMAGE),
its default the field's. `speedrun operator` turns its flags into these variables before kopf
starts, so the environment is the single source (the Helm chart sets the same variables), and
`speedrun render` reads them too, so what it prints is what the operator would create.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from functools import lru_cache

from pydantic import ValidationError

from speedrun_api.accelerator_labels import DEFAULT_PROFILE, profile_problem
from speedrun_api.manifest import format_validation_error
from speedrun_api.pod_overrides import PodOverrides
from speedrun_api.run_env import env_problems

DEFAULT_TRAINER_IMAGE = "ghcr.io/speedrun-operator/trainer:0.1.0"
# The training pods of TPU runs (jax[tpu]; Dockerfile target trainer-tpu): SPEEDRUN_OPERATOR_TPU_TRAINER_IMAGE.
DEFAULT_TPU_TRAINER_IMAGE = "ghcr.io/speedrun-operator/trainer-tpu:0.1.0"
DEFAULT_LEASE_NAME = "speedrun-operator"
GANG_SETTINGS = ("auto", "kubernetes", "coscheduling", "none")  # builders/placement.py
MAX_HANDLER_THREADS = 256

ENV_TRAINER_IMAGE = "SPEEDRUN_TRAINER_IMAGE"
ENV_PREFIX = "SPEEDRUN_OPERATOR_"


@dataclass(frozen=True)
class OperatorSettings:
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    tpu_trainer_image: str = DEFAULT_TPU_TRAINER_IMAGE
    namespaces: tuple[str, ...] = ()
    metrics_port: int = 9090
    leader_election: bool = False
    lease_name: str = DEFAULT_LEASE_NAME
    lease_namespace: str = ""
    lease_duration: float = 15.0
    lease_renew_deadline: float = 10.0
    lease_retry_period: float = 2.0
    liveness: str = ""
    default_storage_uri: str = ""
    # The endpoint and Secret of the default storage: they go only to jobs stored under it.
    default_storage_endpoint_url: str = ""
    default_storage_secret: str = ""
    progress_interval: float = 15.0
    resync_interval: float = 60.0
    # Which node labels select a GPU's nodes: none | gke | eks | eks-auto | aks | nvidia-gfd
    # (api accelerator_labels.py; the chart's trainer.acceleratorLabels). TPUs select GKE's always.
    accelerator_labels: str = DEFAULT_PROFILE
    image_pull_policy: str = "IfNotPresent"
    eval_backoff_limit: int = 2
    run_as_user: int = 1000
    service_account: str = ""
    # The cluster's environment for every trainer and eval pod (the chart's `trainer.env`, e.g.
    # NCCL_* for its network), a JSON object of strings; a SpeedrunJob's `spec.env` wins per name.
    trainer_env: str = ""
    # Operator-wide pod overlay (the chart's `trainer.podOverrides`), a JSON object in the form of
    # `spec.podOverrides`; a SpeedrunJob's own wins field by field (builders/pod_overrides.py).
    pod_overrides: str = ""
    # How the training pods start all together (builders/placement.py): auto (what discovery
    # finds: Kubernetes' PodGroup, else scheduler-plugins' coscheduling, else none), or one of them.
    gang_scheduling: str = "auto"
    # Threads that run the reconcile handlers (kopf's `execution.max_workers`; its default is
    # CPUs + 4): how many SpeedrunJobs are reconciled at once, e.g. when many are applied together.
    # 64: at 100 jobs applied at once, apply -> training Job p99 2.6 s against 18 s with 16
    # (bench/README.md, "handler threads").
    handler_threads: int = 64

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        """Read every field from its variable; unset or empty variables keep the default."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(env_name(f.name), "").strip()
            if not raw:
                continue
            values[f.name] = _parse(f.name, raw, getattr(cls, f.name))
        return cls(**values)  # type: ignore[arg-type]

    def trainer_env_vars(self) -> dict[str, str]:
        """`trainer_env` parsed; ValueError (one line, naming the variable) when it is not a JSON
        object of strings whose names a run may set (api run_env.py)."""
        if not self.trainer_env.strip():
            return {}
        where = env_name("trainer_env")
        try:
            parsed = json.loads(self.trainer_env)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err.msg}); expected an object of strings") from None
        if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
            raise ValueError(f'{where}: expected a JSON object of strings, e.g. {{"NCCL_IB_HCA": "mlx5"}}')
        problems = env_problems(parsed)
        if problems:
            raise ValueError(f"{where}: {'; '.join(problems)}")
        return parsed

    def pod_overrides_defaults(self) -> PodOverrides:
        """`pod_overrides` parsed; ValueError (one line, naming the variable) when `spec.podOverrides`
        would refuse it."""
        return _pod_overrides(self.pod_overrides)

    def problem(self) -> str | None:
        """One line naming the variable whose value cannot work, or None."""
        try:
            self.trainer_env_vars()
            self.pod_overrides_defaults()
        except ValueError as err:
            return str(err)
        labels = profile_problem(self.accelerator_labels)
        if labels:
            return f"{env_name('accelerator_labels')}: {labels}"
        if self.gang_scheduling not in GANG_SETTINGS:
            return f"{env_name('gang_scheduling')}: one of {', '.join(GANG_SETTINGS)}, got {self.gang_scheduling!r}"
        if not 1 <= self.handler_threads <= MAX_HANDLER_THREADS:
            return f"{env_name('handler_threads')}: from 1 to {MAX_HANDLER_THREADS}, got {self.handler_threads}"
        for name in ("default_storage_endpoint_url", "default_storage_secret"):
            if getattr(self, name) and not self.default_storage_uri:
                return (
                    f"{env_name(name)}: set {env_name('default_storage_uri')} too "
                    "(the default endpoint and Secret apply only to jobs stored under the default prefix)"
                )
        if self.leader_election:
            if not 0 < self.lease_retry_period < self.lease_renew_deadline < self.lease_duration:
                return (
                    f"{env_name('lease_retry_period')} < {env_name('lease_renew_deadline')} < "
                    f"{env_name('lease_duration')} must hold and be positive (client-go's rule), got "
                    f"{self.lease_retry_period:g} / {self.lease_renew_deadline:g} / {self.lease_duration:g}"
                )
            if not self.lease_namespace and not os.environ.get("POD_NAMESPACE") and not self.namespaces:
                return (
                    f"{env_name('lease_namespace')}: give the namespace of the Lease when serving all "
                    "namespaces with leader election (the chart sets its release namespace)"
                )
        return None

    def lease_namespace_or_default(self) -> str:
        return self.lease_namespace or os.environ.get("POD_NAMESPACE", "") or (self.namespaces or ("default",))[0]

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce these settings in `from_env` (flags -> env -> kopf)."""
        out: dict[str, str] = {}
        for name, value in asdict(self).items():
            if isinstance(value, tuple):
                out[env_name(name)] = ",".join(value)
            elif isinstance(value, bool):
                out[env_name(name)] = "true" if value else "false"
            else:
                out[env_name(name)] = str(value)
        return out


@lru_cache(maxsize=8)
def _pod_overrides(raw: str) -> PodOverrides:
    where = env_name("pod_overrides")
    if not raw.strip():
        return PodOverrides()
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not JSON ({err.msg}); expected an object as spec.podOverrides") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{where}: expected a JSON object as spec.podOverrides")
    try:
        return PodOverrides.model_validate(parsed)
    except ValidationError as err:
        lines = format_validation_error(err)
        raise ValueError(f"{where} (the chart's trainer.podOverrides): {'; '.join(lines)}") from None


def env_name(field_name: str) -> str:
    if field_name == "trainer_image":
        return ENV_TRAINER_IMAGE
    return ENV_PREFIX + field_name.upper()


def _parse(name: str, raw: str, default: object) -> object:
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{env_name(name)}={raw!r}: expected a {type(default).__name__}") from None
    return raw
