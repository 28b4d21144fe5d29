"""What the first GPU run's `train.compile` depends on, proven on CPU (inductor's C++ backend).

- Zero graph breaks: the training forward + loss the trainer compiles (`torch.compile(model)`,
  called as `model(x, y)` under bf16 autocast, train/loop.py and train/step.py) is one graph with
  no break for every model family the spec allows: activation silu / relu2 / gelu, GQA or not,
  QK-norm on or off, tied or untied embeddings; Muon's compiled Newton-Schulz too.
- The document mask (`model.documentMask`, train/attention.py) too: the masked forward is one
  graph with both its kernels, the dense one CPUs use and FlexAttention (GPUs; made to run on CPU
  here), whose compiled forward and gradients equal the dense kernel's; masked steps and a masked
  evaluation add no graph after the first step.
- No recompiles: after the first step (which compiles the model and one Newton-Schulz graph per
  matrix shape), training steps with gradient accumulation and a changing learning rate, an
  in-loop evaluation (BPB on the plain module, as `Trainer._evaluate` runs it; CORE's
  variable-length prompts on the module `core_eval.unwrap` gives) and more steps run under
  `error_on_recompile` and add no graph. Evaluation never calls the compiled module: its shapes
  vary (CORE prompts) and it runs `model.eval()`, both of which would compile anew.

Run: pytest -q tests/unit/trainer/test_compile_graphs.py  (CPU; ~1 min with a cold inductor cache)
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from speedrun_trainer.train import attention
from speedrun_trainer.train.attention import segment_ids
from speedrun_trainer.train.core_eval import unwrap
from speedrun_trainer.train.loss_eval import evaluate_loss
from speedrun_trainer.train.model import GPT, MLP
from speedrun_trainer.train.muon import newton_schulz
from tests.support.train_path import (
    CPU,
    DEVICE_BATCH,
    SPEC,
    bigram_dataset,
    build_step,
    explain_training_forward,
    prefetcher,
    run_steps,
)

pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
    reason="torch.compile on CPU needs a C++ compiler (inductor's C++ backend)",
)

# Every value of every family field at least once (activation x GQA x QK-norm x tied embeddings).
FAMILIES = [
    dict(activation="silu", num_kv_heads=2, qk_norm=True, tie_embeddings=True),
    dict(activation="silu", num_kv_heads=4, qk_norm=False, tie_embeddings=False),
    dict(activation="relu2", num_kv_heads=2, qk_norm=False, tie_embeddings=False),
    dict(activation="relu2", num_kv_heads=4, qk_norm=True, tie_embeddings=True),
    dict(activation="gelu", num_kv_heads=2, qk_norm=True, tie_embeddings=False),
    dict(activation="gelu", num_kv_heads=4, qk_norm=False, tie_embeddings=True),
]


def _family_id(f: dict) -> str:
    gqa = "gqa" if f["num_kv_heads"] < SPEC.num_heads else "mha"
    qk, tied = "qknorm" if f["qk_norm"] else "noqk", "tied" if f["tie_embeddings"] else "untied"
    return f"{f['activation']}-{gqa}-{qk}-{tied}"


@pytest.mark.parametrize("family", FAMILIES, ids=_family_id)
def test_training_forward_is_one_graph_for_every_model_family(family: dict) -> None:
    torch.manual_seed(0)
    out = explain_training_forward(GPT(SPEC.model_copy(update=family)))
    assert (out.graph_count, out.graph_break_count) == (1, 0), [str(r.reason) for r in out.break_reasons]


EOS = 7  # any id: the random tokens of these tests hold it now and then
MASKED_FAMILIES = [FAMILIES[0], FAMILIES[1]]  # GQA + QK-norm, MHA without


@pytest.mark.parametrize("kernel", ["dense", "flex"])
@pytest.mark.parametrize("family", MASKED_FAMILIES, ids=_family_id)
def test_masked_training_forward_is_one_graph(family: dict, kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = GPT(SPEC.model_copy(update=family))
    if kernel == "flex":  # the GPU kernel, traced on CPU; torch has no FlexAttention backward on CPU
        monkeypatch.setattr(attention, "FLEX_DEVICES", ("cpu",))
        model.requires_grad_(False)
    out = explain_training_forward(model, document_eos=EOS)
    assert (out.graph_count, out.graph_break_count) == (1, 0), [str(r.reason) for r in out.break_reasons]


@torch.no_grad()  # torch 2.13 has no FlexAttention backward on CPU; the gradients: -m gpu
def test_compiled_flex_attention_equals_the_dense_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    # The GPU's kernel, compiled with the model as the trainer compiles it, against the CPU's dense
    # mask run eagerly: the same per-token losses (fp32).
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT(SPEC)
    x = torch.randint(0, SPEC.vocab_size, (DEVICE_BATCH, SPEC.seq_len))
    x[:, 9], x[0, 20], x[1, 21] = EOS, EOS, EOS
    y = torch.roll(x, -1, 1)
    dense = model(x, y, reduction="none", doc_ids=segment_ids(x, EOS))
    monkeypatch.setattr(attention, "FLEX_DEVICES", ("cpu",))
    flex = torch.compile(model)(x, y, reduction="none", doc_ids=segment_ids(x, EOS))
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)
    assert (dense - model(x, y, reduction="none")).abs().max() > 1e-3  # the mask is on


def test_the_check_sees_a_graph_break(monkeypatch: pytest.MonkeyPatch) -> None:
    # The control: a host read in the MLP (what a stray .item() would do) is a break, one per block.
    forward = MLP.forward

    def reads_the_host(self: MLP, x: torch.Tensor) -> torch.Tensor:
        if float(x.abs().amax()) < 0:
            x = -x
        return forward(self, x)

    monkeypatch.setattr(MLP, "forward", reads_the_host)
    out = explain_training_forward(GPT(SPEC))
    assert out.graph_break_count >= SPEC.num_layers and out.graph_count > 1


@pytest.mark.parametrize("shape", [(3, 64, 64), (2, 128, 64), (2, 64, 128), (64, 128)], ids=str)
def test_newton_schulz_is_one_graph(shape: tuple[int, ...]) -> None:
    # Muon compiles newton_schulz(stack, steps, dtype) once per matrix shape (train/muon.py).
    torch._dynamo.reset()
    out = torch._dynamo.explain(newton_schulz)(torch.randn(shape), 5, torch.bfloat16)
    assert (out.graph_count, out.graph_break_count) == (1, 0), [str(r.reason) for r in out.break_reasons]


def _core_like_prompts(model: torch.nn.Module) -> None:
    """What CORE does to the model it is given: the plain module, eval mode, prompts of any length
    (past seqLen too), under no_grad; nanochat scores CORE in bf16 on GPUs."""
    plain = unwrap(model)
    plain.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for length in (5, 17, SPEC.seq_len + 9):
            ids = torch.randint(0, SPEC.vocab_size, (3, length))
            plain(ids, ids, reduction="none")
            plain(ids)
    plain.train()


def test_steps_and_evaluations_do_not_recompile() -> None:
    torch.manual_seed(0)
    built = build_step(GPT(SPEC), precision="bf16", compile=True)
    ds = bigram_dataset()
    batches = prefetcher(ds, accum=2)
    token_bytes = np.ones(SPEC.vocab_size, dtype=np.int64)
    try:
        first = run_steps(built, batches, 0, 1)  # compiles: the model, Newton-Schulz per shape
        graphs = counters["stats"]["unique_graphs"]
        with torch._dynamo.config.patch(error_on_recompile=True):
            losses = run_steps(built, batches, 1, 3)
            ev = evaluate_loss(
                built.model,  # what Trainer._evaluate passes: the plain module, not the compiled one
                ds,
                token_bytes,
                tokens=4 * SPEC.seq_len,
                seq_len=SPEC.seq_len,
                batch_size=DEVICE_BATCH,
                rank=0,
                world_size=1,
                device=CPU,
                precision="bf16",
                eval_batch=2 * DEVICE_BATCH,
            )
            _core_like_prompts(built.step.forward)
            losses += run_steps(built, batches, 4, 3)
        assert counters["stats"]["unique_graphs"] == graphs  # nothing new compiled after step 0
    finally:
        batches.close()
    assert np.isfinite(ev.loss) and all(np.isfinite(losses))
    assert losses[-1] < first[0] - 0.5, (first, losses)


def test_masked_steps_and_evaluations_do_not_recompile() -> None:
    # model.documentMask: every step passes the EOS; levanter's BPB scores masked.
    torch.manual_seed(0)
    built = build_step(GPT(SPEC), precision="bf16", compile=True, document_eos=EOS)
    ds = bigram_dataset()
    batches = prefetcher(ds, accum=2)
    token_bytes = np.ones(SPEC.vocab_size, dtype=np.int64)
    try:
        first = run_steps(built, batches, 0, 1)
        graphs = counters["stats"]["unique_graphs"]
        with torch._dynamo.config.patch(error_on_recompile=True):
            losses = run_steps(built, batches, 1, 3)
            ev = evaluate_loss(
                built.model,
                ds,
                token_bytes,
                tokens=4 * SPEC.seq_len,
                seq_len=SPEC.seq_len,
                batch_size=DEVICE_BATCH,
                rank=0,
                world_size=1,
                device=CPU,
                precision="bf16",
                document_mask=EOS,
            )
            losses += run_steps(built, batches, 4, 3)
        assert counters["stats"]["unique_graphs"] == graphs
    finally:
        batches.close()
    assert ev.document_mask and np.isfinite(ev.loss)
    assert losses[-1] < first[0] - 0.5, (first, losses)
