"""The JAX backend (spec.train.backend: jax) on CPU, in its Python 3.12 venv (tests/support/jax_env.py).

- Its step equals the torch trainer's: the same GPT, data, schedule, clipping and optimizer
  (AdamW; Muon with fp32 Newton-Schulz; Muon with the document mask), 50 fp32 steps on real
  text, loss curves within 1e-4 and parameters within 1e-4 (measured on 2 devices: AdamW 5e-7
  and 2e-6, Muon 5e-6 and 8e-6).
  The rates train without loss spikes: at AdamW lr 0.003 a spike at step 24 amplifies the 1e-6
  rounding differences to 1e-2 by step 45, as it would between two torch runs on different
  kernels; the 23 steps before it agree within 1e-6.
- `JaxEvalModel`, what its in-loop validation and CORE score, gives the torch GPT's logits and
  per-token losses (1e-5), past seqLen too.
- 2 processes x 2 devices joined by `jax.distributed` over loopback train as 1 process x 4
  devices: the same losses, validation and final parameters (within 1e-5: only the reduction
  order differs).
- A checkpoint it writes, evaluated by the torch evaluation (`python -m speedrun_trainer.evaluation`),
  scores the BPB and loss the JAX run's own in-loop validation gave at that step.
- Resuming from its step-10 checkpoint (parameters, optax state, data position) ends at step 20
  where the uninterrupted run did (1e-6).
- `speedrun run` of a `train.backend: jax` manifest trains, evaluates and writes results with the
  keys a torch-backend run writes.
- `precision: fp8` (torch only) is one invalid-config line, exit 2.
- bench/tpu_device_check.py's `--cpu` smoke: its sections run and its report holds their figures.
In the e2e tier: each case starts jax (seconds) and the first builds the venv (minutes cold).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speedrun_trainer.cli.launch import free_port
from tests.support.helpers import tiny_manifest, write_manifest
from tests.support.jax_env import REPO, jax_python, run_in_venv, venv_env

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "jax_vs_torch.py"
MUON = {"name": "muon", "learningRate": 0.02, "weightDecay": 0.01, "warmupSteps": 5, "decay": 0.4, "maxGradNorm": 1.0}
ADAMW = {"name": "adamw", "learningRate": 0.001, "weightDecay": 0.1, "warmupSteps": 5, "decay": 0.4, "maxGradNorm": 1.0}


def _jax_job(tmp_path: Path, **changes) -> Path:
    """The tiny CPU job on the JAX backend: 8 sequences of 64 per step, deviceBatchSize 2."""
    doc = tiny_manifest(
        **{
            "spec.train.backend": "jax",
            "spec.train.deviceBatchSize": 2,
            "spec.train.logEvery": 5,
            "spec.resources.nodes": 1,
            **changes,
        }
    )
    return write_manifest(tmp_path / "job.yaml", doc)


@pytest.mark.parametrize(
    ("optimizer", "mask"), [(ADAMW, False), (MUON, False), (MUON, True)], ids=["adamw", "muon", "muon-document-mask"]
)
def test_jax_step_equals_the_torch_trainer(tmp_path: Path, optimizer: dict, mask: bool):
    changes = {"spec.train.steps": 50, "spec.train.optimizer": optimizer, "spec.model.documentMask": mask}
    manifest = _jax_job(tmp_path, **changes)
    out = tmp_path / "out.json"
    run_in_venv([str(SCRIPT), str(manifest), str(out), "50"], devices=2)
    r = json.loads(out.read_text())
    assert r["devices"] == 2
    assert r["torch"][-1] < r["torch"][0] - 1.0, r["torch"]  # it trains: a curve worth comparing
    worst = max(abs(a - b) for a, b in zip(r["torch"], r["jax"], strict=True))
    assert worst < 1e-4, (worst, r["torch"], r["jax"])
    assert r["param_diff"] < 1e-4
    assert abs(r["converted_loss"] - r["jax_loss"]) < 1e-5  # the torch view of the JAX parameters


def test_the_jax_evaluation_model_equals_the_torch_gpt(tmp_path: Path):
    """What the JAX loop's validation and CORE score: logits and per-token losses as the torch GPT's,
    below, at and past seqLen (padded to a bucket on the JAX side, cut back)."""
    out = tmp_path / "out.json"
    run_in_venv([str(SCRIPT), str(_jax_job(tmp_path)), str(out), "eval-model"])
    r = json.loads(out.read_text())
    for row in r["rows"]:
        w = row["width"]
        assert row["shapes"] == [[3, w, 264], [3, w]], row
        assert row["logits"] < 1e-5 and row["losses"] < 1e-5, row
    assert r["training_after"] is True  # the module is left in training mode for the training jit


def _train(manifest: Path, storage: Path, processes: int, devices: int) -> list[str]:
    """jax_main in `processes` processes of `devices` CPU devices each; returns their logs."""
    port = free_port()
    procs = []
    for i in range(processes):
        join = {"SPEEDRUN_JAX_COORDINATOR": f"127.0.0.1:{port}", "SPEEDRUN_JAX_NUM_PROCESSES": str(processes)}
        env = venv_env(devices, SPEEDRUN_STORAGE_URI=storage.as_uri(), **join, SPEEDRUN_JAX_PROCESS_ID=str(i))
        cmd = [str(jax_python()), "-m", "speedrun_trainer.train.jax_main", "--config", str(manifest)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    logs = [p.communicate(timeout=600)[0].decode() for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-4000:]
    return logs


def _final_model(storage: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(storage / "checkpoints" / f"model_{step:06d}.pt", map_location="cpu")


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory) -> tuple[Path, Path, Path, list[str]]:
    tmp = tmp_path_factory.mktemp("jax")
    manifest = _jax_job(tmp, **{"spec.train.optimizer": MUON, "spec.train.evalEvery": 10})
    one, two = tmp / "one", tmp / "two"
    _train(manifest, one, processes=1, devices=4)
    logs = _train(manifest, two, processes=2, devices=2)
    return manifest, one, two, logs


def test_two_processes_train_as_one_with_the_same_devices(one_and_two):
    _, one, two, logs = one_and_two
    assert "jax backend: 2 process(es) x 2 cpu device(s)" in logs[0]
    a = json.loads((one / "train_summary.json").read_text())
    b = json.loads((two / "train_summary.json").read_text())
    assert (a["num_devices"], b["num_devices"], a["world_size"], b["world_size"]) == (4, 4, 1, 2)
    assert a["step"] == b["step"] == 20
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
    for pa, pb in zip(a["history"], b["history"], strict=True):
        assert pa["step"] == pb["step"] and abs(pa["val_loss"] - pb["val_loss"]) < 1e-5
    ma, mb = _final_model(one, 20), _final_model(two, 20)
    assert max(float((ma[k] - mb[k]).abs().max()) for k in ma) < 1e-5


def test_torch_evaluation_of_a_jax_checkpoint_scores_what_jax_had(one_and_two, tmp_path: Path):
    manifest, one, _, _ = one_and_two
    summary = json.loads((one / "train_summary.json").read_text())
    assert summary["backend"] == "jax"
    run_in_venv(
        ["-m", "speedrun_trainer.evaluation", "--config", str(manifest)],
        SPEEDRUN_STORAGE_URI=one.as_uri(),
        SPEEDRUN_TERMINATION_LOG=str(tmp_path / "termination.json"),
    )
    info = json.loads((one / "speedrun_results.json").read_text())["runs"][0]["run_info"]
    assert info["training_steps"] == 20
    assert abs(info["eval/builtin://pydoc-topics/val/bpb"] - summary["val_bpb"]) < 1e-5
    assert abs(info["val_loss"] - summary["val_loss"]) < 1e-5
    assert info["eval/builtin://pydoc-topics/val/bpb"] < info["initial_bpb"] - 0.5  # the trained weights


def test_resume_from_a_jax_checkpoint_continues_the_same_run(one_and_two, tmp_path: Path):
    """Step 10's checkpoint (parameters, optax state, data position) resumed: step 20 as if never stopped."""
    manifest, one, _, _ = one_and_two
    storage = tmp_path / "resumed"
    shutil.copytree(one, storage)
    for path in [storage / "train_summary.json", *(storage / "checkpoints").glob("*_000020.*")]:
        path.unlink()
    [log] = _train(manifest, storage, processes=1, devices=4)
    assert "resumed from" in log and "at step 10" in log, log[-3000:]
    ma, mb = _final_model(one, 20), _final_model(storage, 20)
    assert max(float((ma[k] - mb[k]).abs().max()) for k in ma) < 1e-6


