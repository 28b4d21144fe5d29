"""Smoke test of bench/: our real training step, the nanoGPT-style reference and the modded-nanogpt
re-implementation all train, and the benchmark script's JSON report has the keys bench/README.md
documents (ours a second time at the trainer's default precision where that is bf16 here); the
printed table names each row's precision. No timing assertions: the figures depend on the
machine and on what else runs on it.

bench/device_check.py --smoke runs its sections on the micro config (the CUDA-only parts say why
they are skipped), stops a section at its budget, and calls the memory estimator as assumed.

Run: pytest -q tests/unit/test_bench.py  (CPU, ~45 s)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

from speedrun_trainer.train.runtime import native_bf16_matmul
from tests.support.helpers import ROOT

BENCH = ROOT / "bench"

SUMMARY_KEYS = {
    "params",
    "step_time_s",
    "best_round_step_time_s",
    "tokens_per_second",
    "mfu",
    "mfu_vs_measured_peak",
    "round_step_times_s",
    "final_loss",
    "cpu_time_per_step_s",
    "round_cpu_times_s",
}
TOP_KEYS = {
    "device",
    "device_name",
    "threads",
    "loadavg_1min",
    "torch",
    "config",
    "model",
    "batch_size",
    "tokens_per_step",
    "dtype",
    "compile_ours",
    "warmup",
    "steps_per_round",
    "rounds",
    "training_flops_per_token",
    "accelerator",
    "peak_flops",
    "measured_peak_flops",
    "measured_peak_matmul",
    "host_syncs_in_2_steps",
    "ours",
    "reference",
    "modded",
    "speedup",
    "speedup_paired_median",
    "speedup_best_round",
    "speedup_vs_modded",
    "speedup_vs_modded_paired_median",
    "speedup_vs_modded_best_round",
    "precision_ours",
    "optimizer_ours",
    "speedup_cpu_time",
    "speedup_vs_modded_cpu_time",
    "ours_default",
    "precision_ours_default",
    "dtype_ours_default",
    "measured_peak_flops_default",
    "speedup_default",
    "speedup_default_paired_median",
    "speedup_default_best_round",
    "speedup_default_cpu_time",
    "speedup_default_vs_modded",
    "speedup_default_vs_modded_paired_median",
    "speedup_default_vs_modded_best_round",
    "speedup_default_vs_modded_cpu_time",
}


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # bench/ is a folder of scripts, not a package
    import bench_trainer

    return bench_trainer


def test_all_three_train_two_steps_on_the_same_shape(bench: ModuleType, tmp_path: Path) -> None:
    import contenders

    spec = contenders.model_spec("micro", "relu2")
    device = torch.device("cpu")
    tokens, uri = contenders.token_stream(spec, 2, tmp_path)
    ours = contenders.build_ours(
        spec,
        device,
        compile_model=False,
        optimizer="muon",
        precision="bf16",
        shard_uri=uri,
        batch_size=2,
        cache_dir=tmp_path,
        ddp=False,
    )
    reference = contenders.build_reference(spec, device, tokens, 2)
    modded = contenders.build_modded(spec, device, tokens, 2, compile_model=False, ddp=False)
    try:
        for contender in (ours, reference, modded):
            losses = [contender.step() for _ in range(2)]
            assert all(loss.ndim == 0 and torch.isfinite(loss) for loss in losses)
            assert abs(float(losses[0]) - torch.log(torch.tensor(float(spec.vocab_size)))) < 0.5  # untrained
    finally:
        ours.close()
    # Same shape. The reference has more parameters: position embeddings (s x h), per layer the
    # biases (3h qkv, h out, i + h MLP) and LayerNorm biases (2h), and the final LayerNorm's bias (h).
    # LayerNorm weights and our RMSNorm gains cancel; ours adds QK-norm gains (2d per layer). Modded's
    # norms have no weights at all: ours has 2d + 2h per layer and h more.
    cfg = contenders.reference_config(spec)
    h, L, d = spec.hidden_dim, spec.num_layers, spec.head_dim
    assert reference.params - (ours.params - L * 2 * d) == (spec.seq_len * h + L * (7 * h + spec.intermediate_dim) + h)
    assert ours.params - modded.params == L * (2 * d + 2 * h) + h
    assert (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_inner) == (h, L, spec.num_heads, spec.intermediate_dim)


def test_modded_newton_schulz_orthogonalises(bench: ModuleType) -> None:
    import modded_gpt

    g = torch.randn(48, 96, generator=torch.Generator().manual_seed(0))
    for m in (g, g.T):
        sv = torch.linalg.svdvals(modded_gpt.newtonschulz5(m).float())
        assert sv.min() > 0.5 and sv.max() < 1.5, sv


def test_modded_uses_128_wide_heads_at_gpt2_size(bench: ModuleType) -> None:
    import contenders

    assert contenders.modded_config(contenders.model_spec("gpt2-124m", "relu2")).n_head == 6  # 6 x 128
    assert contenders.modded_config(contenders.model_spec("tiny", "relu2")).n_head == 4


def test_script_json_has_the_documented_keys() -> None:
    cmd = [
        sys.executable,
        str(BENCH / "bench_trainer.py"),
        "--device",
        "cpu",
        "--config",
        "micro",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--rounds",
        "2",
        "--matmul-size",
        "256",
        "--json",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(out.stdout)
    assert report.keys() >= TOP_KEYS
    for name in ("ours", "reference", "modded"):
        assert report[name].keys() >= SUMMARY_KEYS
        assert len(report[name]["round_step_times_s"]) == 2
        assert report[name]["tokens_per_second"] > 0 and report[name]["mfu"] > 0
        assert report[name]["mfu_vs_measured_peak"] > 0
    assert report["device"] == "cpu" and report["accelerator"] == "cpu" and report["peak_flops"] == 1e11
    assert report["tokens_per_step"] == report["batch_size"] * report["model"]["seqLen"]
    assert report["measured_peak_flops"] > 0 and report["speedup"] > 0 and report["speedup_vs_modded"] > 0
    assert report["optimizer_ours"] == "muon" and report["precision_ours"] == "fp32"
    # The trainer's default precision (bf16) is a second row of ours only where it autocasts here.
    if native_bf16_matmul(torch.device("cpu")):
        assert report["precision_ours_default"] == "bf16" and report["dtype_ours_default"] == "bfloat16 autocast"
        assert report["ours_default"].keys() >= SUMMARY_KEYS and report["measured_peak_flops_default"] > 0
        assert report["speedup_default"] > 0 and report["speedup_default_vs_modded_cpu_time"] > 0
    else:
        assert report["ours_default"] is None and report["precision_ours_default"] is None
        assert report["speedup_default"] is None


def test_report_labels_each_row_with_its_precision(bench: ModuleType) -> None:
    import trainer_report

    row = {
        "params": 1,
        "step_time_s": 0.1,
        "tokens_per_second": 10.0,
        "mfu": 0.1,
        "mfu_vs_measured_peak": 0.2,
        "cpu_time_per_step_s": 0.1,
    }
    res = {
        "config": "tiny",
        "device_name": "cpu",
        "device": "cpu",
        "threads": 1,
        "dtype": "float32",
        "tokens_per_step": 1,
        "rounds": 1,
        "steps_per_round": 1,
        "loadavg_1min": {"before": 0, "after": 0},
        "accelerator": "cpu",
        "peak_flops": 1e11,
        "measured_peak_flops": 9e10,
        "measured_peak_flops_default": 2e11,
        "measured_peak_matmul": {"dtype": "float32"},
        "precision_ours": "fp32",
        "precision_ours_default": "bf16",
        "dtype_ours_default": "bfloat16 autocast",
        "ours": row,
        "ours_default": row,
        "reference": row,
        "modded": row,
    }
    for key in ("speedup", "speedup_vs_modded", "speedup_default", "speedup_default_vs_modded"):
        for suffix in ("", "_paired_median", "_best_round", "_cpu_time"):
            res[key + suffix] = 1.5
    text = trainer_report.report(res)
    assert "speedup ours fp32 / reference fp32 (like for like): 1.50x" in text
    assert "speedup ours bf16 (default) / reference fp32 (the trainer's default vs nanoGPT as it runs): 1.50x" in text
    assert "ours bf16 (default)" in trainer_report.labels(res).values()


def test_device_check_smoke_runs_every_section_or_says_why_not() -> None:
    """bench/device_check.py --smoke on CPU: the speed and host-sync sections run on the micro
    config, the memory section calls the estimator (or says it is not there), the CUDA-only parts
    say why they were skipped, and the targets are listed, unjudged off CUDA."""
    cmd = [sys.executable, str(BENCH / "device_check.py"), "--smoke", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    res = json.loads(out.stdout)
    s = res["sections"]
    assert res["device"] == "cpu" and res["smoke"] is True
    assert s["speed"]["status"] == "ok" and set(s["speed"]["rows"]) == {"ours_bf16", "modded"}
    assert s["speed"]["fp8_skipped"] == "fp8 needs CUDA" and s["speed"]["step_ratio_ours_vs_modded"] > 0
    assert s["host_syncs"]["status"] == "ok" and s["host_syncs"]["sync_debug_warnings"] is None
    assert set(s["host_syncs"]["profiler_counts"]) == {
        "cudaStreamSynchronize",
        "cudaDeviceSynchronize",
        "aten::item",
        "aten::_local_scalar_dense",
    }
    assert s["memory"]["status"] == "ok" and s["memory"]["layers"] == 24
    assert s["memory"]["estimated_bytes"] > 0 and s["memory"]["estimate_note"] is None  # the real estimator
    assert "needs CUDA" in s["memory"]["measured_note"]
    assert s["gpu_tests"]["status"] == "skipped" and "no CUDA" in s["gpu_tests"]["reason"]
    assert len(res["targets"]) == 6 and all(t["pass"] is None for t in res["targets"])
    for title in ("1+2. speed", "4. host syncs", "3. memory", "5. gpu-marked tests", "targets (issue 24)"):
        assert f"== {title}" in out.stderr  # one table per section, on stderr beside --json


def test_device_check_sections_stop_at_their_budget(bench: ModuleType) -> None:
    import device_check

    lines: list[str] = []
    res = device_check.run(device_check.parse_args(["--smoke", "--budget-scale", "1e-6"]), lines.append)
    s = res["sections"]
    assert s["speed"]["status"] == "skipped" and "budget" in s["speed"]["reason"]
    assert s["host_syncs"]["status"] == "failed" and "no step of ours" in s["host_syncs"]["reason"]
    assert "skipped: speed ran" in "\n".join(lines)
    assert [t["pass"] for t in res["targets"]] == [None] * 6


def test_device_check_calls_the_memory_estimator(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """The estimator's contract: estimate_peak_memory(job, world_size=1).allocated, the bytes
    `max_memory_allocated()` measures; the real estimator has that attribute."""
    import device_check
    import device_check_report

    calls = []

    def estimate_peak_memory(job, world_size):
        calls.append((job.spec.model.num_layers, job.spec.train.device_batch_size, world_size))
        return SimpleNamespace(allocated=30 * 2**30)

    monkeypatch.setitem(sys.modules, "speedrun_api.memory", SimpleNamespace(estimate_peak_memory=estimate_peak_memory))
    out: dict = {}
    device_check.memory(device_check.parse_args(["--smoke"]), torch.device("cpu"), Path("."), out)
    assert calls == [(24, 16, 1)] and out["estimated_bytes"] == 30 * 2**30
    out.update(measured_bytes=25 * 2**30, measured_reserved_bytes=26 * 2**30, estimate_error=30 / 25 - 1)
    text = "\n".join(device_check_report.memory_table(out))
    assert "estimated peak: 30.00 GiB" in text and "measured peak:  25.00 GiB" in text and "+20.0%" in text
    res = {"device": "cuda", "sections": {"speed": {}, "host_syncs": {}, "memory": out, "gpu_tests": {}}}
    memory_target = device_check_report.targets(res)[3]
    assert memory_target["target"] == "memory estimate within 10%" and memory_target["pass"] is False
    assert memory_target["value"] == pytest.approx(0.2)
