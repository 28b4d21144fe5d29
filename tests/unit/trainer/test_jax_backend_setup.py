"""The JAX backend's set-up that needs no jax: which backend a spec gets, how jax_main's processes
find each other (docs/contracts.md, "JAX backend entry point"), and `speedrun run` refusing a jax
run in a Python without jax. The backend itself is tested in its venv: tests/e2e/test_jax_backend.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from speedrun_api.manifest import ConfigError, parse_job
from speedrun_api.spec import train_backend
from speedrun_trainer.cli.launch import jax_process_env, missing_jax
from speedrun_trainer.cli.speedrun import main
from speedrun_trainer.train.jax_main import EXPLICIT, GKE_TPU, check_platform, join_args
from speedrun_trainer.train.runtime import DeviceError
from tests.support.helpers import tiny_manifest, write_manifest

TPU = {  # one host of 4 chips, 2 sequences per chip
    "spec.resources.accelerator": "tpu-v5e",
    "spec.resources.topology": "2x2",
    "spec.resources.nodes": 1,
    "spec.train.deviceBatchSize": 2,
}


@pytest.mark.parametrize(
    ("changes", "backend"),
    [
        ({}, "torch"),
        (TPU, "jax"),
        ({"spec.train.backend": "jax"}, "jax"),
        ({**TPU, "spec.train.backend": "torch"}, "torch"),
    ],
)
def test_backend_default_is_jax_on_tpus_only(changes, backend):
    assert train_backend(parse_job(tiny_manifest(**changes)).spec) == backend


def test_join_explicit_coordinator():
    env = {
        "SPEEDRUN_JAX_COORDINATOR": "10.0.0.1:8476",
        "SPEEDRUN_JAX_NUM_PROCESSES": "4",
        "SPEEDRUN_JAX_PROCESS_ID": "3",
    }
    assert join_args(env) == {"coordinator_address": "10.0.0.1:8476", "num_processes": 4, "process_id": 3, **EXPLICIT}


@pytest.mark.parametrize("fallback", ["TPU_WORKER_ID", "JOB_COMPLETION_INDEX"])
def test_join_process_id_falls_back_to_the_pods_index(fallback):
    env = {"SPEEDRUN_JAX_COORDINATOR": "h:1", "SPEEDRUN_JAX_NUM_PROCESSES": "2", fallback: "1"}
    assert join_args(env)["process_id"] == 1


@pytest.mark.parametrize(
    "env",
    [
        {"SPEEDRUN_JAX_COORDINATOR": "h:1"},  # no process count
        {"SPEEDRUN_JAX_COORDINATOR": "h:1", "SPEEDRUN_JAX_NUM_PROCESSES": "2"},  # no id anywhere
        {"SPEEDRUN_JAX_COORDINATOR": "h:1", "SPEEDRUN_JAX_NUM_PROCESSES": "2", "SPEEDRUN_JAX_PROCESS_ID": "2"},
    ],
)
def test_join_incomplete_is_one_config_error_naming_the_variable(env):
    with pytest.raises(ConfigError, match="SPEEDRUN_JAX_"):
        join_args(env)


def test_join_gke_multi_host_slice_lets_jax_read_its_variables():
    assert join_args({"TPU_WORKER_HOSTNAMES": "w-0.svc,w-1.svc", "TPU_WORKER_ID": "1"}) == GKE_TPU


def test_a_cpu_host_playing_a_tpu_host_joins_as_jaxs_gke_cluster_would():
    """jax reads the GKE variables only where libtpu found a TPU: on CPU the join is explicit."""
    env = {"TPU_WORKER_HOSTNAMES": "w-0.svc,w-1.svc", "TPU_WORKER_ID": "1", "SPEEDRUN_JAX_PLATFORM": "cpu"}
    assert join_args(env) == {"coordinator_address": "w-0.svc:8482", "num_processes": 2, "process_id": 1, **EXPLICIT}
    with pytest.raises(ConfigError, match="TPU_WORKER_ID must be an integer"):
        join_args({**env, "TPU_WORKER_ID": ""})


def test_a_tpu_manifest_trains_on_the_cpu_only_when_told_to():
    job = parse_job(tiny_manifest(**TPU))
    with pytest.raises(DeviceError, match="jax's backend here is cpu, not tpu"):
        check_platform(job, "cpu")  # libtpu found no TPU: never a silent fallback
    with pytest.raises(DeviceError, match="jax's backend here is cpu, not tpu"):
        check_platform(job, "cpu", forced="tpu")  # what the operator sets
    check_platform(job, "cpu", forced="cpu")  # SPEEDRUN_JAX_PLATFORM=cpu: the CPU stands in
    check_platform(job, "tpu", forced="tpu")


@pytest.mark.parametrize("env", [{}, {"TPU_WORKER_HOSTNAMES": "w-0.svc", "TPU_WORKER_ID": "0"}])
def test_one_host_is_one_process(env):
    assert join_args(env) is None


def test_speedrun_run_gives_each_node_its_rank_and_cpu_devices():
    job = parse_job(
        tiny_manifest(
            **{"spec.train.backend": "jax", "spec.resources.procsPerNode": 2, "spec.train.deviceBatchSize": 2}
        )
    )
    env = jax_process_env(job, {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}, 1234, 1)
    assert env["SPEEDRUN_JAX_COORDINATOR"] == "127.0.0.1:1234"
    assert (env["SPEEDRUN_JAX_NUM_PROCESSES"], env["SPEEDRUN_JAX_PROCESS_ID"]) == ("2", "1")
    assert env["SPEEDRUN_JAX_PLATFORM"] == "cpu"
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=2"
    assert join_args(env) == {"coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 1, **EXPLICIT}


def test_speedrun_run_refuses_jax_without_it_in_one_line(tmp_path: Path, capsys):
    if missing_jax() is None:
        pytest.skip("this Python has jax, torchax and optax: nothing to refuse")
    manifest = write_manifest(tmp_path / "job.yaml", tiny_manifest(**{"spec.train.backend": "jax"}))
    assert main(["run", str(manifest), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("speedrun run: spec.train.backend: jax needs "), err
    assert "requirements/jax.txt" in err[0]
    assert not (tmp_path / "runs").exists()  # refused before anything starts


JAX_PACKAGES = {"jax", "jaxlib", "torchax", "optax"}
JAX_MODULES = {"jax_main", "jax_loop", "jax_step"}


def _imports(path: Path) -> set[str]:
    """Every module `path` imports anywhere (lazy imports in functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_only_the_jax_modules_import_jax():
    """The torch path never loads jax: jax, torchax and optax are imported by train/jax_*.py
    only, and those modules by each other only (jax_main's own jax imports wait for main())."""
    trainer = Path(__file__).resolve().parents[3] / "trainer" / "speedrun_trainer"
    for path in trainer.rglob("*.py"):
        imported = _imports(path)
        jaxish = {m for m in imported if m.split(".")[0] in JAX_PACKAGES}
        ours = {m for m in imported if m.rsplit(".", 1)[-1] in JAX_MODULES}
        if path.stem not in JAX_MODULES:
            assert not jaxish and not ours, f"{path.relative_to(trainer)} imports {sorted(jaxish | ours)}"
