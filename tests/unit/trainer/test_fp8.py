"""`precision: fp8` (train/fp8.py): which layers train in FP8, and the refusals where it cannot run.

FP8 matmuls need an Ada/Hopper GPU, so on CPU these tests check the selection and refusal logic,
and (torchao installs on CPU) that conversion swaps exactly the selected layers and keeps the
parameters, so optimizers and checkpoints see the same model. The GPU test (skipped without a
capability >= 8.9 GPU) trains a few FP8 steps.

Run: pytest -q tests/unit/trainer/test_fp8.py  (CPU, a few seconds)
"""

from __future__ import annotations

import builtins

import pytest
import torch

from speedrun_api.manifest import ConfigError
from speedrun_api.spec_train import ModelSpec
from speedrun_trainer.train import fp8
from speedrun_trainer.train.model import GPT
from speedrun_trainer.train.runtime import DeviceError

GPT2_SMALL = ModelSpec(
    vocab_size=50304,
    seq_len=64,
    hidden_dim=768,
    intermediate_dim=3072,
    num_layers=2,
    num_heads=12,
    num_kv_heads=4,
    activation="silu",
)


def gpt(spec: ModelSpec = GPT2_SMALL) -> GPT:
    torch.manual_seed(0)
    return GPT(spec)


def test_fp8_layers_are_the_block_matrices_and_not_the_head() -> None:
    names = fp8.fp8_layer_names(gpt())
    per_block = ["attn.c_q", "attn.c_k", "attn.c_v", "attn.c_proj", "mlp.c_gate", "mlp.c_up", "mlp.c_proj"]
    assert names == [f"blocks.{i}.{n}" for i in range(2) for n in per_block]
    assert "lm_head" not in names


def test_small_or_odd_layers_stay_bf16() -> None:
    # k/v are 64 wide (2 kv heads x 32): below the 128 floor; 200 is not a multiple of 16.
    spec = ModelSpec(
        vocab_size=64,
        seq_len=16,
        hidden_dim=128,
        intermediate_dim=200,
        num_layers=1,
        num_heads=4,
        num_kv_heads=2,
        activation="relu2",
    )
    assert fp8.fp8_layer_names(gpt(spec)) == ["blocks.0.attn.c_q", "blocks.0.attn.c_proj"]
    tiny = spec.model_copy(update={"hidden_dim": 64, "intermediate_dim": 128, "num_heads": 2, "num_kv_heads": 2})
    with pytest.raises(ConfigError, match=r"spec\.train\.precision: fp8 found no layer"):
        fp8.convert_to_fp8(gpt(tiny))


@pytest.mark.parametrize("accelerator", ["cpu", "nvidia-a100-80gb", "tpu-v5e"])
def test_accelerators_without_fp8_are_an_invalid_config(accelerator: str) -> None:
    with pytest.raises(ConfigError, match=r"^spec.train.precision: fp8 needs FP8 tensor cores"):
        fp8.check_fp8(accelerator, torch.device("cpu"))


@pytest.mark.parametrize("accelerator", ["nvidia-h100-80gb", "my-custom-gpu"])
def test_fp8_accelerators_without_a_gpu_here_are_a_device_error(accelerator: str) -> None:
    with pytest.raises(DeviceError, match="needs a CUDA GPU, but this process runs on cpu"):
        fp8.check_fp8(accelerator, torch.device("cpu"))


def test_old_gpus_and_missing_torchao_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(DeviceError, match=r"compute capability >= 8.9.*A100-SXM4-80GB has 8.0"):
        fp8.check_fp8("nvidia-h100-80gb", cuda)  # a mislabelled node: the spec says H100
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    real_import = builtins.__import__

    def no_torchao(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("torchao"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchao)
    with pytest.raises(DeviceError, match=r"torchao, which is not installed.*speedrun-operator\[fp8\]"):
        fp8.check_fp8("nvidia-h100-80gb", cuda)


def test_conversion_swaps_the_selected_layers_and_keeps_parameters() -> None:
    pytest.importorskip("torchao.float8")
    model = gpt()
    before = {name: p for name, p in model.named_parameters()}
    converted = fp8.convert_to_fp8(model)
    modules = dict(model.named_modules())
    assert all(type(modules[n]).__name__ == "Float8Linear" for n in converted)
    assert type(model.lm_head) is torch.nn.Linear
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
    reason="needs an FP8 GPU (compute capability >= 8.9)",
)
def test_fp8_trains_on_the_gpu() -> None:
    pytest.importorskip("torchao.float8")
    device = torch.device("cuda")
    fp8.check_fp8("nvidia-h100-80gb", device)
    model = gpt().to(device)
    fp8.convert_to_fp8(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    idx = torch.randint(0, 50304, (4, 64), device=device)
    losses = []
    for _ in range(5):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses
