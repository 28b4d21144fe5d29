"""The document mask (train/attention.py): attention within the documents of a packed row.

The reference is levanter's definition, scored the long way: every document run through the model
alone, its RoPE positions offset to where it sits in the packed row (positions stay absolute, as
levanter keeps them). A packed, masked forward must give the same logits and per-token losses
(fp32, 1e-5) for every family of attention (GQA or not, QK-norm or not). A document is the tokens
up to and including its EOS; the next one starts after it (levanter `LmExample.causal`).
The dense (CPU) kernel is checked here; the FlexAttention kernel (GPUs), compiled on CPU, in
test_compile_graphs.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from speedrun_trainer.data.tokenizer import load_tokenizer
from speedrun_trainer.train.attention import segment_ids
from speedrun_trainer.train.loss_eval import evaluate_loss
from speedrun_trainer.train.model import GPT
from tests.support.train_path import CPU, DEVICE_BATCH, SPEC, bigram_dataset, build_step, prefetcher

EOS = 255
FAMILIES = {
    "gqa-qknorm-relu2": dict(num_kv_heads=2, qk_norm=True, activation="relu2"),
    "mha-silu-untied": dict(num_kv_heads=4, qk_norm=False, activation="silu", tie_embeddings=False),
    "mqa-qknorm-gelu": dict(num_kv_heads=1, qk_norm=True, activation="gelu", tie_embeddings=True),
}
# Document lengths of each packed row (seqLen 32); every document but the row's last ends in EOS.
# A lone EOS (two EOS in a row) is a document of its own.
ROWS = [[7, 12, 1, 9, 3], [1, 20, 11]]


def _packed(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, targets) of shape (len(ROWS), seqLen): random documents packed back to back."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, EOS - 5, (len(ROWS), SPEC.seq_len + 1), generator=g)
    for r, lengths in enumerate(ROWS):
        assert sum(lengths) == SPEC.seq_len
        for end in np.cumsum(lengths)[:-1]:
            ids[r, end - 1] = EOS
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def _alone(model: GPT, ids: torch.Tensor, targets: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One document through the model by itself, RoPE positions start .. start+len-1."""
    saved = []
    for block in model.blocks:
        rotary = block.attn.rotary
        saved.append((rotary.cos, rotary.sin))
        cos, sin = rotary._tables(start + ids.size(1))
        rotary.cos, rotary.sin = cos[:, start:], sin[:, start:]
    try:
        return model(ids), model(ids, targets, reduction="none")
    finally:
        for block, (cos, sin) in zip(model.blocks, saved, strict=True):
            block.attn.rotary.cos, block.attn.rotary.sin = cos, sin


def test_segments_start_after_each_eos() -> None:
    # levanter: segment_ids = cumsum(roll(tokens, 1) == eos), first token in segment 0
    idx = torch.tensor([[EOS, 3, EOS, 4, 5, EOS, EOS, 6], [1, 2, 3, 4, 5, 6, 7, EOS]])
    assert segment_ids(idx, EOS).tolist() == [[0, 1, 1, 2, 2, 2, 3, 4], [0] * 8]


