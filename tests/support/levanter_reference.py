"""Runs levanter's own code on a request, in the levanter venv (tests/support/levanter_env.py).

    python levanter_reference.py REQUEST.json ANSWER.json

Python 3.12 with levanter and jax: this file imports nothing of the project. Each op calls the
smallest levanter function that does the work, so the tests compare with levanter's source:

- `byte_table`: levanter eval.py `_calculate_bytes_per_token_type` (hf_utils.py
  `byte_length_of_token` per id) on the tokenizer levanter tokenizers.py `load_tokenizer` makes
  of a local directory (tokenizer.json + tokenizer_config.json).
- `chunks`: levanter data/text/datasets.py `TokenSeqDataset` (over an in-memory stand-in for its
  TreeCache: the two methods it reads) and `CausalLmDataset` (with eos_id): every chunk's tokens,
  loss weights and segment ids.
- `bpb`: levanter eval.py `TaggedEvaluator._make_accum_for_batch`, the per-batch accumulation of
  the eval loop, with a loss function that returns the request's per-position losses, weights and
  target ids instead of running a model; one tag. Returns the micro BPB (`eval/bpb`) and the
  tag's (`eval/<tag>/bpb`, Marin's key for paloma/c4_en).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np


def byte_table(req: dict[str, Any]) -> list[int]:
    from levanter.eval import _calculate_bytes_per_token_type
    from levanter.tokenizers import load_tokenizer

    return [int(b) for b in np.asarray(_calculate_bytes_per_token_type(load_tokenizer(req["tokenizer_dir"])))]


class _FlatCache:
    """The part of levanter's TreeCache that TokenSeqDataset reads: one flat `input_ids` field."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens

    async def async_flat_field_length(self, field: str) -> int:
        assert field == "input_ids"
        return len(self.tokens)

    async def get_flat_field_batch(self, field: str, offsets: np.ndarray, length: int) -> list[np.ndarray]:
        assert field == "input_ids"
        return [self.tokens[o : o + length] for o in offsets]


def chunks(req: dict[str, Any]) -> dict[str, Any]:
    import haliax as hax
    from levanter.data.text.datasets import CausalLmDataset, TokenSeqDataset

    tokens = np.asarray(req["tokens"], dtype=np.int32)
    seqs = TokenSeqDataset(_FlatCache(tokens), req["seq_len"])
    examples = CausalLmDataset(seqs, hax.Axis("position", req["seq_len"]), eos_id=req["eos_id"])

    async def read() -> list[Any]:
        n = await examples.async_len()
        return list(await examples.get_batch(list(range(n)))) if n else []

    out = {"tokens": [], "loss_weight": [], "segment_ids": []}
    for ex in asyncio.run(read()):
        segments = ex.attn_mask.segment_ids
        segments = segments[0] if isinstance(segments, tuple) else segments
        out["tokens"].append(np.asarray(ex.tokens).tolist())
        out["loss_weight"].append(np.asarray(ex.loss_weight).tolist())
        out["segment_ids"].append(None if segments is None else np.asarray(segments).tolist())
    return out


def bpb(req: dict[str, Any]) -> dict[str, float]:
    import jax.numpy as jnp
    from levanter.eval import TaggedEvaluator, _EvalRunningMeans

    class _Tags:  # DomainTaggedDataset's one field the accumulation reads
        def __init__(self) -> None:
            self.tag_to_index = {req["tag"]: 0}

    batches = req["batches"]
    evaluator = object.__new__(TaggedEvaluator)  # no loader, mesh or model: only the accumulation
    evaluator.bytes_per_token = jnp.asarray(req["bytes_per_token"], dtype=jnp.int32)
    evaluator.dataset = _Tags()
    evaluator.axis_mapping = None
    evaluator.device_mesh = None
    evaluator.per_pos_out_sharding = None
    evaluator.loss_fn = lambda model, i: tuple(jnp.asarray(batches[i][k], dtype=d) for k, d in FIELDS)
    accum = evaluator._make_accum_for_batch()
    state = _EvalRunningMeans.zeros_like(jnp.zeros((), jnp.float32), jnp.zeros((1,), jnp.float32))
    for i, batch in enumerate(batches):
        tags = jnp.ones((len(batch["losses"]), 1), dtype=jnp.float32)
        state = accum(None, state, i, tags)
    return {"micro_bpb": float(state.bpb.mean), "tag_bpb": float(state.bpb_per_tag.mean[0])}


