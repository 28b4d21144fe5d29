"""`precision: fp8`: FP8 matmuls through torchao's float8 training, or a clear refusal.

Which layers: every `nn.Linear` inside the transformer blocks (attention q/k/v/o, MLP
gate/up/down) whose both dimensions are multiples of 16 (what the FP8 tensor-core GEMM,
`torch._scaled_mm`, requires) and at least 128 (below that the per-tensor scaling and casting
cost more than the faster GEMM saves; nanochat's filter uses the same bound). They are ~all of
the model's matmul FLOPs except the LM head. Not converted: the LM head (its logits feed the
softmax directly, where FP8's 3-bit mantissa costs loss, and our loss runs its matmul in
chunks from the weight itself, train/cross_entropy.py), the embedding (a lookup, no matmul)
and the norms. Everything else runs under bf16 autocast as `precision: bf16` does; the weights
stay fp32 masters, so checkpoints are the same as bf16's.

The recipe is torchao's "tensorwise" dynamic scaling (one scale per tensor, computed each step;
e4m3 for inputs and weights, e5m2 for gradients), the one nanochat's FP8 runs use. It pays off
under torch.compile, which fuses the amax/scale/cast glue (`train.compile` is on by default on
CUDA). Conversion happens before compile, DDP and the optimizers; parameters are unchanged.

Evaluation never runs FP8 (nanochat evaluates without it): `without_fp8` runs the converted
layers as plain `nn.Linear`s over the same weight parameters for the duration of an evaluation, so
an fp8 run's in-loop BPB/CORE and the final evaluation (which rebuilds a plain model from the
checkpoint) score the same bf16 model; train/loss_eval.py and train/core_eval.py apply it.

Where FP8 cannot run the trainer refuses, never silently training bf16:
- an accelerator in the table without FP8 tensor cores (cpu, A100, TPUs): invalid config (exit 2);
- a CUDA device below compute capability 8.9 (Ada: L4, RTX 4090; Hopper: H100, H200 and later),
  or no torchao installed (`pip install 'speedrun-operator[fp8]'`): a node/image problem (exit 1).

    check_fp8(job.spec.resources.accelerator, device)   # raises ConfigError / DeviceError
    converted = convert_to_fp8(model)                   # names of the converted Linear layers
    with without_fp8(model): ...evaluate...             # plain linears, same parameters
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
from torch import nn

from speedrun_api.accelerators import lookup
from speedrun_api.manifest import ConfigError
from speedrun_trainer.train.runtime import DeviceError

# Table entries with FP8 tensor cores: Hopper (sm_90) and Ada (sm_89).
FP8_ACCELERATORS = frozenset({"nvidia-h100-80gb", "nvidia-h100-mega-80gb", "nvidia-h200", "nvidia-l4", "rtx-4090"})
FP8_MIN_CAPABILITY = (8, 9)
MIN_FP8_DIM = 128
RECIPE = "tensorwise"


def check_fp8(accelerator: str, device: torch.device) -> None:
    """Raise unless FP8 training can run for this accelerator on this device (see the module doc)."""
    entry = lookup(accelerator)
    if entry is not None and entry.name not in FP8_ACCELERATORS:
        raise ConfigError(
            f"spec.train.precision: fp8 needs FP8 tensor cores, which {entry.display} does not have;"
            f" use bf16, or an accelerator among {', '.join(sorted(FP8_ACCELERATORS))}"
        )
    if device.type != "cuda":
        raise DeviceError(f"spec.train.precision: fp8 needs a CUDA GPU, but this process runs on {device.type}")
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        raise DeviceError(
            f"spec.train.precision: fp8 needs compute capability >= 8.9 (Ada, Hopper or later);"
            f" {torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}"
        )
    _torchao_float8()


def _torchao_float8() -> tuple:
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as err:
        raise DeviceError(
            f"spec.train.precision: fp8 trains through torchao, which is not installed here ({err});"
            " install the trainer with the fp8 extra: pip install 'speedrun-operator[fp8]'"
        ) from None
    return Float8LinearConfig, convert_to_float8_training


def is_fp8_layer(module: nn.Module, fqn: str) -> bool:
    """The layers FP8 trains: Linear layers of the transformer blocks, dims % 16 == 0 and >= 128."""
    if not isinstance(module, nn.Linear) or not (fqn.startswith("blocks.") or ".blocks." in fqn):
        return False
    dims = (module.in_features, module.out_features)
    return all(d % 16 == 0 for d in dims) and min(dims) >= MIN_FP8_DIM


def fp8_layer_names(model: nn.Module) -> list[str]:
    """Which of `model`'s modules `convert_to_fp8` converts (a dry run, no torchao needed)."""
    return [name for name, module in model.named_modules() if is_fp8_layer(module, name)]


def convert_to_fp8(model: nn.Module, emulate: bool = False) -> list[str]:
    """Swap the FP8 layers for torchao's Float8Linear (tensorwise scaling), in place; their names.

    `emulate`: torchao's emulation mode (the same FP8 casts and scales, the matmuls in plain
    float), for the CPU tests of the GPU path only (tests/unit/trainer/test_fp8_cpu.py); the
    trainer never passes it, and `check_fp8` refuses fp8 on CPU before any conversion.
    """
    config_cls, convert = _torchao_float8()
    names = fp8_layer_names(model)
    if not names:
        raise ConfigError(
            "spec.train.precision: fp8 found no layer to train in FP8 (block matrices need both dimensions"
            f" multiples of 16 and at least {MIN_FP8_DIM}); use bf16 for a model this small"
        )
    config = config_cls.from_recipe_name(RECIPE)
    if emulate:
        config = dataclasses.replace(config, emulate=True)
    convert(model, config=config, module_filter_fn=is_fp8_layer)
    return names


def _is_float8_linear(module: nn.Module) -> bool:
    """torchao's Float8Linear, recognised without importing torchao (absent from CPU installs)."""
    cls = type(module)
    return cls.__name__ == "Float8Linear" and cls.__module__.startswith("torchao.")


@contextlib.contextmanager
def without_fp8(model: nn.Module) -> Iterator[nn.Module]:
    """`model` with every Float8Linear run as a plain `nn.Linear` for the block, then restored.

    The plain layers hold the very same weight parameters (built on the meta device, nothing is
    copied), so under bf16 autocast the model is the bf16 model of the same fp32 master weights:
    what the final evaluation rebuilds from the checkpoint. The original modules are put back
    unchanged, so optimizers, DDP and the compiled graph's guards see the same objects after.
    A model without FP8 layers is yielded as it is.
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for name, module in list(model.named_modules()):
        if not _is_float8_linear(module):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        plain.weight = module.weight
        if module.bias is not None:
            plain.bias = module.bias
        plain.train(module.training)
        setattr(parent, attr, plain)
        swapped.append((parent, attr, module))
    try:
        yield model
    finally:
        for parent, attr, module in reversed(swapped):
            setattr(parent, attr, module)
