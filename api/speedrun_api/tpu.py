"""TPU slices: `resources.topology` resolved to hosts x chips, the way GKE provisions them.

A TPU slice is scheduled on GKE as one pod per host (TPU VM): the pods request `google.com/tpu:
<chips per host>` and select `cloud.google.com/gke-tpu-accelerator` and
`cloud.google.com/gke-tpu-topology`; one JAX process per host drives all its chips. So a TPU
manifest's `resources.nodes` is the slice's host count and `resources.procsPerNode` is 1, and the
plan counts chips as devices (FLOPs, MFU, gradient accumulation): a v5e `4x4` is 16 chips on
4 hosts of 4.

The shapes follow Google's tables (checked 2026-12):
- GKE "Plan TPUs in GKE", https://cloud.google.com/kubernetes-engine/docs/concepts/plan-tpus:
  v5e and v6e single-host slices are 1x1, 2x2 and 2x4 (1, 4 or 8 chips on one VM: machine types
  ct5lp-hightpu-1t/4t/8t, ct6e-standard-1t/4t/8t); multi-host slices use 4-chip VMs, 2x4 to
  16x16. v4 and v5p VMs have 4 chips; their topologies are 3-D (AxBxC), 2x2x1 a single host.
- Cloud TPU "TPU v5e", "TPU v6e", "TPU v5p", "TPU v4" pages (https://cloud.google.com/tpu/docs/v5e
  and siblings): the 2-D torus of 256 chips for v5e/v6e (8x8, 8x16, 16x16 the largest shapes),
  v5p up to 16x16x24 (6144 chips) in one slice, v4 up to 4096 chips.

2x4 is both a single host of 8 chips and two hosts of 4; `resources.nodes` picks (1 or 2).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from speedrun_api.accelerators import lookup
from speedrun_api.spec_placement import ResourcesSpec


@dataclass(frozen=True)
class Generation:
    """What one TPU generation's slices may be."""

    dims: int  # topology dimensionality: 2 (AxB) or 3 (AxBxC)
    chips_per_host: int  # of a multi-host slice's VMs
    max_chips: int  # the largest single slice
    single_host: dict[str, int]  # single-host topologies -> their chips (one VM)
    shapes: tuple[str, ...] = ()  # 2-D generations: every topology GKE offers; 3-D: any whole hosts


_V5E_V6E_SHAPES = ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16")
GENERATIONS: dict[str, Generation] = {
    "tpu-v4": Generation(3, 4, 4096, {"2x2x1": 4}),
    "tpu-v5p": Generation(3, 4, 6144, {"2x2x1": 4}),
    "tpu-v5e": Generation(2, 4, 256, {"1x1": 1, "2x2": 4, "2x4": 8}, _V5E_V6E_SHAPES),
    "tpu-v6e": Generation(2, 4, 256, {"1x1": 1, "2x2": 4, "2x4": 8}, _V5E_V6E_SHAPES),
}
EXAMPLE_SHAPE = {2: "4x4", 3: "2x2x2"}
JAX_COORDINATOR_PORT = 8482  # jax 0.12 cloud_tpu_cluster.py: the coordinator on the first TPU_WORKER_HOSTNAMES host


class TopologyError(ValueError):
    """A topology the generation has no slice of: one line, without the field path."""


@dataclass(frozen=True)
class Slice:
    accelerator: str
    topology: str
    chips: int
    hosts: int
    chips_per_host: int

    def describe(self) -> str:
        """'4x4 of tpu-v5e (4 hosts of 4 chips)'."""
        hosts = "1 host" if self.hosts == 1 else f"{self.hosts} hosts"
        chips = "1 chip" if self.chips_per_host == 1 else f"{self.chips_per_host} chips"
        return f"{self.topology} of {self.accelerator} ({hosts} of {chips})"


