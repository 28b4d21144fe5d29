"""What the real GPT keeps in memory, traced under fake tensors: the check of `speedrun_api.memory`.

`speedrun plan` estimates peak memory per device analytically (api/speedrun_api/memory.py, no
torch). This module measures the same quantities on the trainer's real `GPT`, real optimizers
and real training step, without allocating anything: every tensor is a `FakeTensor`
(torch._subclasses.FakeTensorMode), which carries shape, dtype and storage but no data, so a
d24 model at 32 x 2048 tokens traces in seconds on a laptop.

- `trace_eager`: the eager peak of whole optimizer steps (micro-batches forward + backward,
  clip, every optimizer's step, zero_grad; twice, so the optimizer states exist), counted by a
  TorchDispatchMode that adds each new storage's bytes when an op creates it and subtracts them
  when Python frees it. It is what `torch.cuda.max_memory_allocated()` would read, less the
  caching allocator's rounding and CUDA's own workspaces.
- `trace_compiled`: what torch.compile keeps for the backward. Dynamo traces the model and
  aot_autograd splits the joint graph with inductor's min-cut partitioner (the one torch.compile
  uses), which recomputes cheap pointwise ops instead of saving them; the bytes of the forward
  graph's outputs that are not its inputs (weights, tokens) are the saved activations plus the
  bf16 weight copies.

Fake tensors run on the CPU: CPU autocast (bf16 matmuls, fp32 norms and loss) and the CPU flash
attention kernel, which saves the output and a logsumexp per head and token as CUDA's flash
kernel does (O(T), not the T x T matrix). Where the trainer's eager CPU path differs from CUDA's
it is patched for the trace: RMSNorm saves its input and 1/rms in the input's dtype as CUDA's
fused `rms_norm` does. Measured on a GPU, compare the estimate with
`torch.cuda.max_memory_allocated()` through `compare_line`.

    python -m speedrun_trainer.train.memory_trace examples/nanochat-d24.yaml
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from speedrun_api.memory import MemoryEstimate, estimate_peak_memory
from speedrun_api.spec import SpeedrunJob
from speedrun_api.spec_train import ModelSpec, OptimizerSpec
from speedrun_trainer.train import model as model_module
from speedrun_trainer.train.model import GPT
from speedrun_trainer.train.optim import build_optimizers


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages alive now and at most, counting those created under this mode."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._ids: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._ids.discard(key)
        self.live -= nbytes

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._ids:  # a view or an in-place result: no new memory
            return
        self._ids.add(key)
        nbytes = storage.nbytes()
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, nbytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


def _fused_rms_norm(self: model_module.RMSNorm, x: torch.Tensor) -> torch.Tensor:
    # What CUDA's fused rms_norm saves (input and 1/rms), in every dtype: the CPU path of the
    # trainer saves the same for fp32 inputs and runs a composite (more saved) for bf16 ones.
    return model_module._RMSNormCPU.apply(x, self.weight.to(x.dtype), self.eps)


@contextlib.contextmanager
def _cuda_like() -> Iterator[None]:
    original = model_module.RMSNorm.forward
    model_module.RMSNorm.forward = _fused_rms_norm  # type: ignore[method-assign]
    try:
        yield
    finally:
        model_module.RMSNorm.forward = original  # type: ignore[method-assign]


def _autocast(precision: str) -> contextlib.AbstractContextManager:
    # fp8 runs the rest of the model under bf16 autocast, as the trainer does (train/fp8.py).
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _model(spec: ModelSpec, precision: str) -> GPT:
    model = GPT(spec)
    if precision == "fp8":  # torchao's Float8Linear layers, as the trainer converts them (train/fp8.py)
        from speedrun_trainer.train.fp8 import convert_to_fp8

        convert_to_fp8(model)
    return model


@dataclass(frozen=True)
class EagerTrace:
    peak: int  # bytes at most alive during the traced steps
    weights: int  # the fp32 parameters


def trace_eager(
    spec: ModelSpec,
    device_batch: int,
    precision: str = "bf16",
    optimizer: OptimizerSpec | None = None,
    accum: int = 2,
    steps: int = 2,
    max_grad_norm: float = 1.0,
) -> EagerTrace:
    """The eager peak of `steps` optimizer steps of `accum` micro-batches (see the module doc)."""
    optimizer = optimizer or OptimizerSpec()
    with _cuda_like(), FakeTensorMode(), LiveBytes() as live:
        model = _model(spec, precision)
        weights = live.live
        optimizers = build_optimizers(model, optimizer)
        params = [p for p in model.parameters() if p.requires_grad]
        for _ in range(steps):
            for _ in range(accum):
                idx = torch.zeros(device_batch, spec.seq_len, dtype=torch.long)
                with _autocast(precision):
                    loss = model(idx, idx)
                (loss / accum).backward()
                del loss
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
            for opt in optimizers:
                opt.step()
            model.zero_grad(set_to_none=True)
        return EagerTrace(peak=live.peak, weights=weights)


def trace_compiled(spec: ModelSpec, device_batch: int, precision: str = "bf16") -> int:
    """Bytes torch.compile's forward saves for the backward (activations + low-precision weight copies)."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    saved: list[int] = []

    def forward_compiler(gm: torch.fx.GraphModule, _inputs: list) -> torch.fx.GraphModule:
        (output,) = [n for n in gm.graph.nodes if n.op == "output"]
        seen: set[int] = set()
        total = 0
        for node in output.args[0]:
            value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
            if node is None or node.op == "placeholder" or not isinstance(value, torch.Tensor):
                continue  # a weight or the tokens: alive anyway
            base = node
            while base.op == "call_function" and base.target in _VIEWS and base.args:
                base = base.args[0]  # views of an input or of another saved tensor add nothing
            if base.op == "placeholder" or id(base) in seen:
                continue
            seen.add(id(base))
            total += value.numel() * value.element_size()
        saved.append(total)
        return gm

    def backward_compiler(gm: torch.fx.GraphModule, _inputs: list) -> torch.fx.GraphModule:
        return gm

    backend = aot_autograd(
        fw_compiler=forward_compiler, bw_compiler=backward_compiler, partition_fn=min_cut_rematerialization_partition
    )
    torch._dynamo.reset()
    with _cuda_like(), FakeTensorMode():
        model = _model(spec, precision)
        compiled = torch.compile(model, backend=backend, fullgraph=True, dynamic=False)
        idx = torch.zeros(device_batch, spec.seq_len, dtype=torch.long)
        with _autocast(precision):
            compiled(idx, idx)
    torch._dynamo.reset()
    return sum(saved)


