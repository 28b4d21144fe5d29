"""Peak accelerator memory per training process, estimated from the spec before any pod starts.

A manifest whose micro-batch cannot fit fails minutes into a run (after scheduling, image pulls
and compilation) with a CUDA out-of-memory error. `memory_problem(job)` refuses it up front, a
plan-time refusal like `plan.horizon_problem`: `parse_job` calls it, so `speedrun plan`, `speedrun
run` and the operator's admission all refuse a micro-batch whose estimated peak exceeds the
accelerator's memory, in one line that names `spec.train.deviceBatchSize` and the largest value
that fits (one that also divides the batch as the spec's batch rule wants). Only accelerators
with a known memory are judged: the table's, or any with `resources.deviceMemory`. A CPU process
shares the host's memory with the data loaders and other processes, which the plan cannot see:
it gets the estimate, no verdict. Neither does a TPU: the estimate follows the torch trainer's
layout (autocast copies, inductor's saved activations, the CUDA allocator's margin), and XLA under
JAX plans a TPU chip's HBM its own way (rematerialization, fused buffers), so the plan prints the
figure beside the chip's HBM and says it is not judged, rather than refuse a run that may fit.

The estimate is analytic (no torch: the operator imports it) and follows what the trainer's
model and step keep alive at the peak of an optimizer step, which for gradient accumulation is
the backward of a micro-batch while the gradients of the earlier ones are held:

- weights: fp32 masters, 4 bytes per parameter (the trainer keeps fp32 weights in every precision);
- gradients: fp32, 4 per parameter;
- optimizer: AdamW two fp32 moments (8 per parameter); Muon one fp32 momentum buffer per block
  matrix and AdamW for the embedding, LM head and gains (train/optim.py's split);
- DDP buckets: with more than one process, DDP's flat gradient buckets, another 4 per parameter
  (`gradient_as_bucket_view` is off, torch's default);
- weight copies: under bf16 autocast each block matrix's bf16 copy is saved for the backward
  (autocast caches it); fp8 eager saves an fp8 (1-byte) copy of the layers torchao converts,
  compiled fp8 recomputes them;
- activations: what the backward needs, per token and layer (`layer_bytes_per_token`), plus the
  LM head's saved gradients (train/cross_entropy.py keeps grad-x and an fp32 grad-W, never the
  logits);
- transient: the largest short-lived buffers: a chunk of fp32 logits with its bf16 copies in the
  loss's forward (one chunk at a time: the loop frees each before the next), or a layer's
  gradients in its backward;
- margin: CUDA context, cuBLAS/NCCL workspaces and allocator fragmentation, which
  `torch.cuda.max_memory_allocated()` does not see: 2 GiB plus 5% of the tensors (on CPU the 5%).

The per-layer figures come from tracing the real model under fake tensors with the trainer's
`memory_trace` (eager: every tensor autograd saves; compiled: what inductor's min-cut partitioner
keeps, which recomputes pointwise ops); tests/unit/trainer/test_memory_trace.py holds the
estimate to within 10% of the traced figures for every model family the spec allows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from speedrun_api.accelerators import lookup
from speedrun_api.flops import param_count
from speedrun_api.kubeformats import quantity_value
from speedrun_api.spec import SpeedrunJob
from speedrun_api.spec_train import ModelSpec
from speedrun_api.tpu import devices_per_node, is_tpu

MARGIN_FIXED = 2 * 2**30  # CUDA context + cuBLAS and NCCL workspaces
MARGIN_FRACTION = 0.05  # caching-allocator fragmentation
CE_CHUNK_ROWS = 4096  # train/cross_entropy.py DEFAULT_CHUNK_ROWS
FP8_MIN_DIM = 128  # train/fp8.py MIN_FP8_DIM: smaller block matrices stay bf16


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per training process at the peak of an optimizer step (see the module doc)."""

    weights: int
    gradients: int
    optimizer: int
    ddp_buckets: int
    weight_copies: int
    activations: int
    transient: int
    margin: int
    device_batch: int
    compiled: bool

    @property
    def allocated(self) -> int:
        """The tensors alone: what `torch.cuda.max_memory_allocated()` measures."""
        return self.total - self.margin

    @property
    def saved(self) -> int:
        """What the forward keeps for the backward: activations and low-precision weight copies."""
        return self.activations + self.weight_copies

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self) if f.name not in ("device_batch", "compiled"))

    def parts(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k not in ("device_batch", "compiled")}

    def describe(self) -> str:
        mode = "compiled" if self.compiled else "eager"
        parts = ", ".join(f"{k.replace('_', ' ')} {v / 1e9:.1f}" for k, v in self.parts().items() if v)
        return f"{self.total / 1e9:.1f} GB per device at deviceBatchSize {self.device_batch}, {mode} ({parts} GB)"


