"""Smoke test of bench/: our trainer and the nanoGPT-style reference both train, and the
benchmark script's JSON report has the keys the README documents. No timing assertions: the
figures depend on the machine and on what else runs on it.

Run: pytest -q tests/test_bench.py  (CPU, ~15 s)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"

SUMMARY_KEYS = {"params", "step_time_s", "best_round_step_time_s", "tokens_per_second", "mfu", "mfu_vs_measured_peak",
                "round_step_times_s", "final_loss"}
TOP_KEYS = {"device", "device_name", "threads", "loadavg_1min", "torch", "config", "model", "batch_size",
            "tokens_per_step", "dtype", "compile_ours", "warmup", "steps_per_round", "rounds",
            "training_flops_per_token", "accelerator", "peak_flops", "measured_peak_flops",
            "measured_peak_matmul", "host_syncs_in_2_steps", "ours", "reference", "speedup",
            "speedup_paired_median", "speedup_best_round"}


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # bench/ is a folder of scripts, not a package
    import bench_trainer

    return bench_trainer


def test_both_implementations_train_two_steps_on_the_same_shape(bench: ModuleType) -> None:
    spec = bench.model_spec("micro", "gelu")
    device = torch.device("cpu")
    batches = bench.Batches(spec, batch_size=2, device=device)
    ours = bench.build_ours(spec, device, compile_model=False)
    reference = bench.build_reference(spec, device)
    for contender in (ours, reference):
        losses = [contender.step(*batches.get(i)) for i in range(2)]
        assert all(loss.ndim == 0 and torch.isfinite(loss) for loss in losses)
        assert abs(float(losses[0]) - torch.log(torch.tensor(float(spec.vocab_size)))) < 0.5  # untrained
    # Same shape. The reference has more parameters: position embeddings (s x h), per layer the
    # biases (3h qkv, h out, i + h MLP) and LayerNorm biases (2h), and the final LayerNorm's bias (h).
    cfg = bench.reference_config(spec)
    h, L = spec.hidden_dim, spec.num_layers
    assert reference.params - ours.params == spec.seq_len * h + L * (7 * h + spec.intermediate_dim) + h
    assert (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_inner) == (h, L, spec.num_heads, spec.intermediate_dim)


def test_script_json_has_the_documented_keys() -> None:
    cmd = [sys.executable, str(BENCH / "bench_trainer.py"), "--device", "cpu", "--config", "micro",
           "--steps", "2", "--warmup", "1", "--rounds", "2", "--matmul-size", "256", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(out.stdout)
    assert report.keys() >= TOP_KEYS
    for name in ("ours", "reference"):
        assert report[name].keys() >= SUMMARY_KEYS
        assert len(report[name]["round_step_times_s"]) == 2
        assert report[name]["tokens_per_second"] > 0 and report[name]["mfu"] > 0
        assert report[name]["mfu_vs_measured_peak"] > 0
    assert report["device"] == "cpu" and report["accelerator"] == "cpu" and report["peak_flops"] == 1e11
    assert report["tokens_per_step"] == report["batch_size"] * report["model"]["seqLen"]
    assert report["measured_peak_flops"] > 0 and report["speedup"] > 0
