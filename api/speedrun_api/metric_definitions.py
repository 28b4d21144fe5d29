"""Each leaderboard's metric definitions, written once, and the names results file them under.

A number is only worth its definition. From one pass over the evaluation tokens we keep a few
sums (`LossSums`), and every published metric is one formula over them:

- `levanter-bpb` (Marin's `eval/paloma/c4_en/bpb`), as levanter's `TaggedEvaluator` computes it
  (marin-community/marin lib/levanter/src/levanter/eval.py, as released in marin-levanter
  0.2.227.dev40316220070, the version requirements/levanter.txt pins): the eval set is cut into
  floor(N / T) chunks of seqLen tokens (data/text/datasets.py `TokenSeqDataset.async_len`), each
  an `LmExample.causal` whose loss mask drops the last position; chunks go in global batches of
  EvalBatch sequences (trainer.py: `per_device_eval_parallelism x data_axis_size`, the per-device
  eval batch defaulting to `per_device_parallelism`, ours deviceBatchSize; a final short batch
  is padded with zero-weight examples); each batch gives `loss / max(bytes, 1) x log2(e)` over its
  masked positions, bytes from `byte_length_of_token` (utils/hf_utils.py: 0 for the tokenizer's
  `all_special_ids`, which levanter tokenizers.py `_collect_special_ids` makes BOS, EOS, PAD and
  every added token marked special; the hex bytes of a `<0xNN>` token; else the UTF-8 length of
  `decode([".", id])` minus 1, so a byte-level token that is not whole UTF-8 counts the 3 bytes
  of U+FFFD per invalid run); special tokens' loss stays in the numerator; the published number
  is the running mean of those per-batch BPBs weighted by each batch's masked-token count
  (`RunningMean.add(bpb, this_tokens)`; per tag for `eval/<tag>/bpb`), not global sums over
  global bytes; attention restarts after every EOS (data/text.py `CausalLmDataset` with
  `eos_id`: segment ids, levanter #827, Dec 2024, before every Marin speedrun); the whole set is
  scored. Our evaluation follows each rule (train/loss_eval.py; `Tokenizer.levanter_token_bytes`)
  and records which held (`MARIN_RULES`, results `bpb_rules`): Marin's key is written only when
  all did. tests/e2e/test_levanter_reference.py checks the byte table, the chunks and the BPB
  against levanter's own functions.
- `levanter-bpb-cross-doc`: the same formula with attention across document boundaries inside a
  sequence (a model without the document mask), filed under its own key
  (`eval/paloma/c4_en/bpb-cross-doc` on C4-EN). A levanter-bpb on C4-EN with another rule broken
  (a partial set, another eval batch, exact byte counts) goes under `eval/paloma/c4_en/bpb-unmatched`.
  Documents are levanter's when the set was prepared with `--documents levanter` (BOS + text +
  " " + EOS, `Tokenizer.levanter_document`). Two differences a Marin run may still have: which
  sequences share a batch when C4-EN follows other Paloma sets in one eval loader (batches
  straddle datasets), and levanter's splitting of documents over 10,000 characters before
  tokenizing (`BatchTokenizer._workaround_len`; only for Replace/Sequence normalizers, refused).
- `nanochat-bpb`: targets standing for zero bytes (special tokens) are left out of BOTH sums
  (nanochat nanochat/loss_eval.py `evaluate_bpb`: `token_bytes[y] > 0` masks the loss too).
- `mean-loss-all-positions`: modded-nanogpt's val loss, the mean cross-entropy over all target
  positions, document separators included, of a fixed prefix of the validation tokens
  (modded-nanogpt train_gpt.py `val_tokens = 10485760`; BottleCap's fork judges its 3.3821 on
  the first 1,048,576 tokens, seed 004). The token count is part of the definition: the results
  name the track whose count was used, or none.

Dataset names: Marin's key names Paloma's C4-EN validation set (`PALOMA_C4_EN`, the name
`speedrun data fetch paloma-c4-en` records) and levanter's exact number (`bpb_key`); a BPB
measured on anything else goes under `eval/<dataset>/bpb`, the dataset named by its metadata or,
failing that, its URI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

LEVANTER_BPB = "levanter-bpb"  # Marin's published numbers
LEVANTER_BPB_CROSS_DOC = "levanter-bpb-cross-doc"  # ours: levanter's formula, attention across documents
NANOCHAT_BPB = "nanochat-bpb"
MEAN_LOSS = "mean-loss-all-positions"

PALOMA_C4_EN = "paloma/c4_en"
MARIN_BPB_KEY = f"eval/{PALOMA_C4_EN}/bpb"
CROSS_DOC_SUFFIX = "/bpb-cross-doc"

# modded-nanogpt train_gpt.py: `val_tokens = 10485760  # how many tokens of validation data?
# it's important to keep this fixed for consistent comparisons`; BottleCap (seed 004): 1,048,576.
VAL_LOSS_TRACKS = {"modded-nanogpt": 10_485_760, "bottlecap": 1_048_576}

DESCRIPTIONS = {
    LEVANTER_BPB: "levanter eval.py TaggedEvaluator: per global eval batch of seqLen chunks, loss / max(bytes, 1)"
    " x log2(e) over the positions levanter's causal loss mask keeps (all but each chunk's last; special"
    " tokens' loss kept, their bytes 0), averaged over batches weighted by masked tokens; attention restarts"
    " after each EOS; as Marin reports it when bpb_rules all held (floor(N/T) chunks of the whole set,"
    " eval batch deviceBatchSize x processes, hf_utils.py byte_length_of_token bytes)",
    LEVANTER_BPB_CROSS_DOC: "levanter-bpb's formula and batching, with attention across document boundaries"
    " inside a sequence (levanter restarts it after each EOS)",
    NANOCHAT_BPB: "sum of the losses of targets of >= 1 byte / (ln 2 x sum of their UTF-8 bytes); "
    "zero-byte (special) targets left out of both sums; nanochat loss_eval.py",
    MEAN_LOSS: "mean cross-entropy (nats) over all target positions, separators included; modded-nanogpt train_gpt.py",
}


@dataclass(frozen=True)
class LossSums:
    """Sums over the scored target positions, from which every definition is computed."""

    nats: float = 0.0  # loss of every target position
    tokens: int = 0  # every target position
    nats_with_bytes: float = 0.0  # loss of the targets that stand for >= 1 byte
    tokens_with_bytes: int = 0
    bytes: int = 0  # UTF-8 bytes of all targets (zero-byte targets add nothing)

    def __add__(self, other: LossSums) -> LossSums:
        return LossSums(*(a + b for a, b in zip(self.as_list(), other.as_list(), strict=True)))

    def as_list(self) -> list[float]:
        return [getattr(self, f.name) for f in fields(self)]

    @classmethod
    def from_list(cls, values: list[float]) -> LossSums:
        return cls(*(float(v) if f.type == "float" else int(v) for f, v in zip(fields(cls), values, strict=True)))


def bits_per_byte(sum_nats: float, sum_bytes: int) -> float:
    """nats / (ln 2 x bytes); NaN when there are no bytes."""
    return sum_nats / (math.log(2) * sum_bytes) if sum_bytes else math.nan


def levanter_bpb(batches: Sequence[tuple[float, int, int]]) -> float:
    """levanter's BPB from (masked nats, masked tokens, masked bytes) per global eval batch.

    levanter eval.py `accum_for_batch`: `bpb = this_loss / max(this_bytes, 1) * log2(e)`, then
    `state.bpb_per_tag.add(bpb, this_tokens)`, a running mean weighted by masked tokens; batches
    with no masked tokens (padding) weigh nothing.
    """
    weighted = weight = 0.0
    for nats, tokens, nbytes in batches:
        if tokens:
            weighted += tokens * nats / (max(nbytes, 1) * math.log(2))
            weight += tokens
    return weighted / weight if weight else math.nan


def nanochat_bpb(s: LossSums) -> float:
    return bits_per_byte(s.nats_with_bytes, s.bytes)


def mean_loss(s: LossSums) -> float:
    return s.nats / s.tokens if s.tokens else math.nan


def val_loss_track(tokens_scored: int) -> str | None:
    """The benchmark whose val-loss definition a token count matches, if any."""
    return next((name for name, n in VAL_LOSS_TRACKS.items() if n == tokens_scored), None)


def levanter_chunks(set_tokens: int, seq_len: int) -> int:
    """How many seqLen chunks levanter cuts a token stream into: floor(N / T) (levanter
    data/text/datasets.py `TokenSeqDataset.async_len`: `flat_field_length("input_ids") // seq_len`).
    Chunk j is tokens [jT, jT + T); its last position predicts nothing (`causal_loss_mask`), so no
    chunk needs the token after it."""
    return set_tokens // seq_len


def levanter_eval_batch(device_batch_size: int, data_parallel: int) -> int:
    """levanter's global eval batch: `per_device_eval_parallelism x data_axis_size` (trainer.py
    `TrainerConfig.eval_batch_size`), where `per_device_eval_parallelism` defaults to
    `per_device_parallelism` (`__post_init__`), our train.deviceBatchSize, itself defaulting to
    train batch / data-parallel size. So the train batch only without gradient accumulation."""
    return device_batch_size * data_parallel


# What Marin's key requires of a BPB besides the formula (levanter_bpb): each must hold.
MARIN_RULES = (
    "dataset",  # the set is Paloma C4-EN (its metadata names paloma/c4_en)
    "document_mask",  # attention restarts after every EOS (levanter data/text.py, LmExample.causal)
    "byte_table",  # bytes per token as levanter's hf_utils.py byte_length_of_token counts them
    "chunks",  # floor(N / T) chunks (levanter_chunks)
    "eval_batch",  # levanter's eval batch (levanter_eval_batch)
    "whole_set",  # every chunk of the set scored (levanter's eval loader reads the whole set)
)
UNMATCHED_SUFFIX = "/bpb-unmatched"


def marin_rules(**held: bool) -> dict[str, bool]:
    """The MARIN_RULES, each True or False; every rule must be given."""
    if set(held) != set(MARIN_RULES):
        raise ValueError(f"marin_rules needs exactly {', '.join(MARIN_RULES)}")
    return {rule: bool(held[rule]) for rule in MARIN_RULES}


def bpb_definition(document_mask: bool) -> str:
    """The definition our levanter-formula BPB follows: levanter's with the document mask on."""
    return LEVANTER_BPB if document_mask else LEVANTER_BPB_CROSS_DOC


