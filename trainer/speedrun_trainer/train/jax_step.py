"""The JAX backend's optimizer step: the torch `GPT` run as a JAX function through torchax.

Imported only when `spec.train.backend` is `jax` (train/jax_main.py): the torch path never loads jax.

- The model: `torchax.extract_jax(GPT(spec))` gives its parameters and buffers as jax arrays and a
  pure function of them, the same forward (and loss) code the torch trainer runs. Eager
  `loss.backward()` and `torch.optim` do not work under torchax, so the step is JAX's own:
  `jax.value_and_grad` of that function, inside one `jax.jit`.
- The optimizer, as train/optim.py builds it for torch: `adamw` is `optax.adamw` with the spec's
  betas, eps 1e-8 (torch's), weight decay on >= 2-D weights only. `muon` is Muon (below, as
  train/muon.py: momentum, Nesterov look-ahead, the same quintic Newton-Schulz, decoupled weight
  decay, sqrt(max(1, rows/cols)) scaling; Newton-Schulz in bf16 where torch runs it so) for the
  blocks' 2-D matrices, chosen by `optim._split_params` exactly as the torch path chooses them,
  and AdamW at adamLearningRate (else learningRate / 5) for embeddings, LM head and gains.
  optax's `contrib.muon` is not used: it scales and normalises differently from this project's
  Muon, which the torch path defines.
- The schedule: every update is linear in the learning rate (AdamW's decoupled decay too), so
  the step scales the optimizers' updates by `lr_multiplier(step, ...)`, passed in per step:
  the same rates as torch's `set_lr`.
- Gradient clipping as `torch.nn.utils.clip_grad_norm_`: the global norm over all parameters,
  scaled by min(1, maxGradNorm / (norm + 1e-6)).
- Data parallel: a 1-D `Mesh` ("data") of every device of every process; batches are sharded
  on their batch axis, parameters and optimizer state replicated, so XLA inserts the gradient
  all-reduce that DDP makes in torch.
- Precision: parameters, optimizer state and gradients stay fp32. `precision: bf16` runs the
  step under `jax.default_matmul_precision("bfloat16")`: every matmul and convolution takes bf16
  inputs and accumulates in fp32, which is what a TPU's MXU does with fp32 operands at default
  precision; norms, softmax and the loss stay fp32. `fp32` asks for "highest" (true fp32
  matmuls on a TPU). Muon's Newton-Schulz multiplies in bf16 on a TPU (as torch does on CUDA).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torchax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from speedrun_api.spec_train import OptimizerSpec
from speedrun_trainer.train.optim import _split_params
from speedrun_trainer.train.runtime import native_bf16_matmul

# train/muon.py's quintic Newton-Schulz coefficients (the Muon write-up's).
NS_COEFFS = (3.4445, -4.7750, 2.0315)
Params = dict[str, jax.Array]
PAD_TO = 64  # JaxEvalModel: sequence lengths are padded to a multiple of this (fewer compiles)


def newton_schulz(grad: jax.Array, steps: int = 5, dtype: Any = jnp.float32) -> jax.Array:
    """train/muon.py's `newton_schulz` for one matrix: approximately U V^T of grad = U S V^T."""
    a, b, c = NS_COEFFS
    x = grad.astype(dtype)
    transposed = x.shape[0] > x.shape[1]
    if transposed:  # iterate on the wide form: X X^T is the smaller Gram matrix
        x = x.T
    x = x / (jnp.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        poly = b * gram + c * (gram @ gram)
        x = a * x + poly @ x
    if transposed:
        x = x.T
    return x.astype(grad.dtype)


class MuonState(NamedTuple):
    momentum: Params


def muon(lr: float, momentum: float, weight_decay: float, ns_dtype: Any, nesterov: bool = True):
    """Muon as an optax transformation; its updates are train/muon.py's at learning rate `lr`."""

    def init(params: Params) -> MuonState:
        return MuonState(momentum=jax.tree.map(jnp.zeros_like, params))

    def update(grads: Params, state: MuonState, params: Params | None = None) -> tuple[Params, MuonState]:
        assert params is not None
        buf = jax.tree.map(lambda m, g: m + (g - m) * (1 - momentum), state.momentum, grads)  # lerp

        def one(g: jax.Array, m: jax.Array, p: jax.Array) -> jax.Array:
            d = g + (m - g) * momentum if nesterov else m
            rows, cols = p.shape
            return -lr * weight_decay * p - lr * max(1.0, rows / cols) ** 0.5 * newton_schulz(d, 5, ns_dtype)

        return jax.tree.map(one, grads, buf, params), MuonState(momentum=buf)

    return optax.GradientTransformation(init, update)


def build_optimizer(model: torch.nn.Module, opt: OptimizerSpec, names: list[str], ns_dtype: Any):
    """The spec's optimizer over the parameters `names` (train/optim.py `build_optimizers`'s groups)."""
    hidden_ids = {id(p) for p in _split_params(model)[0]}
    named = dict(model.named_parameters())
    decay_mask = {n: named[n].ndim >= 2 for n in names}
    adam = {"b1": opt.beta1, "b2": opt.beta2, "eps": 1e-8, "weight_decay": opt.weight_decay, "mask": decay_mask}
    if opt.name == "adamw":
        return optax.adamw(opt.learning_rate, **adam)
    labels = {n: "muon" if id(named[n]) in hidden_ids else "adam" for n in names}
    return optax.multi_transform(
        {
            "muon": muon(opt.learning_rate, opt.momentum, opt.weight_decay, ns_dtype),
            "adam": optax.adamw(opt.adam_learning_rate or opt.learning_rate / 5, **adam),
        },
        labels,
    )


def clip_by_global_norm(grads: Params, max_norm: float) -> Params:
    """torch's `clip_grad_norm_`: scale by min(1, max_norm / (total norm + 1e-6))."""
    if max_norm <= 0:
        return grads
    coef = jnp.minimum(1.0, max_norm / (optax.global_norm(grads) + 1e-6))
    return jax.tree.map(lambda g: g * coef, grads)


def data_mesh() -> Mesh:
    """A 1-D mesh "data" over every device of every process (jax.devices() is global)."""
    return Mesh(np.array(jax.devices()), ("data",))


class JaxStep:
    """The GPT's parameters, optimizer state and jitted update (see the module doc)."""

    def __init__(
        self,
        model: torch.nn.Module,
        opt: OptimizerSpec,
        mesh: Mesh,
        precision: str,
        max_grad_norm: float,
        ns_dtype: Any = None,
    ) -> None:
        self.model, self.mesh = model, mesh
        self.replicated = NamedSharding(mesh, P())
        self.batch_sharding = NamedSharding(mesh, P(None, "data", None))  # (accum, batch, seq)
        states, self.forward = torchax.extract_jax(model)
        self.names = [n for n, _ in model.named_parameters()]  # tied weights once, as extract_jax
        put = lambda tree: jax.device_put(tree, self.replicated)
        self.params: Params = put({n: states[n] for n in self.names})
        self.buffers: Params = {k: v for k, v in states.items() if k not in self.params}  # constants
        # Newton-Schulz in bf16 where the chip multiplies bf16 natively: a TPU, or (as the torch
        # path decides on a CPU, train/optim.py) a CPU with AVX512-BF16 or AMX.
        ns_bf16 = jax.default_backend() == "tpu" or native_bf16_matmul(torch.device("cpu"))
        ns_dtype = ns_dtype or (jnp.bfloat16 if ns_bf16 else jnp.float32)  # the tests compare in fp32
        self.tx = build_optimizer(model, opt, self.names, ns_dtype)
        self.opt_state = jax.jit(self.tx.init, out_shardings=self.replicated)(self.params)
        self.matmul_precision = "bfloat16" if precision == "bf16" else "highest"
        self.max_grad_norm = max_grad_norm
        self._update = jax.jit(self._step, donate_argnums=(0, 1), out_shardings=self.replicated)

    def loss_fn(self, params: Params, x: jax.Array, y: jax.Array, doc: jax.Array | None) -> jax.Array:
        kwargs = {} if doc is None else {"doc_ids": doc}
        return self.forward({**params, **self.buffers}, (x, y), kwargs)

    def _step(self, params: Params, opt_state: Any, xs: jax.Array, ys: jax.Array, docs: Any, lr_mult: jax.Array):
        with jax.default_matmul_precision(self.matmul_precision):
            grad_fn = jax.value_and_grad(self.loss_fn)
            accum = xs.shape[0]
            total, grads = None, None
            for i in range(accum):  # micro-steps: the gradient of the mean loss, as torch's loss / accum
                loss, g = grad_fn(params, xs[i], ys[i], None if docs is None else docs[i])
                total = loss if total is None else total + loss
                grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
            grads = jax.tree.map(lambda g: g / accum, grads)
            grads = clip_by_global_norm(grads, self.max_grad_norm)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            updates = jax.tree.map(lambda u: u * lr_mult, updates)
            return optax.apply_updates(params, updates), opt_state, total / accum

    def global_batch(self, local: np.ndarray) -> jax.Array:
        """This process's rows (accum, rows, seq) as its part of the global, batch-sharded array."""
        shape = (local.shape[0], local.shape[1] * jax.process_count(), local.shape[2])
        return jax.make_array_from_process_local_data(self.batch_sharding, local, shape)

    def __call__(
        self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]], lr_mult: float, doc_ids: Callable | None
    ):
        """One optimizer step on this process's micro-batches; returns the mean loss (a jax scalar)."""
        xs = self.global_batch(np.stack([x.numpy() for x, _ in micro_batches]))
        ys = self.global_batch(np.stack([y.numpy() for _, y in micro_batches]))
        docs = None
        if doc_ids is not None:
            docs = self.global_batch(np.stack([doc_ids(x).numpy() for x, _ in micro_batches]))
        self.params, self.opt_state, loss = self._update(
            self.params, self.opt_state, xs, ys, docs, jnp.asarray(lr_mult, jnp.float32)
        )
        return loss

    # ---- torch views of the state (checkpoints, evaluation) -------------------------------
    def to_torch(self) -> torch.nn.Module:
        """The torch `GPT` holding the current parameters (CPU, fp32): its state_dict is the checkpoint."""
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, value in self.params.items():
                named[n].copy_(torch.from_numpy(np.array(_local(value))))
        return self.model

    def load_torch(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Parameters from a torch state_dict (a checkpoint), replicated over the mesh."""
        self.params = jax.device_put(
            {n: jnp.asarray(state_dict[n].float().numpy()) for n in self.names}, self.replicated
        )

    def optimizer_state(self) -> list[dict[str, Any]]:
        """The optimizer state as one torch-saveable dict: its leaves in tree order, as tensors."""
        leaves = jax.tree.leaves(self.opt_state)
        return [{"backend": "jax", "leaves": [torch.from_numpy(np.array(_local(v))) for v in leaves]}]

    def load_optimizer_state(self, states: list[dict[str, Any]]) -> None:
        leaves, tree = jax.tree.flatten(self.opt_state)
        saved = states[0]["leaves"] if states and states[0].get("backend") == "jax" else None
        if saved is None or len(saved) != len(leaves):
            raise ValueError(
                "the checkpoint's optimizer state is not this JAX backend's (another backend or optimizer)"
            )
        new = [jnp.asarray(t.numpy(), dtype=old.dtype) for t, old in zip(saved, leaves, strict=True)]
        self.opt_state = jax.device_put(jax.tree.unflatten(tree, new), self.replicated)


class JaxEvalModel(torch.nn.Module):
    """The current parameters as a torch module for the evaluation code (loss_eval.py, core_eval.py):
    its forward takes and returns torch CPU tensors, as `GPT.forward` does, and runs the GPT's JAX
    function jitted on this process's first device (a TPU chip on a TPU host), so the scoring,
    the byte counts and the BPB are the torch evaluation's own code while the model runs where it
    trains. Called by one process alone (process 0), so it uses that process's own copy of the
    replicated parameters: no collective with the others."""

    def __init__(self, step: JaxStep) -> None:
        super().__init__()
        self.step = step
        self._jitted = jax.jit(self._apply, static_argnames=("reduction", "with_targets"))

    def _apply(self, params: Params, x: jax.Array, y: jax.Array, doc: Any, reduction: str, with_targets: bool):
        kwargs: dict[str, Any] = {"reduction": reduction}
        if doc is not None:
            kwargs["doc_ids"] = doc
        model, was_training = self.step.model, self.step.model.training
        model.eval()  # traced in eval mode: prompts may run past seqLen, as the torch evaluation allows
        try:
            with jax.default_matmul_precision(self.step.matmul_precision):
                return self.step.forward({**params, **self.step.buffers}, (x, y if with_targets else None), kwargs)
        finally:
            model.train(was_training)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        reduction: str = "mean",
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        params = {k: _local(v) for k, v in self.step.params.items()}
        width = idx.shape[1]
        # CORE's prompts vary in length: padded on the right to a multiple of PAD_TO, one compile
        # per bucket instead of per length. Causal attention keeps the real positions' outputs
        # as they were; padded targets are -1 (ignored) and the padding is cut off the result.
        pad = 0 if reduction == "mean" or doc_ids is not None else -width % PAD_TO
        x = jnp.asarray(np.pad(idx.cpu().numpy(), ((0, 0), (0, pad))))
        y = x if targets is None else jnp.asarray(np.pad(targets.cpu().numpy(), ((0, 0), (0, pad)), constant_values=-1))
        doc = None if doc_ids is None else jnp.asarray(doc_ids.cpu().numpy())
        out = self._jitted(params, x, y, doc, reduction=reduction, with_targets=targets is not None)
        return torch.from_numpy(np.array(out))[:, :width] if pad else torch.from_numpy(np.array(out))


def _local(value: jax.Array) -> jax.Array:
    """A replicated array's whole value from this process's first device (works multi-process)."""
    return value.addressable_data(0)
