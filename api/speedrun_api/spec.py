"""The `SpeedrunJob` resource (`speedrun.dev/v1alpha1`): the single source of truth.

Every entry point (`speedrun plan|run|render`, the trainer, the operator) parses manifests through
these models, and the CRD is generated from them (`speedrun crd`): camelCase on the wire. Each
cross-field rule in `RULES` has a Python check and, where CEL can express it, the CRD's twin, so
`kubectl apply` rejects the manifests `speedrun plan` does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from speedrun_api import kubeformats as kf
from speedrun_api.accelerator_labels import unknown_accelerator_problem
from speedrun_api.accelerators import known_accelerators, lookup
from speedrun_api.pod_overrides import PodOverrides
from speedrun_api.spec_placement import EnvMap, MetricsSpec, ResourcesSpec, RunPolicy, StorageSpec, TrackingSpec
from speedrun_api.spec_train import ModelSpec, TrainSpec
from speedrun_api.spec_types import Base, StepCount, Uri
from speedrun_api.tpu import devices_per_node, metrics_port_problem, nodes_problem, procs_problem, topology_problem

API_GROUP = "speedrun.dev"
API_VERSION = "v1alpha1"
KIND = "SpeedrunJob"
PLURAL = "speedrunjobs"
SHORT_NAME = "srj"
RENDEZVOUS_PORT = 29400  # torchrun's c10d store on rank 0's pod (the operator's headless Service)


class Author(Base):
    name: str = "anonymous"
    affiliation: str = ""
    url: str = ""


def train_backend(spec: SpeedrunSpec) -> str:
    """`spec.train.backend`, or its default: jax on a TPU accelerator (the only way a TPU trains), else torch."""
    if spec.train.backend is not None:
        return spec.train.backend
    return "jax" if spec.resources.accelerator.startswith("tpu-") else "torch"


HORIZONS = ("steps", "tokens", "paramDataRatio", "flopsBudget")


class DataSpec(Base):
    train: Uri = Field(description="Token shards (a file, glob or prefix URI), or builtin://pydoc-topics/train")
    validation: Uri = Field(
        description="The evaluation set unless eval.bpb.data names another (one set serves"
        " targets and headline numbers)"
    )
    tokenizer: str = Field("byte", description="byte | gpt2 | URI of a tokenizers JSON")
    cache_size: kf.Quantity | None = Field(
        None,
        description="Size limit of each pod's shard cache (every file of the data URIs, downloaded whole);"
        " default: 4 x the tokens the run reads (2 or 4 bytes each) + 8Gi",
    )


class TargetSpec(Base):
    metric: Literal["val_loss", "val_bpb", "core"] = Field(
        description="Judged on the run's evaluation set (eval.bpb.data, default data.validation): val_loss ="
        " mean loss over all positions of its first eval.bpb.tokens tokens (modded-nanogpt); val_bpb ="
        " levanter's bits per byte (Marin); core = CORE on eval.core (full bundle unless maxPerTask)"
    )
    value: float


class BpbEvalSpec(Base):
    data: Uri | None = Field(
        None, description="The evaluation set: targets and headline numbers both; defaults to data.validation"
    )
    tokens: Annotated[int, Field(ge=1, le=10**10)] = 1_048_576
    rows: Literal["packed", "bos-aligned"] = Field(
        "packed",
        description="The rows nanochat_bpb is scored on: packed (consecutive seqLen windows of the stream, as"
        " every other number) or bos-aligned (nanochat dataloader.py's best-fit rows, each starting at a"
        " document; eval.bpb.tokens // seqLen of them)",
    )


class CoreEvalSpec(Base):
    bundle: Uri
    max_per_task: Annotated[int, Field(ge=1, le=10**7)] | None = None
    every: StepCount | None = Field(
        None,
        description="CORE every N steps during training, apart from evalEvery; 0: only at the end. Omit"
        " for the default: a core target, every 2000 steps and the last (nanochat's --core-metric-every);"
        " other runs, none in training (the evaluation after training scores CORE)",
    )


class EvalSpec(Base):
    bpb: BpbEvalSpec = BpbEvalSpec()
    core: CoreEvalSpec | None = None


class SpeedrunSpec(Base):
    author: Author = Author()
    description: str = ""
    image: Annotated[str, Field(max_length=4096, pattern=r"^\S+$")] | None = None
    model: ModelSpec
    train: TrainSpec
    data: DataSpec
    target: TargetSpec | None = None
    eval: EvalSpec = EvalSpec()
    resources: ResourcesSpec = ResourcesSpec()
    env: EnvMap = Field({})
    storage: StorageSpec = StorageSpec()
    tracking: TrackingSpec = TrackingSpec()
    metrics: MetricsSpec = MetricsSpec()
    run_policy: RunPolicy = RunPolicy()
    pod_overrides: PodOverrides = Field(
        PodOverrides(), description="Pod-template fields added to the run's pods (pod_overrides.py)"
    )

    @property
    def eval_data(self) -> str:
        """The one evaluation set of a run: targets are judged and headline numbers measured on it."""
        return self.eval.bpb.data or self.data.validation

    @model_validator(mode="after")
    def _cross_field_rules(self) -> SpeedrunSpec:
        problems = [msg for rule in RULES if (msg := rule.check(self))]
        if problems:
            raise ValueError("\n".join(problems))
        return self


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(min_length=1, max_length=52, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    namespace: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}

    @field_validator("name")
    @classmethod
    def _starts_with_a_letter(cls, name: str) -> str:
        # The CRD's rule (crd.py ROOT_RULES), so `speedrun plan` refuses what `kubectl apply` does:
        # the name is the headless Service's, a DNS-1035 label.
        if not name[0].isalpha():
            raise ValueError(f"must start with a letter (it names the headless Service), got {name!r}")
        return name


class SpeedrunJob(Base):
    api_version: Literal["speedrun.dev/v1alpha1"] = "speedrun.dev/v1alpha1"
    kind: Literal["SpeedrunJob"] = "SpeedrunJob"
    metadata: ObjectMeta
    spec: SpeedrunSpec
    status: dict[str, Any] | None = None

    def manifest(self) -> dict[str, Any]:
        """The wire form (camelCase, defaults filled in), without status."""
        return self.model_dump(by_alias=True, exclude={"status"}, exclude_none=True, mode="json")


# ---- cross-field rules ----------------------------------------------------------------------


class Rule:
    """One cross-field constraint: a Python check and, when expressible, its CEL twin.

    `path` is the camelCase object path the CEL rule attaches to ("" is spec); the message
    names the field so both `speedrun plan` and `kubectl apply` say the same thing. A rule without
    CEL may leave `message` empty: its check's detail is then the whole line after the field.
    """

    def __init__(self, path: str, field: str, cel: str | None, message: str, check: Any) -> None:
        self.path, self.field, self.cel, self.message, self._check = path, field, cel, message, check

    def check(self, spec: SpeedrunSpec) -> str | None:
        detail = self._check(spec)
        if not detail:
            return None
        where = ".".join(p for p in ("spec", self.path, self.field) if p)
        if not self.message:
            return f"{where}: {detail}"
        return f"{where}: {self.message}" + ("" if detail is True else f" ({detail})")


def _divisible(a: int, b: int, what: str) -> str | bool:
    return f"{a} is not a multiple of {what} {b}" if a % b else False


def _horizon(spec: SpeedrunSpec) -> str | bool:
    given = [h for h, v in zip(HORIZONS, _horizon_values(spec.train), strict=True) if v is not None]
    return f"got {', '.join(given) or 'none'}" if len(given) != 1 else False


def _horizon_values(t: TrainSpec) -> tuple[Any, ...]:
    return (t.steps, t.tokens, t.param_data_ratio, t.flops_budget)


def _batch(spec: SpeedrunSpec) -> str | bool:
    r, t = spec.resources, spec.train
    lo, hi = r.node_range
    per_node, what = devices_per_node(r), "procsPerNode"
    if per_node != r.procs_per_node:
        what = "TPU chips per host"  # deviceBatchSize is per chip: JAX shards the batch over all chips
    for n in range(lo, hi + 1):
        per_step = t.device_batch_size * per_node * n
        if t.batch_size % per_step:
            return (
                f"batchSize {t.batch_size} is not a multiple of deviceBatchSize {t.device_batch_size}"
                f" x {what} {per_node} x nodes {n} = {per_step}"
            )
    return False


def _nodes(spec: SpeedrunSpec) -> str | bool:
    r = spec.resources
    if r.nodes is not None and (r.min_nodes is not None or r.max_nodes is not None):
        return "give nodes, or minNodes+maxNodes, not both"
    if r.nodes is None and (r.min_nodes is None or r.max_nodes is None):
        if r.min_nodes is None and r.max_nodes is None:
            return False  # defaults to one node
        return "minNodes and maxNodes go together"
    if r.min_nodes is not None and r.max_nodes is not None and r.min_nodes > r.max_nodes:
        return f"minNodes {r.min_nodes} > maxNodes {r.max_nodes}"
    return False


def _accelerator(spec: SpeedrunSpec) -> str | bool:
    r = spec.resources
    if lookup(r.accelerator) is None and r.device_flops is None:
        return f"got {r.accelerator!r}; known: {known_accelerators()}"
    return unknown_accelerator_problem(r.accelerator) or False


def _target(spec: SpeedrunSpec) -> str | bool:
    t = spec.target
    if t is not None and t.metric == "core" and spec.eval.core is None:
        return "target.metric core needs eval.core.bundle"
    return False


def _env_twice(spec: SpeedrunSpec) -> str | bool:
    both = sorted({e["name"] for e in spec.pod_overrides.env} & set(spec.env))
    return f"also in spec.env: {', '.join(both)}" if both else False


RULES: list[Rule] = [
    Rule(
        "model",
        "hiddenDim",
        "self.hiddenDim % self.numHeads == 0",
        "must be divisible by numHeads",
        lambda s: _divisible(s.model.hidden_dim, s.model.num_heads, "numHeads"),
    ),
    Rule(
        "model",
        "numHeads",
        "!has(self.numKvHeads) || self.numHeads % self.numKvHeads == 0",
        "must be divisible by numKvHeads",
        lambda s: _divisible(s.model.num_heads, s.model.kv_heads, "numKvHeads"),
    ),
    Rule(
        "model",
        "hiddenDim",
        "(self.hiddenDim / self.numHeads) % 2 == 0",
        "hiddenDim / numHeads (the head dim) must be even for RoPE",
        lambda s: (s.model.hidden_dim // s.model.num_heads) % 2 == 1,
    ),
    Rule(
        "train",
        "",
        "[has(self.steps), has(self.tokens), has(self.paramDataRatio), has(self.flopsBudget)].filter(x, x).size() == 1",
        "give exactly one training horizon: steps, tokens, paramDataRatio or flopsBudget",
        _horizon,
    ),
    Rule("train", "batchSize", None, "must divide evenly into micro-batches over all processes", _batch),
    Rule(
        "resources",
        "nodes",
        "!(has(self.nodes) && (has(self.minNodes) || has(self.maxNodes)))",
        "invalid node count",
        _nodes,
    ),
    Rule(
        "resources",
        "accelerator",
        None,
        "unknown accelerator; give resources.deviceFlops for another GPU (TPUs and CPUs are the table's)",
        _accelerator,
    ),
    # TPU slices (tpu.py); their CEL twins are crd.py's, from tpu.cel_rules()
    Rule("resources", "topology", None, "", lambda s: topology_problem(s.resources)),
    Rule("resources", "procsPerNode", None, "", lambda s: procs_problem(s.resources)),
    Rule("resources", "nodes", None, "", lambda s: nodes_problem(s.resources)),
    Rule("metrics", "port", None, "", lambda s: metrics_port_problem(s.resources.accelerator, s.metrics.port)),
    Rule(
        "metrics",
        "port",
        f"!has(self.port) || self.port != {RENDEZVOUS_PORT}",
        f"must differ from the rendezvous port {RENDEZVOUS_PORT} (torchrun's c10d store)",
        lambda s: s.metrics.port == RENDEZVOUS_PORT,
    ),
    Rule(
        "",
        "eval.core",
        "!has(self.target) || self.target.metric != 'core' || has(self.eval.core)",
        "required for a CORE target",
        _target,
    ),
    Rule(
        "",
        "podOverrides.env",
        "!has(self.env) || !has(self.podOverrides.env) || self.podOverrides.env.all(e, !(e.name in self.env))",
        "a variable goes in spec.env or here, not both",
        _env_twice,
    ),
    # Kueue places a queued job itself (its topology-aware scheduling, builders/placement.py), and
    # knows no exclusive domains: it could pick a domain another run holds, where the pods then wait.
    Rule(
        "",
        "resources.placement.exclusive",
        "!has(self.runPolicy) || !has(self.runPolicy.queueName) || !has(self.resources)"
        " || !has(self.resources.placement) || !has(self.resources.placement.exclusive)"
        " || !self.resources.placement.exclusive",
        "Kueue's topology-aware scheduling (runPolicy.queueName) has no exclusive placement; drop one of them",
        lambda s: bool(s.run_policy.queue_name and s.resources.placement and s.resources.placement.exclusive),
    ),
]
