"""Validation loss and bits-per-byte over the evaluation set, distributed across ranks.

One pass over the first `tokens` tokens of the set (whole sequences of seqLen) collects the sums
of `definitions.LossSums`, plus levanter's per-batch sums (sequence j belongs to global eval batch
j // eval_batch, as levanter's DataLoader batches them); `LossEval` then gives each leaderboard's
number: `bpb` is levanter's formula (see metric_definitions), `nanochat_bpb` nanochat's, `loss`
modded-nanogpt's mean over all positions. Byte lengths come from the tokenizer: exact
(`Tokenizer.token_bytes()`) for nanochat's, levanter's count (`levanter_token_bytes()`) for
levanter's when the caller gives it.

Sequences are levanter's chunks: sequence j is tokens [jT, jT + T) and its target the token after
each; the set holds floor(N / T) of them (`levanter_chunks`). The last chunk of a set whose size
is a multiple of T has no token after its last position: that one target is left out of every
sum (levanter's causal loss mask drops it anyway). The set is never repeated: when `tokens` asks
for more than it holds, its whole set is scored, a warning is logged (once per process) and
`LossEval.exceeded` says so; when it asks for fewer, `LossEval.partial` says so (results record
both: a partial BPB is never filed as Marin's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from speedrun_api.manifest import ConfigError
from speedrun_api.metric_definitions import (
    LossSums,
    levanter_bpb,
    levanter_chunks,
    levanter_eval_batch,
    mean_loss,
    nanochat_bpb,
)
from speedrun_api.spec import SpeedrunJob
from speedrun_trainer.data.bos_rows import BosRows, bos_rows, row_batch
from speedrun_trainer.data.loader import TokenDataset
from speedrun_trainer.train.attention import segment_ids
from speedrun_trainer.train.fp8 import without_fp8
from speedrun_trainer.train.runtime import Dist, all_reduce_sum, autocast, autocast_dtype, log


@dataclass(frozen=True)
class LossEval:
    sums: LossSums  # over all ranks
    requested_tokens: int  # what the spec asked for (eval.bpb.tokens)
    set_tokens: int  # how many tokens the evaluation set holds
    levanter_batches: tuple[tuple[float, int, int], ...] = ()  # (nats, tokens, bytes) per eval batch
    chunks_scored: int = 0  # seqLen chunks scored
    seq_len: int = 0
    eval_batch: int = 0  # levanter's global eval batch the chunks were grouped in
    levanter_bytes: bool = False  # levanter's byte count (levanter_token_bytes) in `bpb`
    document_mask: bool = False  # scored with attention within documents (train/attention.py)
    # eval.bpb.rows bos-aligned: the sums over nanochat's BOS-aligned rows (data/bos_rows.py), which
    # nanochat_bpb is computed from; None: nanochat_bpb comes from the packed rows, as the rest.
    bos_sums: LossSums | None = None
    bos_rows_exhausted: bool = False

    @property
    def loss(self) -> float:
        """modded-nanogpt's val loss: mean nats over all target positions."""
        return mean_loss(self.sums)

    @property
    def bpb(self) -> float:
        """levanter's bits-per-byte formula: per eval batch, special tokens' loss kept in the
        numerator, the last position of each sequence left out; batches weighted by tokens."""
        return levanter_bpb(self.levanter_batches)

    @property
    def nanochat_bpb(self) -> float:
        """nanochat's bits per byte: zero-byte targets out of both sums, over `nanochat_rows`."""
        return nanochat_bpb(self.bos_sums if self.bos_sums is not None else self.sums)

    @property
    def nanochat_rows(self) -> str:
        """Which rows nanochat_bpb was scored on: "bos-aligned" or "packed" (eval.bpb.rows)."""
        return "packed" if self.bos_sums is None else "bos-aligned"

    @property
    def nanochat_tokens(self) -> int:
        """The target positions nanochat_bpb's rows hold (special targets included)."""
        return (self.bos_sums if self.bos_sums is not None else self.sums).tokens

    @property
    def tokens(self) -> int:
        return self.sums.tokens

    @property
    def bytes(self) -> int:
        return self.sums.bytes

    @property
    def set_chunks(self) -> int:
        """The seqLen chunks the whole set holds (levanter's floor(N / T))."""
        return levanter_chunks(self.set_tokens, self.seq_len) if self.seq_len else 0

    @property
    def partial(self) -> bool:
        """True when fewer chunks were scored than the set holds (levanter scores them all)."""
        return bool(self.set_tokens) and self.chunks_scored < self.set_chunks

    @property
    def exceeded(self) -> bool:
        """True when the spec asked for more tokens than the set holds (its whole set was scored)."""
        return self.requested_tokens > (self.set_tokens or self.sums.tokens)

    def record(self, *, levanter_eval_batch: int) -> dict[str, object]:
        """What the results' `eval_set` records of this evaluation (docs/contracts.md), the facts
        results.marin_rules_of checks Marin's rules against."""
        return {
            "tokens_requested": self.requested_tokens,
            "tokens_scored": self.tokens,
            "set_tokens": self.set_tokens,
            "exceeded": self.exceeded,
            "partial": self.partial,
            "chunks_scored": self.chunks_scored,
            "set_chunks": self.set_chunks,
            "chunks": "levanter",  # floor(N / T): sequences_to_score
            "eval_batch": self.eval_batch,
            "levanter_eval_batch": levanter_eval_batch,
            "byte_table": "levanter" if self.levanter_bytes else "exact",
            "document_mask": self.document_mask,
            "nanochat_bpb_rows": self.nanochat_rows,
            "nanochat_bpb_tokens": self.nanochat_tokens,
            "nanochat_bpb_rows_exhausted": self.bos_rows_exhausted,
        }