def bpb_key(dataset: str, definition: str = LEVANTER_BPB_CROSS_DOC, rules: dict[str, bool] | None = None) -> str:
    """Where a BPB is filed. On Paloma C4-EN: Marin's `eval/paloma/c4_en/bpb` exactly when every
    one of MARIN_RULES held (`rules`; a levanter-bpb definition without rules is taken as Marin's
    own number, as the leaderboard reads Marin's files), `.../bpb-cross-doc` when attention crossed
    documents, `.../bpb-unmatched` when the mask was on but another rule failed (the results'
    `bpb_rules` say which). Elsewhere `eval/<dataset>/bpb`."""
    if dataset != PALOMA_C4_EN:
        return f"eval/{dataset}/bpb"
    if definition != LEVANTER_BPB:
        return f"eval/{dataset}{CROSS_DOC_SUFFIX}"
    if rules is not None and not all(rules.get(rule, False) for rule in MARIN_RULES):
        return f"eval/{dataset}{UNMATCHED_SUFFIX}"
    return MARIN_BPB_KEY


def dataset_from_bpb_key(key: str) -> str | None:
    """The dataset a `eval/<dataset>/bpb` (or `.../bpb-cross-doc`, `.../bpb-unmatched`) key names."""
    for suffix in ("/bpb", CROSS_DOC_SUFFIX, UNMATCHED_SUFFIX):
        if key.startswith("eval/") and key.endswith(suffix) and len(key) > len("eval/") + len(suffix):
            return key[len("eval/") : -len(suffix)]
    return None


