"""Our levanter BPB against levanter's own code (tests/support/levanter_env.py), on the same ids.

Three pieces of `eval/paloma/c4_en/bpb`, each checked against the levanter function that makes it:
the byte table (hf_utils.py `byte_length_of_token` via eval.py `_calculate_bytes_per_token_type`),
the chunks (data/text/datasets.py `TokenSeqDataset` + `CausalLmDataset`) and the per-batch BPB
accumulation (eval.py `TaggedEvaluator._make_accum_for_batch`), the last fed the losses our
evaluation computes. In the e2e tier: the first run builds levanter's venv (a few seconds from a
warm uv cache, minutes from none), and each reference call starts jax.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from speedrun_api.metric_definitions import levanter_chunks
from speedrun_trainer.data.tokenizer import JsonTokenizer
from speedrun_trainer.train.loss_eval import evaluate_loss, sequences_to_score
from tests.support.levanter_env import run_reference
from tests.support.llama3_vocab import byte_level_bpe, byte_level_chars, special_tokens

pytestmark = pytest.mark.e2e

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>"]
TEXTS = ["A café costs 3 €.", "Ünïcödé . . and  two  spaces", "plain text, then more. End"]


def _tokenizer_doc() -> dict:
    """A byte-level BPE whose merges make the cases levanter's byte count differs on: tokens that
    are not whole UTF-8 (half of "é", two thirds of "€", a space + a lead byte), " ." (the probe's
    neighbour), double spaces; one non-special added token; BOS, EOS and a reserved special."""
    chars = byte_level_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    merges = []
    for pair in (
        ("Ġ", "."),  # " ."
        ("Ã", "©"),  # é = C3 A9
        ("â", "Ĥ"),  # E2 82: the first two bytes of € (E2 82 AC)
        ("Ġ", "Ã"),  # a space and a UTF-8 lead byte
        ("Ġ", "Ġ"),  # two spaces
        (".", "."),
        ("c", "a"),
    ):
        vocab["".join(pair)] = len(vocab)
        merges.append(list(pair))
    added = special_tokens(len(vocab), SPECIALS)
    added.append({**special_tokens(len(vocab) + len(SPECIALS), ["<tool>"])[0], "special": False})
    return byte_level_bpe(vocab, merges, added)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """tokenizer.json + the tokenizer_config.json an HF hub tokenizer has beside it (BOS, EOS and
    added_tokens_decoder: what levanter's load_tokenizer reads its special ids from)."""
    root = tmp_path_factory.mktemp("tok")
    doc = _tokenizer_doc()
    (root / "tokenizer.json").write_text(json.dumps(doc))
    decoder = {str(t["id"]): {"content": t["content"], "special": t["special"]} for t in doc["added_tokens"]}
    config = {"bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "added_tokens_decoder": decoder}
    (root / "tokenizer_config.json").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="module")
def ours(tokenizer_dir) -> JsonTokenizer:
    return JsonTokenizer(str(tokenizer_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def levanter_table(tokenizer_dir) -> np.ndarray:
    return np.asarray(run_reference("byte_table", {"tokenizer_dir": str(tokenizer_dir)}), dtype=np.int64)


def test_byte_table_is_levanters(ours, levanter_table):
    np.testing.assert_array_equal(ours.levanter_token_bytes(), levanter_table)
    # and it is not the exact count: the half-UTF-8 tokens decode to U+FFFD (3 bytes)
    assert (ours.levanter_token_bytes() != ours.token_bytes()).any()


def _stream(tok: JsonTokenizer) -> np.ndarray:
    """Documents as levanter writes them: BOS + text + " " + EOS, concatenated."""
    return np.concatenate([tok.levanter_document(t) for t in TEXTS * 4])


@pytest.mark.parametrize("seq_len", [8, 16])
def test_chunks_are_levanters(ours, seq_len):
    tokens = _stream(ours)
    for n in (len(tokens), (len(tokens) // seq_len) * seq_len):  # a ragged end, and a multiple of T
        ref = run_reference("chunks", {"tokens": tokens[:n].tolist(), "seq_len": seq_len, "eos_id": ours.eot_id})
        assert len(ref["tokens"]) == levanter_chunks(n, seq_len) == sequences_to_score(n, seq_len, n)
        for j, chunk in enumerate(ref["tokens"]):
            np.testing.assert_array_equal(chunk, tokens[j * seq_len : (j + 1) * seq_len])
            assert ref["loss_weight"][j] == [1.0] * (seq_len - 1) + [0.0]  # all but the last position


class FormulaModel(torch.nn.Module):
    """Per-position losses any implementation can recompute: a function of (input, target, position)."""

    def forward(self, x, y, reduction="none"):
        pos = torch.arange(x.shape[1])
        return 0.25 + ((x * 7 + y * 13 + pos) % 23).float() / 7


def _formula(tokens: np.ndarray, targets: np.ndarray) -> np.ndarray:
    pos = np.arange(tokens.shape[1])
    return 0.25 + ((tokens * 7 + targets * 13 + pos) % 23).astype(np.float32) / 7


class StreamDataset:
    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens, self.num_tokens = tokens, len(tokens)

    def sequences(self, first, count, seq_len):
        idx = (np.arange(count * seq_len + 1) + first * seq_len) % self.num_tokens
        buf = torch.as_tensor(self.tokens[idx].astype(np.int64))
        return buf[:-1].reshape(count, seq_len), buf[1:].reshape(count, seq_len)


@pytest.mark.parametrize(("seq_len", "eval_batch", "device_batch"), [(16, 4, 2), (8, 3, 3)])
def test_bpb_is_levanters(ours, levanter_table, seq_len, eval_batch, device_batch):
    """The whole set, in levanter's chunks and eval batches, with its byte table: the BPB levanter's
    eval loop accumulates from the same per-position losses, to 1e-6."""
    tokens = _stream(ours)
    n = len(tokens)
    ev = evaluate_loss(
        FormulaModel(),
        StreamDataset(tokens),
        ours.token_bytes(),
        tokens=n,
        seq_len=seq_len,
        batch_size=device_batch,
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        precision="fp32",
        eval_batch=eval_batch,
        levanter_bytes=ours.levanter_token_bytes(),
    )
    assert not ev.partial and ev.chunks_scored == n // seq_len
    ref = run_reference("chunks", {"tokens": tokens.tolist(), "seq_len": seq_len, "eos_id": ours.eot_id})
    chunks = np.asarray(ref["tokens"])
    targets = np.roll(chunks, -1, axis=1)  # levanter eval.py _default_lm_eval_loss_fn's token ids
    losses = _formula(chunks, targets)
    batches = [
        {
            "losses": losses[i : i + eval_batch].tolist(),
            "weights": ref["loss_weight"][i : i + eval_batch],
            "token_ids": targets[i : i + eval_batch].tolist(),
        }
        for i in range(0, len(chunks), eval_batch)
    ]
    got = run_reference("bpb", {"batches": batches, "bytes_per_token": levanter_table.tolist(), "tag": "paloma/c4_en"})
    assert math.isfinite(ev.bpb)
    assert ev.bpb == pytest.approx(got["tag_bpb"], rel=1e-6)
    assert ev.bpb == pytest.approx(got["micro_bpb"], rel=1e-6)


def _hf_llama_weights(model) -> dict[str, np.ndarray]:
    """Our GPT's weights under HF Llama's names, which levanter's Llama loads
    (haliax.state_dict.from_torch_compatible_state_dict). Same layouts (RoPE over the halves
    (x[i], x[i + d/2]) as HF Llama's rotate_half, SwiGLU silu(gate) * up, no biases) but for the
    direction RoPE turns, absorbed into q and k below."""
    sd = {"model.embed_tokens.weight": model.wte.weight, "model.norm.weight": model.norm_f.weight}
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn.c_q",
        "self_attn.k_proj": "attn.c_k",
        "self_attn.v_proj": "attn.c_v",
        "self_attn.o_proj": "attn.c_proj",
        "post_attention_layernorm": "mlp_norm",
        "mlp.gate_proj": "mlp.c_gate",
        "mlp.up_proj": "mlp.c_up",
        "mlp.down_proj": "mlp.c_proj",
    }
    for i, block in enumerate(model.blocks):
        for hf, ours in names.items():
            sd[f"model.layers.{i}.{hf}.weight"] = block.get_submodule(ours).weight
    if not model.spec.tie_embeddings:
        sd["lm_head.weight"] = model.lm_head.weight
    out = {k: v.detach().numpy().astype(np.float32) for k, v in sd.items()}
    d = model.spec.head_dim
    for k in [k for k in out if k.endswith(("q_proj.weight", "k_proj.weight"))]:
        # Our Rotary turns each (x[i], x[i + d/2]) pair by -angle (nanochat's convention), levanter
        # (as HF Llama) by +angle: R(-a) = P R(a) P with P negating the second half, and P drops out
        # of q.k, so negating the second half of each head's q and k rows gives levanter the same scores.
        w = out[k].reshape(-1, d, out[k].shape[-1]).copy()
        w[:, d // 2 :] *= -1
        out[k] = w.reshape(out[k].shape)
    return out


@pytest.mark.parametrize("tie", [False, True])
def test_a_tiny_model_scores_levanters_bpb(ours, levanter_table, tmp_path, tie):
    """The same weights as our GPT and as levanter's Llama, on packed levanter documents: our
    masked evaluation gives the BPB levanter's eval path gives, to 1e-5. Flags both express: RMSNorm
    eps 1e-6 (levanter's default is 1e-5: set), RoPE theta 10,000 over the halves, SwiGLU, GQA, no
    QK-norm, no biases; levanter positions stay absolute in a packed row, as ours."""
    from speedrun_api.spec_train import ModelSpec
    from speedrun_trainer.train.model import GPT

    seq_len, eval_batch = 32, 3
    spec = ModelSpec.model_validate(
        dict(
            vocab_size=ours.vocab_size,
            seq_len=seq_len,
            hidden_dim=64,
            intermediate_dim=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            tie_embeddings=tie,
        )
    )
    torch.manual_seed(0)
    model = GPT(spec)
    with torch.no_grad():  # weights large enough that which tokens are attended changes the losses
        for p in model.parameters():
            p.mul_(6.0) if p.ndim == 2 else p.add_(0.2 * torch.randn_like(p))
    tokens = _stream(ours)
    settings = dict(tokens=len(tokens), seq_len=seq_len, batch_size=2, rank=0, world_size=1,
                    device=torch.device("cpu"), precision="fp32", eval_batch=eval_batch,
                    levanter_bytes=ours.levanter_token_bytes())  # fmt: skip
    eos = ours.document_end_id()
    masked = evaluate_loss(model, StreamDataset(tokens), ours.token_bytes(), document_mask=eos, **settings)
    crossing = evaluate_loss(model, StreamDataset(tokens), ours.token_bytes(), **settings)
    assert abs(masked.bpb - crossing.bpb) > 1e-3  # the mask matters here, so agreement means something
    np.savez(tmp_path / "w.npz", **_hf_llama_weights(model))
    config = dict(hidden_dim=64, intermediate_dim=128, num_layers=2, num_heads=4, num_kv_heads=2, eps=1e-6,
                  tie=tie, vocab_size=ours.vocab_size)  # fmt: skip
    request = {"weights": str(tmp_path / "w.npz"), "config": config, "tokens": tokens.tolist(), "seq_len": seq_len,
               "eos_id": eos, "eval_batch": eval_batch, "bytes_per_token": levanter_table.tolist()}  # fmt: skip
    got = run_reference("model_bpb", request)
    assert masked.bpb == pytest.approx(got["tag_bpb"], rel=1e-5)
