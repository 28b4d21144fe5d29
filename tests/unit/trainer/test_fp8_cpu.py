"""`precision: fp8` through real train steps on CPU, and the rule that evaluation never runs FP8.

torch 2.13 runs `torch._scaled_mm`, the FP8 GEMM torchao's Float8Linear calls, on CPU too, so the
trainer's own `convert_to_fp8(model)` trains here through the very graph a GPU compiles (the
casts, the per-tensor scales, the scaled GEMMs); torchao's emulation mode (`emulate=True`: the
same casts and scales, the matmuls in plain float) is checked too, eagerly. The trainer itself
still refuses fp8 on CPU (test_fp8.py). The model is wide enough (hidden 128, MLP 256) that the
q/o and MLP matrices convert, while k/v (2 heads x 32 = 64 wide), the tied LM head and the
embedding stay plain. Trained as train/loop.py trains it (tests/support/train_path.py: Muon or
AdamW, accumulation, bf16 autocast as `precision: fp8` gets on CUDA; compiled), its loss falls
and stays finite, and after the first step nothing recompiles, an in-loop evaluation (which swaps
the FP8 layers for plain ones and back, `fp8.without_fp8`) included; its training forward is one
graph with no break, emulated or not.

The evaluation rule (train/loss_eval.py `eval_precision`): the in-loop evaluation of the fp8-trained
model equals the final evaluation's, which rebuilds a plain GPT from the same weights, while the
FP8 layers themselves give another loss (so the equality is not trivially true).

Run: pytest -q tests/unit/trainer/test_fp8_cpu.py  (CPU; ~1 min with a cold inductor cache)
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from speedrun_api.spec_train import OptimizerSpec
from speedrun_trainer.train import fp8
from speedrun_trainer.train.loss_eval import LossEval, eval_precision
from speedrun_trainer.train.model import GPT
from speedrun_trainer.train.runtime import autocast
from tests.support.train_path import (
    ADAMW,
    CPU,
    MUON,
    SPEC,
    bigram_dataset,
    build_step,
    evaluate_plain,
    explain_training_forward,
    prefetcher,
    run_steps,
)

pytest.importorskip("torchao.float8")
pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
    reason="torch.compile on CPU needs a C++ compiler (inductor's C++ backend)",
)

SPEC_FP8 = SPEC.model_copy(update={"hidden_dim": 128, "intermediate_dim": 256, "tie_embeddings": True})
CONVERTED = [f"blocks.{i}.{n}" for i in range(2) for n in ("attn.c_q", "attn.c_proj", "mlp.c_up", "mlp.c_proj")]
DATA = bigram_dataset()


@dataclass
class Fp8Run:
    model: GPT
    converted: list[str]
    losses: list[float]
    new_graphs: int  # compiled after the first step


def evaluate(model: torch.nn.Module, precision: str) -> LossEval:
    """The run's BPB evaluation as `evaluate_run_loss` calls it, on 8 sequences."""
    return evaluate_plain(model, DATA, 8, precision)


def train_fp8(opt: OptimizerSpec, *, emulate: bool = False, compile: bool = True) -> Fp8Run:
    torch.manual_seed(0)
    model = GPT(SPEC_FP8)
    converted = fp8.convert_to_fp8(model, emulate=emulate)  # before compile and the optimizers, as the trainer
    # "bf16": the autocast `precision: fp8` runs under on CUDA (on CPU "fp8" would autocast nothing)
    built = build_step(model, precision="bf16", compile=compile, opt=opt)
    batches = prefetcher(DATA, accum=2)
    try:
        losses = run_steps(built, batches, 0, 1, opt)  # compiles
        graphs = counters["stats"]["unique_graphs"]
        with torch._dynamo.config.patch(error_on_recompile=True):
            losses += run_steps(built, batches, 1, 4, opt)
            evaluate(model, "bf16")  # the in-loop evaluation: FP8 layers out and back in
            losses += run_steps(built, batches, 5, 4, opt)
    finally:
        batches.close()
    return Fp8Run(model, converted, losses, counters["stats"]["unique_graphs"] - graphs)


@pytest.fixture(scope="module")
def muon_run() -> Fp8Run:
    return train_fp8(MUON)


