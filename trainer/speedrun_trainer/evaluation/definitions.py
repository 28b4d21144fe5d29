"""Each leaderboard's metric definitions, written once, and the names results file them under.

A number is only worth its definition. From one pass over the evaluation tokens we keep a few
sums (`LossSums`), and every published metric is one formula over them:

- `levanter-bpb` (Marin's `eval/paloma/c4_en/bpb`): the loss of EVERY target token, special
  tokens included, over ln 2 x the UTF-8 bytes of the targets. levanter's eval.py sums the
  masked per-token loss and divides by the sum of `byte_length_of_token` (levanter
  src/levanter/eval.py, utils/hf_utils.py), which is 0 for special tokens: their loss stays in
  the numerator. Its sequences are `LmExample.causal` chunks of seqLen tokens whose loss mask
  drops the last position (its target lies in the next chunk), so that position is left out
  here too. Known residual differences, not replicated: levanter (eval.py at 05b4318) averages
  per-batch BPBs weighted by tokens rather than dividing global sums (equal when every eval
  batch has the same bytes per token), and its tokenization of Paloma adds the tokenizer's
  BOS/EOS per document where `data prepare` writes one separator.
- `nanochat-bpb`: targets standing for zero bytes (special tokens) are left out of BOTH sums
  (nanochat nanochat/loss_eval.py `evaluate_bpb`: `token_bytes[y] > 0` masks the loss too).
- `mean-loss-all-positions`: modded-nanogpt's val loss, the mean cross-entropy over all target
  positions, document separators included, of a fixed prefix of the validation tokens
  (modded-nanogpt train_gpt.py `val_tokens = 10485760`; BottleCap's fork judges its 3.3821 on
  the first 1,048,576 tokens, seed 004). The token count is part of the definition: the results
  name the track whose count was used, or none.

Dataset names: Marin's key is written only for Paloma's C4-EN validation set (`PALOMA_C4_EN`,
the name `speedrun data fetch paloma-c4-en` records); a BPB measured on anything else is filed
under `eval/<dataset>/bpb`, the dataset named by its metadata or, failing that, its URI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

LEVANTER_BPB = "levanter-bpb"
NANOCHAT_BPB = "nanochat-bpb"
MEAN_LOSS = "mean-loss-all-positions"

PALOMA_C4_EN = "paloma/c4_en"
MARIN_BPB_KEY = f"eval/{PALOMA_C4_EN}/bpb"

# modded-nanogpt train_gpt.py: `val_tokens = 10485760  # how many tokens of validation data?
# it's important to keep this fixed for consistent comparisons`; BottleCap (seed 004): 1,048,576.
VAL_LOSS_TRACKS = {"modded-nanogpt": 10_485_760, "bottlecap": 1_048_576}

DESCRIPTIONS = {
    LEVANTER_BPB: "sum of the losses of all target tokens (special tokens included; not the last position of"
    " each seqLen sequence, which levanter's causal loss mask drops) / (ln 2 x sum of their UTF-8 bytes);"
    " levanter eval.py, as Marin reports it",
    NANOCHAT_BPB: "sum of the losses of targets of >= 1 byte / (ln 2 x sum of their UTF-8 bytes); "
    "zero-byte (special) targets left out of both sums; nanochat loss_eval.py",
    MEAN_LOSS: "mean cross-entropy (nats) over all target positions, separators included; "
    "modded-nanogpt train_gpt.py",
}


@dataclass(frozen=True)
class LossSums:
    """Sums over the scored target positions, from which every definition is computed."""

    nats: float = 0.0  # loss of every target position
    tokens: int = 0  # every target position
    nats_with_bytes: float = 0.0  # loss of the targets that stand for >= 1 byte
    tokens_with_bytes: int = 0
    bytes: int = 0  # UTF-8 bytes of all targets (zero-byte targets add nothing)
    last_nats: float = 0.0  # the same two sums at the last position of each sequence only
    last_bytes: int = 0

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


def levanter_bpb(s: LossSums) -> float:
    return bits_per_byte(s.nats - s.last_nats, s.bytes - s.last_bytes)


def nanochat_bpb(s: LossSums) -> float:
    return bits_per_byte(s.nats_with_bytes, s.bytes)


def mean_loss(s: LossSums) -> float:
    return s.nats / s.tokens if s.tokens else math.nan


def val_loss_track(tokens_scored: int) -> str | None:
    """The benchmark whose val-loss definition a token count matches, if any."""
    return next((name for name, n in VAL_LOSS_TRACKS.items() if n == tokens_scored), None)


def bpb_key(dataset: str) -> str:
    """`eval/paloma/c4_en/bpb` for Paloma C4-EN, `eval/<dataset>/bpb` for anything else."""
    return f"eval/{dataset}/bpb"


def dataset_from_bpb_key(key: str) -> str | None:
    """The dataset a `eval/<dataset>/bpb` key names, else None."""
    if key.startswith("eval/") and key.endswith("/bpb") and len(key) > len("eval//bpb"):
        return key[len("eval/"): -len("/bpb")]
    return None


def dataset_name(uri: str, recorded: str | None = None) -> str:
    """The name a dataset is filed under: what its metadata records, else its URI."""
    return recorded or uri
