"""The environment a user may add to a run's processes (`spec.env`, the chart's `trainer.env`).

Users add variables for the libraries under the trainer (NCCL_*, for instance: which network
NCCL uses is decided by its environment, trainer/speedrun_trainer/train/nccl_transport.py). The
names the launchers set themselves are refused: the operator's pods (operator builders/common.py),
`speedrun run` and torchrun each set them for the run to work (the run's storage, its id, the
rendezvous, the rank), and a user's value would break the run in a way no log explains. Secrets do
not belong here either: values are plain text in the manifest (use the spec's `secretRef`s).

Names are C identifiers (what a shell and `os.environ` take; Kubernetes allows more, but a name
with `-` or `.` cannot be read by a shell script in the image).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
MAX_ENV = 64
MAX_ENV_VALUE = 4096
MAX_ENV_NAME = 128

# Set by the operator's pods (builders/common.py), `speedrun run` (cli/local.py) or torchrun
# (torch/distributed/run.py and its elastic agent: the ranks, the master, the worker group).
RESERVED_ENV = frozenset(
    {
        "PYTHONUNBUFFERED",
        "HOME",
        "TMPDIR",
        "POD_NAME",
        "POD_IP",
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "WANDB_MODE",
        "WANDB_API_KEY",
        "JOB_COMPLETION_INDEX",
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "GROUP_WORLD_SIZE",
        "ROLE_RANK",
        "ROLE_NAME",
        "ROLE_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    }
)
RESERVED_ENV_PREFIXES = ("SPEEDRUN_", "TORCHELASTIC_")
ENV_HELP = "a C identifier ([A-Za-z_][A-Za-z0-9_]*)"


def env_name_problem(name: str) -> str | None:
    """Why `name` cannot be a user's variable, or None."""
    if not re.match(ENV_NAME_RE, name) or len(name) > MAX_ENV_NAME:
        return f"{name!r} is not {ENV_HELP} of at most {MAX_ENV_NAME} characters"
    if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES):
        return f"{name} is set by the launcher (the operator, speedrun run or torchrun) and cannot be overridden"
    return None


def env_problems(env: Mapping[str, str]) -> list[str]:
    return [p for name in env if (p := env_name_problem(name))]


def env_cel(var: str) -> str:
    """`env_name_problem(var) is None`, as a CEL expression over a map key (the CRD's rule)."""
    reserved = ", ".join(f"'{n}'" for n in sorted(RESERVED_ENV))
    prefixes = " && ".join(f"!{var}.startsWith('{p}')" for p in RESERVED_ENV_PREFIXES)
    return f"{var}.matches('{ENV_NAME_RE}') && size({var}) <= {MAX_ENV_NAME} && !({var} in [{reserved}]) && {prefixes}"


def merged_env(defaults: Mapping[str, str], own: Mapping[str, str]) -> dict[str, str]:
    """The cluster's defaults (the chart's `trainer.env`) under the run's own `spec.env`."""
    return {**defaults, **own}