@pytest.mark.parametrize("family", FAMILIES.values(), ids=FAMILIES.keys())
def test_masked_row_equals_each_document_alone(family: dict) -> None:
    torch.manual_seed(0)
    model = GPT(SPEC.model_copy(update=family)).eval()
    ids, targets = _packed()
    with torch.no_grad():
        logits = model(ids, doc_ids=segment_ids(ids, EOS))
        losses = model(ids, targets, reduction="none", doc_ids=segment_ids(ids, EOS))
        unmasked = model(ids, targets, reduction="none")
        for r, lengths in enumerate(ROWS):
            for start, n in zip(np.cumsum([0, *lengths[:-1]]), lengths, strict=True):
                s = slice(int(start), int(start + n))
                ref_logits, ref_losses = _alone(model, ids[r : r + 1, s], targets[r : r + 1, s], int(start))
                torch.testing.assert_close(logits[r, s], ref_logits[0], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(losses[r, s], ref_losses[0], atol=1e-5, rtol=1e-5)
    # the first document of each row sees nothing before it: masked or not, the same
    for r, lengths in enumerate(ROWS):
        first = slice(0, lengths[0])
        torch.testing.assert_close(losses[r, first], unmasked[r, first], atol=1e-6, rtol=1e-6)
    assert (losses - unmasked).abs().max() > 1e-3  # later documents no longer see earlier ones


def test_a_row_without_eos_is_the_unmasked_model() -> None:
    torch.manual_seed(0)
    model = GPT(SPEC).eval()
    ids, targets = _packed()
    ids[ids == EOS] = 7
    with torch.no_grad():
        torch.testing.assert_close(model(ids, doc_ids=segment_ids(ids, EOS)), model(ids), atol=1e-6, rtol=1e-6)
        mean = model(ids, targets, doc_ids=segment_ids(ids, EOS))
        torch.testing.assert_close(mean, model(ids, targets), atol=1e-6, rtol=1e-6)


def test_the_eos_attends_to_the_document_it_ends() -> None:
    torch.manual_seed(0)
    model = GPT(SPEC).eval()
    ids, _ = _packed()
    eos_at = ROWS[0][0] - 1  # the first document's EOS
    assert ids[0, eos_at] == EOS
    with torch.no_grad():
        base = model(ids, doc_ids=segment_ids(ids, EOS))[0, eos_at]
        before, after = ids.clone(), ids.clone()
        before[0, eos_at - 2] = (before[0, eos_at - 2] + 1) % EOS  # a token of its own document
        after[0, eos_at + 1 :] = (after[0, eos_at + 1 :] + 1) % EOS  # everything after it
        assert (model(before, doc_ids=segment_ids(before, EOS))[0, eos_at] - base).abs().max() > 1e-4
        torch.testing.assert_close(model(after, doc_ids=segment_ids(after, EOS))[0, eos_at], base, atol=0, rtol=0)


def test_training_and_evaluation_run_masked() -> None:
    # The trainer's step passes the EOS (Trainer sets TrainStep.document_eos from model.documentMask);
    # evaluate_loss(document_mask=eos) scores masked and says so.
    ds = bigram_dataset(tokens=4_000)
    built = build_step(GPT(SPEC), precision="fp32", compile=False)
    batches = prefetcher(ds, accum=1)
    try:
        micro = batches.next_step()
    finally:
        batches.close()
    x, y = micro[0]
    eos = int(x[0, 5])  # a token the batch holds, so the mask splits it
    with torch.no_grad():
        masked, plain = built.model(x, y, doc_ids=segment_ids(x, eos)), built.model(x, y)
    assert abs(float(masked) - float(plain)) > 1e-4
    built.step.document_eos = eos
    assert float(built.step(micro)) == pytest.approx(float(masked), rel=1e-6)

    kwargs = dict(tokens=4 * SPEC.seq_len, seq_len=SPEC.seq_len, batch_size=DEVICE_BATCH, rank=0, world_size=1)
    token_bytes = np.ones(SPEC.vocab_size, dtype=np.int64)
    ev = evaluate_loss(built.model, ds, token_bytes, **kwargs, device=CPU, precision="fp32", document_mask=eos)
    ev_plain = evaluate_loss(built.model, ds, token_bytes, **kwargs, device=CPU, precision="fp32")
    assert ev.document_mask and not ev_plain.document_mask
    assert ev.loss != pytest.approx(ev_plain.loss, rel=1e-6)


def test_the_trainer_trains_masked_when_the_spec_asks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from speedrun_api.manifest import parse_job
    from speedrun_trainer.train.loop import Trainer
    from speedrun_trainer.train.runtime import Dist
    from tests.support.helpers import tiny_manifest

    monkeypatch.setenv("SPEEDRUN_METRICS_PORT", "0")
    changes = {"spec.train.steps": 2, "spec.train.evalEvery": 0, "spec.train.checkpointEvery": 0}
    for masked in (False, True):
        monkeypatch.setenv("SPEEDRUN_STORAGE_URI", (tmp_path / f"run-{masked}").as_uri())
        job = parse_job(tiny_manifest(**changes, **{"spec.model.documentMask": masked, "spec.eval.bpb.tokens": 256}))
        trainer = Trainer(job, Dist(rank=0, local_rank=0, world_size=1, device=torch.device("cpu")))
        try:
            eos = trainer.tokenizer.document_end_id()
            assert trainer.train_step.document_eos == (eos if masked else None)
            assert trainer.run().step == 2
        finally:
            trainer.close()


def test_the_tokenizer_names_the_document_end(tmp_path: Path) -> None:
    from tests.support.llama3_vocab import BYTE_LEVEL, byte_level_bpe, byte_level_chars, special_tokens

    # levanter-style tokenizers end documents with their EOS (Llama 3: <|end_of_text|>), not the BOS
    doc = byte_level_bpe(
        {c: i for i, c in enumerate(byte_level_chars())},
        [],
        special_tokens(256, ["<|begin_of_text|>", "<|end_of_text|>"]),
        decoder=BYTE_LEVEL,
    )
    (tmp_path / "tok.json").write_text(json.dumps(doc))
    tok = load_tokenizer(str(tmp_path / "tok.json"))
    assert (tok.eot_id, tok.document_end_id()) == (256, 257)
    assert load_tokenizer("byte").document_end_id() == 256  # the separator otherwise


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_flex_attention_equals_the_dense_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    # On CUDA the mask is a FlexAttention BlockMask: compiled with the model (training) and through
    # its own compiled kernel (evaluation's eager calls); both against the dense kernel, gradients too.
    from speedrun_trainer.train import attention

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = GPT(SPEC).to(device)
    ids, targets = (t.to(device) for t in _packed())
    doc_ids = segment_ids(ids, EOS)
    flex_eager = model(ids, targets, reduction="none", doc_ids=doc_ids)
    flex = torch.compile(model)(ids, targets, doc_ids=doc_ids)
    flex.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(attention, "FLEX_DEVICES", ())
    dense = model(ids, targets, doc_ids=doc_ids)
    dense.backward()
    torch.testing.assert_close(flex, dense, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        dense_per_token = model(ids, targets, reduction="none", doc_ids=doc_ids)
    torch.testing.assert_close(flex_eager.detach(), dense_per_token, atol=1e-4, rtol=1e-4)
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-4, rtol=1e-3)