def _assert_trained_in_fp8(run: Fp8Run) -> None:
    assert run.converted == CONVERTED
    modules = dict(run.model.named_modules())
    assert [n for n, m in modules.items() if type(m).__name__ == "Float8Linear"] == CONVERTED  # still, after eval
    assert all(type(modules[f"blocks.{i}.attn.{n}"]) is torch.nn.Linear for i in range(2) for n in ("c_k", "c_v"))
    assert type(run.model.lm_head) is torch.nn.Linear and run.model.lm_head.weight is run.model.wte.weight
    assert run.new_graphs == 0
    assert all(np.isfinite(run.losses)), run.losses
    assert run.losses[-1] < run.losses[0] - 0.5, run.losses


@pytest.mark.parametrize("emulate", [False, True], ids=["scaled_mm", "emulated"])
def test_fp8_training_forward_is_one_graph(emulate: bool) -> None:
    torch.manual_seed(0)
    model = GPT(SPEC_FP8)
    fp8.convert_to_fp8(model, emulate=emulate)
    out = explain_training_forward(model)
    assert (out.graph_count, out.graph_break_count) == (1, 0), [str(r.reason) for r in out.break_reasons]


def test_fp8_trains_compiled_with_muon(muon_run: Fp8Run) -> None:
    assert not any(m.config.emulate for m in muon_run.model.modules() if type(m).__name__ == "Float8Linear")
    _assert_trained_in_fp8(muon_run)


def test_fp8_trains_with_adamw_in_emulation() -> None:
    run = train_fp8(ADAMW, emulate=True, compile=False)
    assert all(m.config.emulate for m in run.model.modules() if type(m).__name__ == "Float8Linear")
    _assert_trained_in_fp8(run)


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_in_loop_evaluation_equals_the_final_one(muon_run: Fp8Run, precision: str) -> None:
    # "bf16": under the autocast fp8 runs evaluate in on CUDA; "fp8": as the spec says it (fp32 on CPU).
    in_loop = evaluate(muon_run.model, precision)  # Trainer._evaluate's model: FP8 layers inside
    final = GPT(SPEC_FP8)  # evaluation/evaluate.py: a plain GPT, the checkpoint's weights loaded
    final.load_state_dict(muon_run.model.state_dict())
    at_end = evaluate(final, precision)
    for got, want in [
        (in_loop.loss, at_end.loss),
        (in_loop.bpb, at_end.bpb),
        (in_loop.nanochat_bpb, at_end.nanochat_bpb),
    ]:
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
    # Not trivially equal: through its FP8 layers the same model scores another loss.
    x, y = DATA.sequences(0, 8, SPEC.seq_len)
    model = muon_run.model.eval()
    with torch.no_grad(), autocast(CPU, precision):
        through_fp8 = float(model(x, y))
    model.train()
    assert abs(through_fp8 - in_loop.loss) > 1e-4, (through_fp8, in_loop.loss)


def test_without_fp8_runs_plain_linears_over_the_same_weights_and_puts_them_back() -> None:
    torch.manual_seed(0)
    model = GPT(SPEC_FP8)
    fp8.convert_to_fp8(model)
    before, params = dict(model.named_modules()), dict(model.named_parameters())
    with fp8.without_fp8(model) as inside:
        assert inside is model
        swapped = dict(model.named_modules())
        assert all(type(swapped[n]) is torch.nn.Linear for n in CONVERTED)
        assert all(swapped[n].weight is params[f"{n}.weight"] for n in CONVERTED)  # nothing copied
        assert dict(model.named_parameters()) == params
    assert dict(model.named_modules()) == before  # the very same modules back
    plain = GPT(SPEC_FP8)
    with fp8.without_fp8(plain):  # nothing to swap
        assert dict(plain.named_modules()).keys() == dict(GPT(SPEC_FP8).named_modules()).keys()


def test_eval_precision_is_bf16_or_fp32_never_fp8() -> None:
    cuda = torch.device("cuda", 0)
    assert eval_precision(cuda, "fp8") == eval_precision(cuda, "bf16") == "bf16"
    assert eval_precision(cuda, "fp32") == "fp32" and eval_precision(CPU, "fp32") == "fp32"
