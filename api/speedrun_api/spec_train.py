"""The SpeedrunJob spec's model and training parts: the GPT's shapes (`spec.model`), the optimizer
and the training horizon, precision and clock (`spec.train`). Cross-field rules between them and the
rest of the spec live with the whole spec (spec.py, `RULES`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from speedrun_api.spec_types import MAX_STEPS, MAX_TOKENS, Base, Fraction, PositiveFloat, StepCount


class ModelSpec(Base):
    """A GPT. All shapes are explicit so FLOPs are exact."""

    vocab_size: Annotated[int, Field(ge=1, le=2**22)]
    seq_len: Annotated[int, Field(ge=1, le=2**20)]
    hidden_dim: Annotated[int, Field(ge=1, le=2**17)]
    intermediate_dim: Annotated[int, Field(ge=1, le=2**19)]
    num_layers: Annotated[int, Field(ge=1, le=1024)]
    num_heads: Annotated[int, Field(ge=1, le=1024)]
    num_kv_heads: Annotated[int, Field(ge=1, le=1024)] | None = Field(None, description="Defaults to numHeads (no GQA)")
    activation: Literal["silu", "relu2", "gelu"] = "silu"
    tie_embeddings: bool = False
    qk_norm: bool = False
    rope_theta: Annotated[float, Field(gt=0, le=1e12)] = 10000.0
    document_mask: bool = Field(
        False, description="Training attends within documents (a new one after each EOS), as Marin trains"
    )

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads

    @property
    def glu(self) -> bool:
        """SwiGLU has three MLP matrices; relu2 and gelu have two."""
        return self.activation == "silu"


class OptimizerSpec(Base):
    name: Literal["adamw", "muon"] = "adamw"
    learning_rate: PositiveFloat = 3e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.95
    warmup_steps: StepCount = 0
    decay: Fraction = Field(0.0, description="Warmdown: fraction of steps at the end with linear decay")
    min_lr_ratio: Fraction = 0.0
    max_grad_norm: Annotated[float, Field(ge=0)] = 1.0
    adam_learning_rate: PositiveFloat | None = Field(
        None, description="Muon only: AdamW rate for embeddings, head and gains (default learningRate/5)"
    )
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.95


class TrainSpec(Base):
    batch_size: Annotated[int, Field(ge=1, le=2**24)] = Field(description="Global sequences per optimizer step")
    device_batch_size: Annotated[int, Field(ge=1, le=2**20)] = Field(description="Micro-batch per process")
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None
    tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    param_data_ratio: Annotated[float, Field(gt=0, le=1e6)] | None = Field(
        None,
        description="Tokens = ratio x nanochat's parameter count (transformer matrices + lm_head; no"
        " embedding, no norm gains), as nanochat's --target-param-data-ratio",
    )
    flops_budget: Annotated[float, Field(gt=0, le=1e30)] | None = None
    optimizer: OptimizerSpec = OptimizerSpec()
    precision: Literal["bf16", "fp32", "fp8"] = "bf16"
    grad_reduce_dtype: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="The dtype of the gradient all-reduce between processes (DDP): bf16 sends half the"
        " bytes per step (torch's bf16_compress_hook); fp32 is exact",
    )
    compile: bool | None = Field(
        None,
        description="torch.compile the model and Muon's Newton-Schulz. Omit (null) for auto: on when the"
        " trainer runs on CUDA, off on CPU (where compiling costs more than a short run saves)",
    )
    backend: Literal["torch", "jax"] | None = Field(
        None,
        description="What runs the training step: torch (torchrun, CUDA or CPU) or jax (the same GPT"
        " through torchax and jax.jit; TPUs, and CPUs for tests). Omit (null) for auto: jax on a TPU"
        " accelerator, torch otherwise. The evaluation runs in torch either way",
    )
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = Field(0, description="torch and numpy seed")
    checkpoint_every: StepCount = Field(0, description="0: only the final checkpoint")
    eval_every: StepCount = Field(0, description="Validation loss every N steps; 0: only at the end")
    log_every: Annotated[int, Field(ge=1, le=MAX_STEPS)] = Field(
        10, description="Read the loss and step times back from the device every N steps (metrics, W&B, log)"
    )
    clock_warmup_steps: StepCount = Field(
        11,
        description="Steps of every process start (compile, warm-up, resume) kept out of the training "
        "clock and reported apart; nanochat's 11 (base_train.py counts dt only `if step > 10`, steps from 0)."
        " With clock modded-nanogpt: the untimed warm-up steps on dummy data before the state reset",
    )
    clock: Literal["nanochat", "modded-nanogpt"] = Field(
        "nanochat",
        description="nanochat: the first clockWarmupSteps real steps of every process start are not timed"
        " (base_train.py); modded-nanogpt: clockWarmupSteps untimed steps on dummy data, then model, optimizer,"
        " schedule, data and RNG are reset and every real step is timed (train_gpt.py, since record 21)",
    )
    horizon_rounding: Literal["up", "down"] = Field(
        "up",
        description="How a tokens or paramDataRatio horizon becomes whole steps: up (at least that many"
        " tokens) or down (nanochat base_train.py: `target_tokens // total_batch_size`)",
    )