def model_bpb(req: dict[str, Any]) -> dict[str, Any]:
    """A Llama of the request's weights (HF names, an .npz) scored by levanter's eval path: chunks
    from `CausalLmDataset` (segment ids after each EOS), batches of `eval_batch` through eval.py
    `_default_lm_eval_loss_fn` (the model's `compute_next_token_loss`) and `_make_accum_for_batch`."""
    import haliax as hax
    import jax
    import jax.numpy as jnp
    from haliax.state_dict import from_torch_compatible_state_dict
    from levanter.data.text.datasets import CausalLmDataset, TokenSeqDataset
    from levanter.eval import TaggedEvaluator, _default_lm_eval_loss_fn, _EvalRunningMeans
    from levanter.models.llama import LlamaConfig, LlamaLMHeadModel

    c = req["config"]
    config = LlamaConfig(
        max_seq_len=req["seq_len"],
        hidden_dim=c["hidden_dim"],
        intermediate_dim=c["intermediate_dim"],
        num_layers=c["num_layers"],
        num_heads=c["num_heads"],
        num_kv_heads=c["num_kv_heads"],
        layer_norm_epsilon=c["eps"],
        tie_word_embeddings=c["tie"],
        gradient_checkpointing=False,
    )
    model = LlamaLMHeadModel.init(hax.Axis("vocab", c["vocab_size"]), config, key=jax.random.PRNGKey(0))
    weights = {k: jnp.asarray(v) for k, v in np.load(req["weights"]).items()}
    model = from_torch_compatible_state_dict(model, weights)

    tokens = np.asarray(req["tokens"], dtype=np.int32)
    seqs = TokenSeqDataset(_FlatCache(tokens), req["seq_len"])
    examples = CausalLmDataset(seqs, hax.Axis("position", req["seq_len"]), eos_id=req["eos_id"])

    async def read() -> list[Any]:
        return list(await examples.get_batch(list(range(await examples.async_len()))))

    chunks_ = asyncio.run(read())

    class _Tags:
        def __init__(self) -> None:
            self.tag_to_index = {"paloma/c4_en": 0}

    evaluator = object.__new__(TaggedEvaluator)
    evaluator.bytes_per_token = jnp.asarray(req["bytes_per_token"], dtype=jnp.int32)
    evaluator.dataset = _Tags()
    evaluator.axis_mapping = None
    evaluator.device_mesh = None
    evaluator.per_pos_out_sharding = None
    state = _EvalRunningMeans.zeros_like(jnp.zeros((), jnp.float32), jnp.zeros((1,), jnp.float32))
    b = req["eval_batch"]
    losses = []
    for i in range(0, len(chunks_), b):
        batch = jax.tree.map(lambda *xs: jnp.stack(xs), *chunks_[i : i + b])
        axis = hax.Axis("batch", len(chunks_[i : i + b]))
        evaluator.loss_fn = lambda m, ex, axis=axis: _default_lm_eval_loss_fn(m, ex, EvalBatch=axis, mp=None)
        losses.append(np.asarray(evaluator.loss_fn(model, batch)[0]).tolist())
        accum = evaluator._make_accum_for_batch()
        state = accum(model, state, batch, jnp.ones((axis.size, 1), dtype=jnp.float32))
    return {"tag_bpb": float(state.bpb_per_tag.mean[0]), "losses": losses}


FIELDS = (("losses", np.float32), ("weights", np.float32), ("token_ids", np.int32))
OPS = {"byte_table": byte_table, "chunks": chunks, "bpb": bpb, "model_bpb": model_bpb}

if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        request = json.load(f)
    answer = OPS[request.pop("op")](request)
    with open(sys.argv[2], "w") as f:
        json.dump(answer, f)