# ---- per-track rules beside the metrics: the clock, the BPB rows, the horizon -----------------
# Each spec field below picks one rule; the results name the rule that produced each number.

CLOCK_RULES = {  # spec.train.clock
    "nanochat": "optimizer steps only: evaluation, checkpointing and logging excluded; the first"
    " train.clockWarmupSteps real steps of every process start (torch.compile, CUDA warm-up, the first"
    " steps after a resume) excluded and reported as warmup_seconds (nanochat scripts/base_train.py:"
    " `if step > 10: total_training_time += dt`)",
    "modded-nanogpt": "optimizer steps only: evaluation, checkpointing and logging excluded; before the"
    " first real step of every process start, train.clockWarmupSteps untimed steps on dummy data, then"
    " model, optimizer state, LR schedule, data position and RNG restored, and every real step timed"
    " (modded-nanogpt train_gpt.py `Warmup kernels` ... `Resetting Model`; README `Timing change after"
    " record 21`); warm-up time reported as warmup_seconds",
}

BPB_ROWS = {  # spec.eval.bpb.rows: the rows nanochat_bpb is scored on
    "packed": "consecutive seqLen windows of the evaluation set from its first token, documents"
    " straddling rows (the rows of val_loss and the levanter BPB)",
    "bos-aligned": "nanochat's validation rows: seqLen + 1 tokens each starting with a document's BOS,"
    " documents best-fit packed from a 1000-document buffer and the last one cropped (nanochat"
    " nanochat/dataloader.py `tokenizing_distributed_data_loader_with_state_bos_bestfit`);"
    " eval.bpb.tokens // seqLen rows",
}
