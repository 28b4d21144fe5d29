"""Where and how a run runs: resources, storage, tracking, metrics and the run policy.

The parts of a `SpeedrunJob` spec that say nothing about the model or its training: the
operator turns them into pods, Jobs and Secrets references, and `speedrun run` reads the same
fields on one machine. Values that reach Kubernetes objects follow its own formats (kubeformats.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator

from speedrun_api import kubeformats as kf
from speedrun_api import run_env
from speedrun_api.accelerators import ACCELERATORS
from speedrun_api.spec_types import INT32_MAX, Base, PositiveInt


def _env_names(env: dict[str, str]) -> dict[str, str]:
    problems = run_env.env_problems(env)
    if problems:
        raise ValueError("; ".join(problems))
    return env


# `spec.env`: variables for every process of the run (training and eval pods, `speedrun run`).
EnvMap = Annotated[
    dict[str, Annotated[str, Field(max_length=run_env.MAX_ENV_VALUE)]],
    Field(
        max_length=run_env.MAX_ENV,
        description="Environment of the run's processes (training and eval pods, speedrun run), e.g."
        " NCCL_* settings; names the launchers set (RANK, MASTER_ADDR, SPEEDRUN_*, ...) are refused",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"self.all(k, {run_env.env_cel('k')})",
                    "message": f"every key must be {run_env.ENV_HELP} that the launchers do not set"
                    " (RANK, WORLD_SIZE, MASTER_ADDR, SPEEDRUN_*, ...)",
                }
            ]
        },
    ),
    AfterValidator(_env_names),
]


def _topology_key(key: str) -> str:
    problem = kf.label_key_problem(key)
    if problem:
        raise ValueError(problem)
    return key


# A node label key whose value names a topology domain (builders/placement.py "Topology").
TopologyKey = Annotated[
    str,
    Field(
        min_length=1,
        max_length=kf.LABEL_KEY_PREFIX_MAX + 64,
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": kf.label_key_cel("self"), "message": f"must be {kf.LABEL_KEY_HELP}"}]
        },
    ),
    AfterValidator(_topology_key),
]


class PlacementSpec(Base):
    """Where the training pods go together: one topology domain (a node label's value: a rack, an
    NVLink or network block, a zone), and optionally none of another run's pods in it."""

    topology_key: TopologyKey = Field(
        description="Node label naming the domain all training pods share, e.g."
        " cloud.google.com/gce-topology-block or topology.kubernetes.io/zone"
    )
    mode: Literal["required", "preferred"] = Field(
        "required",
        description="required: the pods wait until one domain has room for all; preferred: the scheduler"
        " (or Kueue) tries one domain first, then spreads",
    )
    exclusive: bool = Field(
        False,
        description="No other SpeedrunJob's pods in the run's domain while it runs (and this run never joins"
        " a domain that holds another's), as JobSet's exclusive placement",
    )