def resolve_slice(accelerator: str, topology: str, nodes: int | None = None) -> Slice:
    """`topology` of the TPU `accelerator` as chips, hosts and chips per host; TopologyError when
    the generation has no such slice. `nodes` only settles 2x4 of v5e/v6e (1 host of 8 chips or
    2 of 4); any other topology has one layout, whatever `nodes` says."""
    gen = GENERATIONS[accelerator]
    pattern = r"[1-9][0-9]{0,3}" + r"x[1-9][0-9]{0,3}" * (gen.dims - 1)
    if not re.fullmatch(pattern, topology):
        raise TopologyError(
            f"{topology!r} is not a {gen.dims}-D topology of {accelerator} (like {EXAMPLE_SHAPE[gen.dims]})"
        )
    chips = math.prod(int(d) for d in topology.split("x"))
    if gen.shapes and topology not in gen.shapes:
        raise TopologyError(f"{accelerator} has no {topology} slice; it has {', '.join(gen.shapes)}")
    if topology in gen.single_host and not (topology == "2x4" and nodes == 2):
        return Slice(accelerator, topology, chips, 1, gen.single_host[topology])
    if chips % gen.chips_per_host or chips > gen.max_chips:
        raise TopologyError(
            f"{topology} is {chips} chips; a {accelerator} slice is whole hosts of {gen.chips_per_host}"
            f" chips, at most {gen.max_chips}"
        )
    return Slice(accelerator, topology, chips, chips // gen.chips_per_host, gen.chips_per_host)


def is_tpu(accelerator: str) -> bool:
    acc = lookup(accelerator)
    return acc is not None and acc.kind == "tpu"


def slice_of(resources: ResourcesSpec) -> Slice | None:
    """The TPU slice of `resources`, or None (not a TPU, no topology, or a topology that does not
    resolve: the spec's rules report those)."""
    if resources.accelerator not in GENERATIONS or not resources.topology:
        return None
    try:
        return resolve_slice(resources.accelerator, resources.topology, resources.nodes)
    except TopologyError:
        return None


def devices_per_node(resources: ResourcesSpec) -> int:
    """Devices one node (pod) trains on: a TPU host's chips, else procsPerNode (one GPU each)."""
    tpu = slice_of(resources)
    return tpu.chips_per_host if tpu is not None else resources.procs_per_node


# ---- the spec's rules (spec.RULES) and their CEL twins (crd.py) ------------------------------


def topology_problem(r: ResourcesSpec) -> str | bool:
    """spec.resources.topology: required for a TPU, a slice of its generation, absent otherwise."""
    if r.accelerator not in GENERATIONS:
        return f"only a TPU accelerator has a topology (got {r.accelerator})" if r.topology else False
    if not r.topology:
        example = EXAMPLE_SHAPE[GENERATIONS[r.accelerator].dims]
        return f"required for {r.accelerator}: the slice's shape, e.g. {example} (GKE schedules TPU slices by it)"
    try:
        resolve_slice(r.accelerator, r.topology, r.nodes)
    except TopologyError as err:
        return str(err)
    return False


def procs_problem(r: ResourcesSpec) -> str | bool:
    """spec.resources.procsPerNode: one JAX process per TPU host drives all its chips."""
    if r.accelerator in GENERATIONS and r.procs_per_node != 1:
        return (
            f"must be 1 for {r.accelerator} (got {r.procs_per_node}): one JAX process per TPU host drives all its chips"
        )
    return False


def nodes_problem(r: ResourcesSpec) -> str | bool:
    """spec.resources.nodes: the slice's host count, fixed (a TPU slice does not grow or shrink)."""
    tpu = slice_of(r)
    if tpu is None:
        return False
    if r.min_nodes is not None or r.max_nodes is not None:
        return (
            f"a TPU slice has a fixed host count: give nodes: {tpu.hosts} for {tpu.describe()}, not minNodes/maxNodes"
        )
    if r.nodes != tpu.hosts:
        got = "1 (the default)" if r.nodes is None else str(r.nodes)
        return f"{got} does not match resources.topology {tpu.describe()}"
    return False


def metrics_port_problem(accelerator: str, port: int) -> str | bool:
    """spec.metrics.port: on a TPU, process 0's pod also listens on jax.distributed's port."""
    if accelerator in GENERATIONS and port == JAX_COORDINATOR_PORT:
        return f"must differ from {JAX_COORDINATOR_PORT} on a TPU (jax.distributed's coordinator port)"
    return False


def cel_rules() -> list[dict[str, str]]:
    """The rules above as far as CEL states them, on `resources` (`has()` first: the apiserver
    checks rules against the object before nested defaults fill it). The host count of a 3-D
    slice (a product of its dimensions) has no CEL twin: the operator's admission checks it."""
    names = "[" + ", ".join(f"'{n}'" for n in GENERATIONS) + "]"
    tpu = f"(has(self.accelerator) && self.accelerator in {names})"
    rules = [
        (f"!{tpu} || has(self.topology)", "topology", "spec.resources.topology: required for a TPU accelerator"),
        (f"!has(self.topology) || {tpu}", "topology", "spec.resources.topology: only a TPU accelerator has one"),
        (
            f"!{tpu} || !has(self.procsPerNode) || self.procsPerNode == 1",
            "procsPerNode",
            "spec.resources.procsPerNode: must be 1 for a TPU (one JAX process per host)",
        ),
    ]
    for name, gen in GENERATIONS.items():
        if gen.dims == 3:
            shape = r"^[1-9][0-9]{0,3}x[1-9][0-9]{0,3}x[1-9][0-9]{0,3}$"
            rule = f"!has(self.accelerator) || self.accelerator != '{name}' || !has(self.topology) || "
            rules.append(
                (rule + f"self.topology.matches('{shape}')", "topology", f"spec.resources.topology: {name} takes AxBxC")
            )
            continue
        hosts = {s: _hosts_allowed(name, s) for s in gen.shapes}
        table = "{" + ", ".join(f"'{s}': [{', '.join(map(str, h))}]" for s, h in hosts.items()) + "}"
        guard = f"!has(self.accelerator) || self.accelerator != '{name}' || !has(self.topology) || "
        shapes = "[" + ", ".join(f"'{s}'" for s in gen.shapes) + "]"
        rules.append(
            (
                guard + f"self.topology in {shapes}",
                "topology",
                f"spec.resources.topology: {name} takes {', '.join(gen.shapes)}",
            )
        )
        rules.append(
            (
                guard + f"!(self.topology in {shapes}) || has(self.minNodes) || "
                f"(has(self.nodes) ? self.nodes : 1) in {table}[self.topology]",
                "nodes",
                f"spec.resources.nodes: must be the host count of the {name} slice resources.topology",
            )
        )
    return [{"rule": rule, "message": msg, "fieldPath": "." + field} for rule, field, msg in rules]


def _hosts_allowed(accelerator: str, topology: str) -> list[int]:
    return sorted({resolve_slice(accelerator, topology, n).hosts for n in (1, 2)})
