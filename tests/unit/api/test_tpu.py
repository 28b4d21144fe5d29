"""TPU slices (api/speedrun_api/tpu.py): topology -> hosts x chips, the spec's one-line refusals,
and what `speedrun plan` counts (chips as devices, the chip's HBM shown but not judged)."""

from __future__ import annotations

import pytest

from speedrun_api.accelerators import ACCELERATORS
from speedrun_api.manifest import SpecError, load_job, parse_job
from speedrun_api.memory import memory_problem, memory_verdict
from speedrun_api.plan import resolve
from speedrun_api.tpu import GENERATIONS, TopologyError, resolve_slice
from tests.support.crd_cases import tpu
from tests.support.helpers import EXAMPLES


@pytest.mark.parametrize(
    ("accelerator", "topology", "nodes", "chips", "hosts", "per_host"),
    [
        ("tpu-v5e", "1x1", None, 1, 1, 1),
        ("tpu-v5e", "2x2", None, 4, 1, 4),
        ("tpu-v5e", "2x4", None, 8, 1, 8),  # one ct5lp-hightpu-8t host
        ("tpu-v5e", "2x4", 2, 8, 2, 4),  # or two 4-chip hosts
        ("tpu-v5e", "4x4", 4, 16, 4, 4),
        ("tpu-v6e", "16x16", 64, 256, 64, 4),
        ("tpu-v5p", "2x2x1", 1, 4, 1, 4),
        ("tpu-v5p", "2x2x2", 2, 8, 2, 4),
        ("tpu-v5p", "16x16x24", None, 6144, 1536, 4),
        ("tpu-v4", "4x4x4", 16, 64, 16, 4),
    ],
)
def test_topology_resolves_to_hosts_of_chips(
    accelerator: str, topology: str, nodes: int | None, chips: int, hosts: int, per_host: int
) -> None:
    s = resolve_slice(accelerator, topology, nodes)
    assert (s.chips, s.hosts, s.chips_per_host) == (chips, hosts, per_host)


@pytest.mark.parametrize(
    ("accelerator", "topology", "message"),
    [
        ("tpu-v5e", "2x2x2", "not a 2-D topology of tpu-v5e"),
        ("tpu-v5p", "4x4", "not a 3-D topology of tpu-v5p"),
        ("tpu-v6e", "3x3", "tpu-v6e has no 3x3 slice"),
        ("tpu-v6e", "32x32", "tpu-v6e has no 32x32 slice"),
        ("tpu-v4", "1x1x1", "whole hosts of 4 chips"),
        ("tpu-v5p", "16x16x32", "at most 6144"),
        ("tpu-v4", "0x2x2", "not a 3-D topology"),
        ("tpu-v5e", "4X4", "not a 2-D topology"),
    ],
)
def test_topologies_a_generation_has_no_slice_of(accelerator: str, topology: str, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        resolve_slice(accelerator, topology)


def test_every_tpu_in_the_table_has_a_generation() -> None:
    assert {a.name for a in ACCELERATORS.values() if a.kind == "tpu"} == set(GENERATIONS)


MIN_MAX = {"spec.resources.minNodes": 4, "spec.resources.maxNodes": 4}


def refusal(doc: dict) -> str:
    with pytest.raises(SpecError) as err:
        parse_job(doc)
    [line] = err.value.lines
    return line


@pytest.mark.parametrize(
    ("doc", "line"),
    [
        (
            tpu("tpu-v5e", "4x4", 2),
            "spec.resources.nodes: 2 does not match resources.topology 4x4 of tpu-v5e (4 hosts of 4 chips)",
        ),
        (
            tpu("tpu-v5e", "4x4", 4, **{"spec.resources.nodes": None}),
            "spec.resources.nodes: 1 (the default) does not match resources.topology 4x4 of tpu-v5e"
            " (4 hosts of 4 chips)",
        ),
        (
            tpu("tpu-v5e", "2x2", 1, **{"spec.resources.procsPerNode": 4}),
            "spec.resources.procsPerNode: must be 1 for tpu-v5e (got 4): one JAX process per TPU host drives"
            " all its chips",
        ),
        (
            tpu("tpu-v5e", None, 1),
            "spec.resources.topology: required for tpu-v5e: the slice's shape, e.g. 4x4 (GKE schedules TPU"
            " slices by it)",
        ),
        (tpu("tpu-v5p", "4x4", 4), "spec.resources.topology: '4x4' is not a 3-D topology of tpu-v5p (like 2x2x2)"),
        (
            tpu("tpu-v5e", "4x4", 4, **{"spec.resources.accelerator": "cpu"}),
            "spec.resources.topology: only a TPU accelerator has a topology (got cpu)",
        ),
        (
            tpu("tpu-v5e", "4x4", 4, **{"spec.resources.nodes": None, **MIN_MAX}),
            "spec.resources.nodes: a TPU slice has a fixed host count: give nodes: 4 for 4x4 of tpu-v5e"
            " (4 hosts of 4 chips), not minNodes/maxNodes",
        ),
        (
            tpu("tpu-v5e", "4x4", 4, **{"spec.metrics.port": 8482}),
            "spec.metrics.port: must differ from 8482 on a TPU (jax.distributed's coordinator port)",
        ),
        (
            tpu("tpu-v5e", "4x4", 4, **{"spec.train.batchSize": 64}),
            "spec.train.batchSize: must divide evenly into micro-batches over all processes (batchSize 64 is not a"
            " multiple of deviceBatchSize 8 x TPU chips per host 4 x nodes 4 = 128)",
        ),
    ],
)
def test_a_slice_that_does_not_add_up_is_one_line_naming_the_field(doc: dict, line: str) -> None:
    assert refusal(doc) == line


def test_the_plan_counts_chips_and_their_peak() -> None:
    job = load_job(EXAMPLES / "tpu-v5e-16.yaml")
    plan = resolve(job)
    assert (plan.nodes, plan.procs_per_node, plan.devices_per_node, plan.num_devices) == (4, 1, 4, 16)
    assert plan.device_flops == 197e12 and plan.peak_flops == 16 * 197e12
    assert plan.grad_accum_steps == job.spec.train.batch_size // (job.spec.train.device_batch_size * 16)
    for est in plan.estimates.values():
        assert est["seconds"] == pytest.approx(est["hardware_flops"] / (16 * 197e12))


def test_tpu_memory_is_shown_against_hbm_but_never_refused() -> None:
    # A micro-batch far past 16 GiB: a GPU with that memory would be refused; the TPU plan says why not.
    job = parse_job(tpu("tpu-v5e", "2x2", 1, **{"spec.train.deviceBatchSize": 4096, "spec.train.batchSize": 16384,
                                                 "spec.model.seqLen": 4096}))  # fmt: skip
    verdict = memory_verdict(job)
    assert verdict.estimate.total > 16 * 2**30 and verdict.fits is None and memory_problem(job) is None
    assert "of 17.2 GB HBM per chip;\n  not judged" in verdict.line()
    assert verdict.to_dict()["device_memory"] == 16 * 2**30
    gpu = job.spec.model_copy(
        update={"resources": job.spec.resources.model_copy(update={"accelerator": "nvidia-l4", "topology": None})}
    )
    assert memory_verdict(job.model_copy(update={"spec": gpu})).fits is False