class ResourcesSpec(Base):
    nodes: Annotated[int, Field(ge=1, le=10_000)] | None = None
    min_nodes: Annotated[int, Field(ge=1, le=10_000)] | None = None
    max_nodes: Annotated[int, Field(ge=1, le=10_000)] | None = None
    procs_per_node: Annotated[int, Field(ge=1, le=256)] = 1
    accelerator: str = "cpu"
    device_flops: Annotated[float, Field(gt=0, le=1e18)] | None = Field(
        None, description="Peak FLOP/s per device; overrides the table"
    )
    device_memory: kf.Quantity | None = Field(
        None,
        description="Memory per device (bytes or a quantity, e.g. 80Gi): overrides the table; needed for"
        " `speedrun plan`'s memory check of an accelerator the table lacks",
    )
    cpu: kf.Quantity | None = None
    memory: kf.Quantity | None = None
    node_selector: dict[str, kf.LabelValue] = kf.node_selector_field()
    tolerations: list[kf.Toleration] = Field([], max_length=kf.MAX_TOLERATIONS)
    priority_class_name: kf.DnsSubdomain | None = None
    topology: kf.LabelValue | None = Field(None, description="TPU slice topology, e.g. 2x2x2")
    # Multi-node networking (docs/trainer.md "Multi-node"): the training pods on the node's network
    # (NCCL sees the host's NICs), and the device plugins' resources that expose RDMA NICs.
    host_network: bool = Field(
        False,
        description="Training pods use the node's network (hostNetwork, dnsPolicy ClusterFirstWithHostNet):"
        " NCCL reaches the host's NICs; the rendezvous and metrics ports become host ports",
    )
    extra_resources: dict[str, Annotated[int, Field(ge=1, le=INT32_MAX)]] = kf.extra_resources_field()
    placement: PlacementSpec | None = Field(
        None, description="Topology-aware placement of the training pods: one domain, optionally exclusive"
    )

    @field_validator("node_selector")
    @classmethod
    def _label_keys(cls, selector: dict[str, str]) -> dict[str, str]:
        problems = [p for key in selector if (p := kf.label_key_problem(key))]
        if problems:
            raise ValueError("; ".join(problems))
        return selector

    @field_validator("extra_resources")
    @classmethod
    def _extended_names(cls, extra: dict[str, int]) -> dict[str, int]:
        accelerators = {a.resource for a in ACCELERATORS.values() if a.resource}
        problems = [p for key in extra if (p := kf.extended_resource_problem(key))]
        problems += [
            f"{key} is an accelerator's resource: procsPerNode sets it" for key in extra if key in accelerators
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return extra

    @property
    def node_range(self) -> tuple[int, int]:
        if self.nodes is not None:
            return self.nodes, self.nodes
        return self.min_nodes or 1, self.max_nodes or self.min_nodes or 1

    @property
    def elastic(self) -> bool:
        lo, hi = self.node_range
        return lo != hi


class SecretRef(Base):
    name: kf.DnsSubdomain


class StorageSpec(Base):
    uri: str = Field(
        "",
        description="Where checkpoints and results go (s3://, gs:// or file:// prefix). Default: the run"
        " directory with speedrun run; in a cluster the operator's default prefix, else required",
    )
    endpoint_url: str | None = None
    secret_ref: SecretRef | None = None


class WandbSpec(Base):
    project: str = "speedrun"
    entity: str | None = None
    mode: Literal["online", "offline", "disabled"] = "disabled"
    secret_ref: SecretRef | None = None


class TrackingSpec(Base):
    wandb: WandbSpec = WandbSpec()


class MetricsSpec(Base):
    port: Annotated[int, Field(ge=1024, le=65535)] = 9400


class RunPolicy(Base):
    max_restarts: Annotated[int, Field(ge=0, le=10_000)] = 3
    active_deadline_seconds: PositiveInt | None = None
    ttl_seconds_after_finished: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None
    suspend: bool = False
    startup_deadline_seconds: Annotated[int, Field(ge=1, le=INT32_MAX)] = Field(
        3600,
        description=(
            "Fail when the training pods are not all running this long after the Job starts (Kueue's wait excluded)"
        ),
    )
    queue_name: kf.LabelValue | None = Field(None, description="Kueue LocalQueue (the Job's queue-name label)")
    # How long a torchrun agent waits for the c10d store and for the other nodes to join: rank 0's
    # pod may start minutes after the others (image pulls, node autoscaling). The agents wait at
    # least startupDeadlineSeconds (builders/train_job.py), so no rank gives up before the deadline.
    rendezvous_timeout_seconds: Annotated[int, Field(ge=60, le=86_400)] = 900
    # How long a rank waits in one collective before it fails (torch.distributed's process group
    # timeout; 600 is torch's NCCL default). A rank that dies is noticed at once (its peers' sockets
    # close, and the Job controller stops the others); a rank that hangs (its node lost, a GPU
    # stuck) only at this timeout. It must cover rank 0's checkpoint save, which the others await.
    collective_timeout_seconds: Annotated[int, Field(ge=5, le=86_400)] = 600
    max_disruptions: Annotated[int, Field(ge=0, le=10_000)] = Field(
        20,
        description=(
            "Gang restarts after a pod was preempted, evicted or lost with its node, not counted in maxRestarts; "
            "one more fails the job (MaxDisruptionsExceeded)"
        ),
    )
