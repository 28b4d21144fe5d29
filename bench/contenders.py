"""The three training steps bench/bench_trainer.py times, each with its own data path.

- ours: the trainer's real step (speedrun_trainer) at a given `train.precision`: `GPT(ModelSpec)`,
  `build_optimizers` (Muon + fused AdamW by default), `TrainStep` (grad clip, no host syncs), under
  DDP only where the trainer puts it (more than one rank: never when the bench runs alone), batches from a `.bin` shard
  through `open_dataset` and the background `BatchPrefetcher` (uint16 on the host, pinned on
  CUDA, widened on the device).
- reference: the plain nanoGPT-style GPT of reference_gpt.py with for-loop AdamW, never compiled,
  fed pinned pre-made batches with non_blocking copies.
- modded: modded-nanogpt's GPT-2 step as re-implemented in modded_gpt.py, with its own loader.
All read the same tokens (one random uint16 stream, fixed seed) and train the same shape.

    tokens = token_stream(spec, batch_size, workdir)
    contenders = [build_ours(spec, device, ...), build_reference(spec, device, ...), build_modded(...)]
    loss = contenders[0].step()     # one optimizer step; returns the loss as a device tensor
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from modded_gpt import ModdedConfig, ModdedGPT, ModdedLoader, modded_optimizers
from reference_gpt import ReferenceConfig, ReferenceGPT, reference_adamw
from torch.nn.parallel import DistributedDataParallel

from speedrun_api.spec_train import ModelSpec, OptimizerSpec
from speedrun_trainer.data.loader import open_dataset
from speedrun_trainer.data.prefetch import BatchPrefetcher
from speedrun_trainer.data.shards import write_shard
from speedrun_trainer.train.fp8 import check_fp8, convert_to_fp8
from speedrun_trainer.train.model import GPT
from speedrun_trainer.train.optim import build_optimizers, set_lr
from speedrun_trainer.train.step import TrainStep, data_parallel

# (model shape, batch size). `micro` is the smoke-test size of tests/unit/test_bench.py.
CONFIGS: dict[str, tuple[dict[str, Any], int]] = {
    "micro": (dict(vocab_size=64, seq_len=32, hidden_dim=32, intermediate_dim=128, num_layers=2, num_heads=2), 2),
    "tiny": (dict(vocab_size=264, seq_len=256, hidden_dim=128, intermediate_dim=512, num_layers=2, num_heads=4), 16),
    "gpt2-124m": (
        dict(vocab_size=50304, seq_len=1024, hidden_dim=768, intermediate_dim=3072, num_layers=12, num_heads=12),
        16,
    ),
}
LR, WEIGHT_DECAY, BETAS, MAX_GRAD_NORM = 6e-4, 0.1, (0.9, 0.95), 1.0
STREAM_BATCHES = 8  # the token stream holds this many steps' worth; every loader wraps around it


@dataclass
class Contender:
    """One implementation under test: its train step and what it measured."""

    name: str
    step: Callable[[], torch.Tensor]
    params: int
    close: Callable[[], None] = lambda: None
    round_step_s: list[float] = field(default_factory=list)
    round_cpu_s: list[float] = field(default_factory=list)  # process CPU seconds per step (all threads)
    last_loss: torch.Tensor | None = None


def model_spec(config: str, activation: str) -> ModelSpec:
    """Our shape for `config`: tied head, QK-norm (as modded-nanogpt), `activation` in the MLP."""
    return ModelSpec(**CONFIGS[config][0], activation=activation, tie_embeddings=True, qk_norm=True)


def reference_config(spec: ModelSpec) -> ReferenceConfig:
    return ReferenceConfig(
        vocab_size=spec.vocab_size,
        seq_len=spec.seq_len,
        n_layer=spec.num_layers,
        n_head=spec.num_heads,
        n_embd=spec.hidden_dim,
        n_inner=spec.intermediate_dim,
        tie_embeddings=spec.tie_embeddings,
    )


def modded_config(spec: ModelSpec) -> ModdedConfig:
    """modded-nanogpt's heads are 128 wide (6 at 124M); below 768 the config's heads are kept."""
    heads = spec.hidden_dim // 128 if spec.hidden_dim >= 768 and spec.hidden_dim % 128 == 0 else spec.num_heads
    if spec.intermediate_dim != 4 * spec.hidden_dim:
        raise ValueError(f"modded-nanogpt's MLP is 4x wide: intermediateDim must be {4 * spec.hidden_dim}")
    return ModdedConfig(vocab_size=spec.vocab_size, n_layer=spec.num_layers, n_head=heads, n_embd=spec.hidden_dim)


def autocast(device: torch.device) -> torch.autocast:
    """The references' autocast: bf16 on CUDA, disabled (fp32) on CPU, as nanoGPT's train.py runs them
    (`nullcontext() if device_type == 'cpu' else torch.amp.autocast(...)`)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def token_stream(spec: ModelSpec, batch_size: int, workdir: Path) -> tuple[np.ndarray, str]:
    """Random tokens (fixed seed) as an array and as a `.bin` shard in `workdir`; the shard's URI."""
    rng = np.random.default_rng(1234)
    tokens = rng.integers(0, spec.vocab_size, STREAM_BATCHES * batch_size * spec.seq_len + 1, dtype=np.uint16)
    path = Path(workdir) / "train_000000.bin"
    path.write_bytes(write_shard(tokens))
    return tokens, path.as_uri()