def _hidden_matrices(m: ModelSpec) -> list[tuple[int, int]]:
    """The (in, out) shapes of one block's matrices: attention q, k, v, o and the MLP's."""
    h, i, kd = m.hidden_dim, m.intermediate_dim, m.kv_heads * m.head_dim
    mlp = [(h, i), (h, i), (i, h)] if m.glu else [(h, i), (i, h)]
    return [(h, h), (h, kd), (h, kd), (h, h), *mlp]


def _fp8_layer(shape: tuple[int, int]) -> bool:
    return all(d % 16 == 0 for d in shape) and min(shape) >= FP8_MIN_DIM


def layer_bytes_per_token(m: ModelSpec, precision: str, compiled: bool) -> float:
    """Bytes one block saves for the backward per token (sequence position of one sequence).

    c is the bytes of a matmul operand (bf16 2, fp32 4); the residual stream is fp32 (4) in every
    precision, as the embedding and the weights are. Eager (autograd keeps every input it needs):
    each norm saves x-hat (4h) and, under autocast, each of its consumers casts its output anew
    (q, k and v: three copies; the MLP's one, or two for SwiGLU); attention saves q, k, v and
    its output (flash: O(T) per head, no T x T matrix); QK-norm its bf16 inputs; the MLP its
    intermediates (SwiGLU 4, ReLU^2 and GELU 2 of width i). Compiled, the min-cut partitioner
    keeps the residual stream twice per block (4h each), one copy of each norm output, q, k, v,
    the attention output, and 3 (SwiGLU) or 2 MLP intermediates, recomputing the rest.
    fp8 (torchao's Float8Linear, traced): eager saves what bf16 does; compiled, the partitioner
    recomputes the fp8 casts of the norm outputs and of the last MLP intermediate from what it
    keeps anyway, and keeps one fp8 (1-byte) activation copy.
    """
    h, i, n_h, n_kv = m.hidden_dim, m.intermediate_dim, m.num_heads, m.kv_heads
    kd = n_kv * m.head_dim
    c = 4 if precision == "fp32" else 2
    qkv = c * (h + 2 * kd)
    small = 4 * n_h + 8 + (4 * (n_h + n_kv) if m.qk_norm else 0)  # logsumexp, 1/rms per norm
    qk = c * (h + kd) if m.qk_norm else 0
    if compiled:
        intermediates = 3 if m.glu else 2
        if precision == "fp8":
            return 2 * 4 * h + h + qkv + c * h + (intermediates - 1) * c * i + qk + small
        return 2 * 4 * h + 2 * c * h + qkv + c * h + intermediates * c * i + qk + small
    autocast = c < 4
    attn_casts = 3 if autocast else 1
    mlp_casts = (2 if m.glu else 1) if autocast else 1
    norms = 2 * 4 * h + (attn_casts + mlp_casts) * c * h
    mlp = (4 if m.glu else 2) * c * i
    # attention: q, k, v, the output (kept by SDPA; c_proj's input is the same storage)
    return norms + qkv + c * h + mlp + qk + small


def _param_split(m: ModelSpec) -> tuple[int, int]:
    """(block matrices, all parameters): Muon's share and the whole."""
    block = m.num_layers * sum(a * b for a, b in _hidden_matrices(m))
    return block, param_count(m)