_VIEWS = {
    torch.ops.aten.view.default,
    torch.ops.aten.t.default,
    torch.ops.aten.transpose.int,
    torch.ops.aten.permute.default,
    torch.ops.aten.detach.default,
    torch.ops.aten._unsafe_view.default,
    torch.ops.aten.alias.default,
}


def compare_line(estimate: MemoryEstimate, measured_bytes: int) -> str:
    """One line for a device check: the estimate against `torch.cuda.max_memory_allocated()`.

    The estimate's CUDA margin (context, workspaces, fragmentation) is not in what the allocator
    reports, so the comparison is with `estimate.allocated`, the tensors alone.
    """
    ratio = estimate.allocated / measured_bytes if measured_bytes else float("inf")
    return (
        f"memory: estimated {estimate.allocated / 1e9:.2f} GB of tensors (total with margin"
        f" {estimate.total / 1e9:.2f} GB), measured max_memory_allocated {measured_bytes / 1e9:.2f} GB"
        f" (estimate / measured = {ratio:.2f})"
    )


def main(argv: list[str] | None = None) -> int:
    """Print the estimate and the traced figures of one manifest (its spec, one process)."""
    from speedrun_api.manifest import load_job

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m speedrun_trainer.train.memory_trace MANIFEST", file=sys.stderr)
        return 2
    job: SpeedrunJob = load_job(args[0])
    t, m = job.spec.train, job.spec.model
    estimate = estimate_peak_memory(job)
    print(estimate.describe())
    eager = trace_eager(m, t.device_batch_size, t.precision, t.optimizer)
    eager_estimate = estimate_peak_memory(job, world_size=1, compiled=False)
    print(
        f"traced eager peak (one process, no DDP, no margin): {eager.peak / 1e9:.2f} GB"
        f" (estimate {eager_estimate.allocated / 1e9:.2f} GB)"
    )
    if estimate.compiled:
        saved = trace_compiled(m, t.device_batch_size, t.precision)
        print(f"traced compiled saved-for-backward: {saved / 1e9:.2f} GB (estimate {estimate.saved / 1e9:.2f} GB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