def build_ours(
    spec: ModelSpec,
    device: torch.device,
    *,
    compile_model: bool,
    optimizer: str,
    precision: str,
    shard_uri: str,
    batch_size: int,
    cache_dir: Path,
    ddp: bool,
    name: str = "ours",
) -> Contender:
    torch.manual_seed(0)
    model = GPT(spec).to(device)
    if precision == "fp8":
        check_fp8("nvidia-h100-80gb", device)  # the bench asks the device itself, whatever table entry
        convert_to_fp8(model)
    opt_spec = OptimizerSpec(
        name=optimizer,
        learning_rate=LR if optimizer == "adamw" else 0.02,
        weight_decay=WEIGHT_DECAY,
        beta1=BETAS[0],
        beta2=BETAS[1],
        max_grad_norm=MAX_GRAD_NORM,
    )
    optimizers = build_optimizers(model, opt_spec, compile=compile_model)
    runnable = torch.compile(model) if compile_model else model
    # As the trainer: DDP only when there is more than one rank (none when the bench runs alone).
    wrapped = data_parallel(runnable, device, dist.get_world_size() if ddp and dist.is_initialized() else 1)
    # `precision` as the trainer reads `train.precision`: runtime.autocast decides what runs in bf16 here.
    step_fn = TrainStep(model, wrapped or runnable, wrapped, optimizers, device, precision, MAX_GRAD_NORM)
    dataset = open_dataset(shard_uri, tokenizer="byte", cache_dir=cache_dir)
    batches = BatchPrefetcher(
        dataset,
        start_step=0,
        accum=1,
        rank=0,
        world=1,
        device_batch_size=batch_size,
        batch_size=batch_size,
        seq_len=spec.seq_len,
        device=device,
    )

    def step() -> torch.Tensor:
        set_lr(optimizers, 1.0)
        return step_fn(batches.next_step())

    return Contender(name, step, model.num_params(), close=batches.close)


def build_reference(spec: ModelSpec, device: torch.device, tokens: np.ndarray, batch_size: int) -> Contender:
    torch.manual_seed(0)
    model = ReferenceGPT(reference_config(spec)).to(device)
    optimizer = reference_adamw(model, lr=LR, weight_decay=WEIGHT_DECAY, betas=BETAS)
    n = batch_size * spec.seq_len
    seqs = torch.from_numpy(tokens[: STREAM_BATCHES * n + 1].astype(np.int64))
    pin = device.type == "cuda"
    # x and y stored contiguous per batch, so each is one pinned block that copies asynchronously.
    xs = [seqs[i * n : (i + 1) * n].view(batch_size, spec.seq_len).contiguous() for i in range(STREAM_BATCHES)]
    ys = [seqs[i * n + 1 : (i + 1) * n + 1].view(batch_size, spec.seq_len).contiguous() for i in range(STREAM_BATCHES)]
    if pin:
        xs, ys = [x.pin_memory() for x in xs], [y.pin_memory() for y in ys]
    order = itertools.cycle(range(STREAM_BATCHES))

    def step() -> torch.Tensor:
        i = next(order)
        x, y = xs[i].to(device, non_blocking=True), ys[i].to(device, non_blocking=True)
        with autocast(device):
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return Contender("reference", step, model.num_params())


def build_modded(
    spec: ModelSpec, device: torch.device, tokens: np.ndarray, batch_size: int, *, compile_model: bool, ddp: bool
) -> Contender:
    torch.manual_seed(0)
    raw = ModdedGPT(modded_config(spec)).to(device)
    model = torch.compile(raw) if compile_model else raw
    if ddp:
        model = DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
    optimizers = modded_optimizers(raw, compile_ns=compile_model)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0) for opt in optimizers]
    loader = ModdedLoader(tokens, batch_size, spec.seq_len, device)

    def step() -> torch.Tensor:
        x, y = loader.next_batch()
        with autocast(device):
            loss = model(x, y)
        loss.backward()
        for p in raw.parameters():
            p.grad /= 1  # the record divides by its accumulation steps (1 here)
        for opt, sched in zip(optimizers, schedulers, strict=True):
            opt.step()
            sched.step()
        raw.zero_grad(set_to_none=True)
        return loss.detach()

    return Contender("modded", step, raw.num_params())