def score_batch(
    losses: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor, valid: torch.Tensor | None = None
) -> LossSums:
    """The sums of every definition over one batch of per-position losses (`valid`: the positions
    that have a target; all by default)."""
    if valid is not None:
        losses, targets = losses[valid], targets[valid]
    nbytes = token_bytes[targets]
    counted = nbytes > 0
    return LossSums(
        nats=float(losses.double().sum()),
        tokens=int(losses.numel()),
        nats_with_bytes=float(losses[counted].double().sum()),
        tokens_with_bytes=int(counted.sum()),
        bytes=int(nbytes.sum()),
    )


def levanter_sequence_sums(losses: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor) -> torch.Tensor:
    """(nats, tokens, bytes) per sequence over the positions levanter's causal loss mask keeps:
    all but the last (levanter models/lm_model.py `LmExample.causal_loss_mask`). Shape (B, 3)."""
    kept = losses[:, :-1].double()  # (B, T-1)
    nbytes = token_bytes[targets[:, :-1]].double()
    return torch.stack([kept.sum(1), torch.full_like(kept[:, 0], kept.shape[1]), nbytes.sum(1)], dim=1)


def sequences_to_score(tokens: int, seq_len: int, set_tokens: int) -> int:
    """Whole sequences covering `tokens`, but no more than the set's levanter chunks, floor(N / T)."""
    wanted = max(1, math.ceil(tokens / seq_len))
    return min(wanted, max(1, levanter_chunks(set_tokens, seq_len)))


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    dataset: TokenDataset,
    token_bytes: np.ndarray,
    *,
    tokens: int,
    seq_len: int,
    batch_size: int,
    rank: int,
    world_size: int,
    device: torch.device,
    precision: str,
    eval_batch: int | None = None,
    levanter_bytes: np.ndarray | None = None,
    document_mask: int | None = None,
) -> LossEval:
    """Score the first `tokens` tokens of `dataset` (rounded up to whole sequences, capped at the
    set's size). `document_mask`: an EOS id to score with attention within documents (a new
    one after each EOS, as levanter evaluates); None: causal over each whole sequence.

    Sequence j goes to rank j % world_size and to levanter's global eval batch j // eval_batch
    (default: `batch_size`); the sums are all-reduced, so the result is the same for any world size.
    `levanter_bytes`: the byte table of levanter's BPB (default `token_bytes`).
    """
    set_tokens = int(getattr(dataset, "num_tokens", 0) or 0)
    num_seqs = sequences_to_score(tokens, seq_len, set_tokens) if set_tokens else max(1, math.ceil(tokens / seq_len))
    exceeds = tokens > set_tokens if set_tokens else num_seqs * seq_len < tokens
    if exceeds and rank == 0 and _warn_once(getattr(dataset, "uri", ""), tokens):
        log(
            f"eval.bpb.tokens {tokens:,} exceeds the evaluation set {getattr(dataset, 'uri', '')}"
            f" ({set_tokens:,} tokens): scoring the whole set once, {num_seqs:,} chunks of {seq_len}"
        )
    tb = torch.as_tensor(token_bytes, dtype=torch.long, device=device)
    lb = tb if levanter_bytes is None else torch.as_tensor(levanter_bytes, dtype=torch.long, device=device)
    was_training = model.training
    sums = LossSums()
    per_batch_size = eval_batch or batch_size
    per_batch = torch.zeros(math.ceil(num_seqs / per_batch_size), 3, dtype=torch.float64, device=device)
    mine = range(rank, num_seqs, world_size)  # a range, not a list: eval.bpb.tokens may be 1e10
    with without_fp8(model):  # never FP8 matmuls: the rule of eval_precision()
        model.eval()
        for i in range(0, len(mine), batch_size):
            chunk = mine[i : i + batch_size]
            xs, ys = zip(*(dataset.sequences(j, 1, seq_len) for j in chunk), strict=True)
            x = torch.cat(xs).to(device, non_blocking=True)
            y = torch.cat(ys).to(device, non_blocking=True)
            with autocast(device, precision):
                if document_mask is None:
                    losses = model(x, y, reduction="none")
                else:
                    losses = model(x, y, reduction="none", doc_ids=segment_ids(x, document_mask))
            valid = None
            if set_tokens and (chunk[-1] + 1) * seq_len >= set_tokens:  # read past the set's end
                valid = torch.ones_like(y, dtype=torch.bool)
                valid[-1, -1] = False  # the last chunk's last target: the set has no such token
            sums = sums + score_batch(losses.float(), y, tb, valid)
            index = torch.as_tensor([j // per_batch_size for j in chunk], device=device)
            per_batch.index_add_(0, index, levanter_sequence_sums(losses.float(), y, lb))
        if was_training:
            model.train()
    reduced = all_reduce_sum(sums.as_list() + per_batch.flatten().tolist(), device)
    n = len(sums.as_list())
    total = LossSums.from_list(reduced[:n])
    rows = reduced[n:]
    batches = tuple((rows[i], int(rows[i + 1]), int(rows[i + 2])) for i in range(0, len(rows), 3))
    return LossEval(
        sums=total,
        requested_tokens=tokens,
        set_tokens=set_tokens,
        levanter_batches=batches,
        chunks_scored=num_seqs,
        seq_len=seq_len,
        eval_batch=per_batch_size,
        levanter_bytes=levanter_bytes is not None,
        document_mask=document_mask is not None,
    )


@torch.no_grad()
def evaluate_bos_rows(
    model: nn.Module,
    dataset: TokenDataset,
    token_bytes: np.ndarray,
    rows: BosRows,
    *,
    batch_size: int,
    rank: int,
    world_size: int,
    device: torch.device,
    precision: str,
) -> LossSums:
    """The sums over nanochat's BOS-aligned rows (row j on rank j % world_size), all-reduced."""
    tb = torch.as_tensor(token_bytes, dtype=torch.long, device=device)
    was_training, sums = model.training, LossSums()
    mine = range(rank, len(rows.rows), world_size)
    with without_fp8(model):  # never FP8 matmuls: the rule of eval_precision()
        model.eval()
        for i in range(0, len(mine), batch_size):
            x, y = row_batch(dataset, rows, mine[i : i + batch_size])
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, precision):
                losses = model(x, y, reduction="none")
            sums = sums + score_batch(losses.float(), y, tb)
        if was_training:
            model.train()
    return LossSums.from_list(all_reduce_sum(sums.as_list(), device))


def evaluate_run_loss(
    model: nn.Module,
    job: SpeedrunJob,
    env: Dist,
    dataset: TokenDataset,
    token_bytes: np.ndarray,
    levanter_bytes: np.ndarray | None = None,
    document_mask: int | None = None,
    *,
    bos_id: int | None = None,
) -> LossEval:
    """`evaluate_loss` as the run's spec asks: `eval.bpb.tokens` of seqLen sequences in the
    training's device batches and precision, in levanter's eval batch (`levanter_eval_batch`:
    deviceBatchSize x data-parallel size). The training loop (at every eval point) and the final
    evaluation both score this way; `document_mask` as in `evaluate_loss` (the caller decides
    which metric needs it).
    With `eval.bpb.rows: bos-aligned`, nanochat_bpb is scored apart on eval.bpb.tokens // seqLen
    BOS-aligned rows of the set (`bos_id`: the tokenizer's separator, which starts each document);
    nanochat's own count is eval_tokens // (B x T x world) whole batches (scripts/base_train.py
    `eval_steps`), the same for its default 80 x 524288 tokens at T = 2048."""
    spec = job.spec
    packed = _evaluate_packed(model, job, env, dataset, token_bytes, levanter_bytes, document_mask)
    if spec.eval.bpb.rows != "bos-aligned":
        return packed
    if bos_id is None:
        raise ValueError("eval.bpb.rows bos-aligned needs the tokenizer's separator (bos_id)")
    wanted = max(1, spec.eval.bpb.tokens // spec.model.seq_len)
    rows = bos_rows(dataset, bos_id, spec.model.seq_len, wanted)
    if not rows.rows:
        raise ConfigError(
            f"spec.eval.bpb.rows: bos-aligned, but {spec.eval_data} fills no row of seqLen + 1 tokens from"
            f" documents starting with token {bos_id}"
        )
    if rows.exhausted and env.is_main and _warn_once(f"bos:{dataset.uri}", wanted):
        log(
            f"warning: {dataset.uri} fills only {len(rows.rows):,} of {wanted:,} BOS-aligned rows"
            " (nanochat would start a second pass over it; documents are never repeated here)"
        )
    bos = evaluate_bos_rows(
        model,
        dataset,
        token_bytes,
        rows,
        batch_size=spec.train.device_batch_size,
        rank=env.rank,
        world_size=env.world_size,
        device=env.device,
        precision=spec.train.precision,
    )
    return replace(packed, bos_sums=bos, bos_rows_exhausted=rows.exhausted)


def _evaluate_packed(
    model: nn.Module,
    job: SpeedrunJob,
    env: Dist,
    dataset: TokenDataset,
    token_bytes: np.ndarray,
    levanter_bytes: np.ndarray | None,
    document_mask: int | None,
) -> LossEval:
    spec = job.spec
    return evaluate_loss(
        model,
        dataset,
        token_bytes,
        tokens=spec.eval.bpb.tokens,
        seq_len=spec.model.seq_len,
        batch_size=spec.train.device_batch_size,
        rank=env.rank,
        world_size=env.world_size,
        device=env.device,
        precision=spec.train.precision,
        eval_batch=levanter_eval_batch(spec.train.device_batch_size, env.world_size),
        levanter_bytes=levanter_bytes,
        document_mask=document_mask,
    )


def eval_precision(device: torch.device, precision: str) -> str:
    """What the BPB and val loss of a run are computed in, the same in the loop and at the end:
    never FP8 (an fp8 run's Float8Linear layers run as plain linears, `fp8.without_fp8`, so it is
    scored as the bf16 model of its weights, as nanochat evaluates), else the training's autocast
    dtype: "bf16" on GPUs for bf16 and fp8 runs, "fp32" for fp32 runs and CPUs without native bf16.
    The train summary and the results file record it (`eval_precision`)."""
    return "bf16" if autocast_dtype(device, precision) == torch.bfloat16 else "fp32"


_WARNED: set[tuple[str, int]] = set()


def _warn_once(uri: str, tokens: int) -> bool:
    """True the first time this process would warn that `tokens` exceed the set at `uri`."""
    if (uri, tokens) in _WARNED:
        return False
    _WARNED.add((uri, tokens))
    return True