def estimate_peak_memory(
    job: SpeedrunJob, device_batch: int | None = None, world_size: int | None = None, compiled: bool | None = None
) -> MemoryEstimate:
    """The peak bytes of one training process of `job` (see the module doc).

    `device_batch` defaults to spec.train.deviceBatchSize, `world_size` to the plan's device count
    (the most nodes), `compiled` to train.compile, whose omitted default is on for GPUs and TPUs
    and off on CPU (the trainer's rule, train/runtime.py resolve_compile).
    """
    spec = job.spec
    m, t, r = spec.model, spec.train, spec.resources
    b = device_batch or t.device_batch_size
    if world_size is None:
        world_size = r.node_range[1] * devices_per_node(r)
    acc = lookup(r.accelerator)
    if compiled is None:
        compiled = t.compile if t.compile is not None else (acc is None or acc.kind != "cpu")
    block, total_params = _param_split(m)
    h, v, c = m.hidden_dim, m.vocab_size, (4 if t.precision == "fp32" else 2)
    tokens = b * m.seq_len

    # Muon: one momentum buffer per block matrix, AdamW's two moments for the rest (train/optim.py)
    optimizer = 4 * block + 8 * (total_params - block) if t.optimizer.name == "muon" else 8 * total_params
    if t.precision == "fp8":  # fp8 copies eager; compiled recomputes them from the fp32 weights
        fp8 = m.num_layers * sum(a * o for a, o in _hidden_matrices(m) if _fp8_layer((a, o)))
        weight_copies = (0 if compiled else fp8) + 2 * (block - fp8)
    else:
        weight_copies = 0 if t.precision == "fp32" else 2 * block

    # The LM head's loss (train/cross_entropy.py) makes its gradients in the forward. Eager keeps
    # the final norm's x-hat, grad-x (fp32) and grad-W (fp32); compiled, the partitioner keeps the
    # norm's input, grad-x in c bytes and each chunk's grad-W product (c bytes each) up to 4 chunks;
    # from 5 chunks on it keeps their fp32 sum instead (traced: 4 chunks 4 products, 8 the sum).
    rows = min(CE_CHUNK_ROWS, tokens)
    chunks = -(-tokens // rows)
    grad_w = (chunks * c if chunks <= 4 else 4) * v * h
    head_saved = (4 + c) * h * tokens + grad_w if compiled else 8 * h * tokens + 4 * v * h
    activations = int(layer_bytes_per_token(m, t.precision, compiled) * tokens * m.num_layers + head_saved)
    if not compiled and c < 4:
        activations += 4 * m.seq_len * m.head_dim * c * m.num_layers  # RoPE tables cast per call (B-independent)
    # The loss's forward at its peak (traced): a chunk's fp32 logits (4 bytes each), under bf16 also
    # their bf16 matmul output and bf16 gradient (2c); the loop frees each chunk's before making the
    # next (train/cross_entropy.py); W's low-precision copy and one fp32 grad-W product (V x h, 4 + c).
    per_logit = (2 * c if c < 4 else 0) + 4
    loss_chunk = rows * v * per_logit + v * h * (4 + c)
    layer_backward = (c * m.intermediate_dim + 10 * h) * tokens  # an MLP gradient + residual gradients (traced)
    transient = max(loss_chunk, layer_backward)
    # fp32 masters, and each block's RoPE buffers (cos, sin: seqLen x headDim; inv_freq; fp32)
    weights = 4 * total_params + m.num_layers * (8 * m.seq_len + 2) * m.head_dim
    allocated = (
        weights
        + 4 * total_params  # gradients
        + optimizer
        + (4 * total_params if world_size > 1 else 0)
        + weight_copies
        + activations
        + transient
    )
    return MemoryEstimate(
        weights=weights,
        gradients=4 * total_params,
        optimizer=optimizer,
        ddp_buckets=4 * total_params if world_size > 1 else 0,
        weight_copies=weight_copies,
        activations=activations,
        transient=transient,
        margin=int((0 if acc is not None and acc.kind == "cpu" else MARGIN_FIXED) + MARGIN_FRACTION * allocated),
        device_batch=b,
        compiled=compiled,
    )


def device_memory(job: SpeedrunJob) -> int | None:
    """Bytes per device: resources.deviceMemory, else the accelerator table's; None for CPU and unknowns."""
    r = job.spec.resources
    if r.device_memory is not None:
        return int(min(quantity_value(r.device_memory), 2**63 - 1))
    acc = lookup(r.accelerator)
    return acc.device_memory if acc is not None else None


# ---- the verdict: does the micro-batch fit? ------------------------------------------------


@dataclass(frozen=True)
class MemoryVerdict:
    estimate: MemoryEstimate
    capacity: int | None  # bytes per device; None: not judged
    hbm: int | None = None  # a TPU chip's HBM: shown, not judged (see the module doc)

    @property
    def fits(self) -> bool | None:
        return None if self.capacity is None else self.estimate.total <= self.capacity

    def line(self) -> str:
        """ "fits: 61.2 of 80.0 GB (77%)", "does not fit: ...", or the bare estimate."""
        total = self.estimate.total / 1e9
        if self.hbm is not None:
            return (  # two lines: the plan keeps to 80 columns
                f"{total:.1f} GB estimated, of {self.hbm / 1e9:.1f} GB HBM per chip;\n"
                "  not judged: the estimate is torch's layout, XLA under JAX plans its own"
            )
        if self.capacity is None:
            return f"{total:.1f} GB estimated (no device memory known to judge it by)"
        share = f"{total:.1f} of {self.capacity / 1e9:.1f} GB ({self.estimate.total / self.capacity:.0%})"
        return f"fits: {share}" if self.fits else f"does not fit: {share}"

    def to_dict(self) -> dict:
        return {
            **self.estimate.parts(),
            "total": self.estimate.total,
            "device_memory": self.capacity if self.hbm is None else self.hbm,
            "fits": self.fits,
            "compiled": self.estimate.compiled,
        }


def memory_verdict(job: SpeedrunJob, device_batch: int | None = None) -> MemoryVerdict:
    estimate = estimate_peak_memory(job, device_batch=device_batch)
    if is_tpu(job.spec.resources.accelerator):
        return MemoryVerdict(estimate, None, hbm=device_memory(job))
    return MemoryVerdict(estimate, device_memory(job))


def _divides(job: SpeedrunJob, device_batch: int) -> bool:
    """The spec's batch rule for a candidate deviceBatchSize, at every node count it may run on."""
    r, t = job.spec.resources, job.spec.train
    lo, hi = r.node_range
    return all(t.batch_size % (device_batch * r.procs_per_node * n) == 0 for n in range(lo, hi + 1))


def largest_fitting_batch(job: SpeedrunJob) -> int:
    """The largest deviceBatchSize below the spec's that fits and divides the batch; 0 if none."""
    capacity = device_memory(job)
    if capacity is None:
        return job.spec.train.device_batch_size
    t = job.spec.train
    # Candidates divide batchSize (the batch rule needs at least that): found by trial up to its
    # square root, so a batchSize of 2**24 costs thousands of steps, not millions of estimates.
    divisors = {
        d for k in range(1, math.isqrt(t.batch_size) + 1) if t.batch_size % k == 0 for d in (k, t.batch_size // k)
    }
    for b in sorted((d for d in divisors if d < t.device_batch_size), reverse=True):
        if _divides(job, b) and estimate_peak_memory(job, device_batch=b).total <= capacity:
            return b
    return 0


def memory_problem(job: SpeedrunJob) -> str | None:
    """One error line when the micro-batch cannot fit the device's memory (see the module doc)."""
    verdict = memory_verdict(job)
    if verdict.fits is not False:
        return None
    assert verdict.capacity is not None
    t, est = job.spec.train, verdict.estimate
    need = (
        f"{t.device_batch_size} needs about {est.total / 1e9:.1f} GB per device"
        f" (activations {est.activations / 1e9:.1f} GB) but the device has {verdict.capacity / 1e9:.1f} GB"
    )
    best = largest_fitting_batch(job)
    if best:
        return f"spec.train.deviceBatchSize: {need}; at most {best} fits (gradient accumulation keeps batchSize)"
    return (
        f"spec.train.deviceBatchSize: {need}; even 1 does not fit: use a smaller model or seqLen, or a device"
        " with more memory (resources.accelerator, resources.deviceMemory)"
    )