def test_speedrun_run_with_the_jax_backend_writes_the_torch_backends_keys(tmp_path: Path):
    """2 nodes x 2 devices under `speedrun run`, against the same job on torch (2 x 2 processes)."""
    doc = tiny_manifest(**{"spec.train.deviceBatchSize": 2, "spec.resources.procsPerNode": 2})
    torch_job = write_manifest(tmp_path / "torch.yaml", doc)
    jax_job = write_manifest(
        tmp_path / "jax.yaml", {**doc, "spec": {**doc["spec"], "train": {**doc["spec"]["train"], "backend": "jax"}}}
    )
    cli = ["-m", "speedrun_trainer.cli", "run"]
    done = run_in_venv([*cli, str(jax_job), "--runs-dir", str(tmp_path / "jax")])
    assert "the final evaluation of step 20" in done.stdout, done.stdout + done.stderr
    assert "starting 2 jax_main process(es)" in done.stderr
    torch_run = subprocess.run(
        [sys.executable, *cli, str(torch_job), "--runs-dir", str(tmp_path / "torch")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert torch_run.returncode == 0, torch_run.stdout + torch_run.stderr
    [jax_dir] = (tmp_path / "jax" / "test-tiny").iterdir()
    [torch_dir] = (tmp_path / "torch" / "test-tiny").iterdir()
    jax_info = json.loads((jax_dir / "speedrun_results.json").read_text())["runs"][0]["run_info"]
    torch_info = json.loads((torch_dir / "speedrun_results.json").read_text())["runs"][0]["run_info"]
    assert sorted(jax_info) == sorted(torch_info)
    assert jax_info["num_devices"] == torch_info["num_devices"] == 4
    assert jax_info["eval/builtin://pydoc-topics/val/bpb"] < jax_info["initial_bpb"]


def test_fp8_on_the_jax_backend_is_one_invalid_config_line(tmp_path: Path):
    manifest = _jax_job(tmp_path, **{"spec.train.precision": "fp8"})
    env = venv_env(2, SPEEDRUN_STORAGE_URI=(tmp_path / "run").as_uri())
    cmd = [str(jax_python()), "-m", "speedrun_trainer.train.jax_main", "--config", str(manifest)]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("invalid config: spec.train.precision: fp8 needs the torch backend")
    )
    assert "Traceback" not in done.stderr


def test_the_tpu_device_check_runs_on_cpu(tmp_path: Path):
    """bench/tpu_device_check.py --cpu (4 host devices, micro config): every section runs, the JAX
    step's first losses match the torch step's, and the report holds the speed row and targets."""
    report = tmp_path / "report.json"
    done = run_in_venv([str(REPO / "bench" / "tpu_device_check.py"), "--cpu", "--json", "--out", str(report)])
    res = json.loads(report.read_text())
    assert json.loads(done.stdout) == res
    s = res["sections"]
    assert [s[k]["status"] for k in ("devices", "reference", "speed")] == ["ok"] * 3, s
    assert (s["devices"]["backend"], s["devices"]["local_devices"], s["devices"]["accelerator"]) == ("cpu", 4, "cpu")
    assert len(s["reference"]["jax"]) == 3 and s["reference"]["max_abs_diff"] < 1e-4
    row = s["speed"]["rows"]["micro"]
    assert row["tokens_per_second"] > 0 and row["mfu"] > 0 and row["peak_bytes_in_use"] is None  # no HBM on CPU
    verdicts = {t["target"]: t["pass"] for t in res["targets"]}
    assert verdicts == {"jax sees TPU devices": None, "first losses within 1e-4": True, "micro bf16 tokens/s": None,
                        "micro bf16 MFU": None, "micro HBM peak bytes": None}  # fmt: skip
    assert "largest |diff|" in done.stderr and "micro bf16 MFU" in done.stderr
