"""Operator settings: one frozen dataclass read from the environment.

`speedrun operator` turns its flags into these environment variables before kopf starts, so the
environment is the single source (the Helm chart sets the same variables). `speedrun render`
reads them too, so what it prints is what the operator would create.

| variable                                  | default                                  |
| ----------------------------------------- | ---------------------------------------- |
| SPEEDRUN_TRAINER_IMAGE                    | ghcr.io/speedrun-operator/trainer:0.1.0  |
| SPEEDRUN_OPERATOR_NAMESPACES              | "" (comma-separated; empty: all)          |
| SPEEDRUN_OPERATOR_METRICS_PORT            | 9090 (0: off)                            |
| SPEEDRUN_OPERATOR_PEERING                 | "" (auto-detect kopf peering "speedrun-operator") |
| SPEEDRUN_OPERATOR_STANDALONE              | false                                    |
| SPEEDRUN_OPERATOR_LIVENESS                | "" (e.g. http://0.0.0.0:8080/healthz)    |
| SPEEDRUN_OPERATOR_DEFAULT_STORAGE_URI     | "" (runs without spec.storage.uri fail)  |
| SPEEDRUN_OPERATOR_PROGRESS_INTERVAL       | 15 (seconds between progress scrapes)    |
| SPEEDRUN_OPERATOR_RESYNC_INTERVAL         | 60 (seconds between safety-net reconciles) |
| SPEEDRUN_OPERATOR_ACCELERATOR_SELECTORS   | true (GKE node selectors from the accelerator table) |
| SPEEDRUN_OPERATOR_IMAGE_PULL_POLICY       | IfNotPresent                             |
| SPEEDRUN_OPERATOR_EVAL_BACKOFF_LIMIT      | 2                                        |
| SPEEDRUN_OPERATOR_RUN_AS_USER             | 1000                                     |
| SPEEDRUN_OPERATOR_SERVICE_ACCOUNT         | "" (pods get no API token either way)    |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

DEFAULT_TRAINER_IMAGE = "ghcr.io/speedrun-operator/trainer:0.1.0"
DEFAULT_PEERING_NAME = "speedrun-operator"

ENV_TRAINER_IMAGE = "SPEEDRUN_TRAINER_IMAGE"
ENV_PREFIX = "SPEEDRUN_OPERATOR_"


@dataclass(frozen=True)
class OperatorSettings:
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    namespaces: tuple[str, ...] = ()
    metrics_port: int = 9090
    peering: str = ""
    standalone: bool = False
    liveness: str = ""
    default_storage_uri: str = ""
    progress_interval: float = 15.0
    resync_interval: float = 60.0
    accelerator_selectors: bool = True
    image_pull_policy: str = "IfNotPresent"
    eval_backoff_limit: int = 2
    run_as_user: int = 1000
    service_account: str = ""

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
