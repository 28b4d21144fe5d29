"""Tests of CORE scoring (speedrun_trainer.train.core_eval) on a small bundle written by the tests.

    pytest tests/unit/trainer/test_core_eval.py

The bundle has one hand-written task of each type. Two stand-in models bracket the metric: an
oracle (a byte-level longest-match model over the gold texts, so it prefers the right answers
without being told which row is gold) must score CORE 1.0, and a uniform model (all logits 0)
must score 0 because the golds are balanced over the answer positions. Bundles are read from a
directory, from S3 (moto's server) and as a zip over HTTP; two gloo ranks must agree with one.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml

from speedrun_trainer.data.storage import DataError
from speedrun_trainer.train import core_eval
from speedrun_trainer.train.core_eval import BundleError, evaluate_core, format_core_table, sample_fewshot

EOT = 256

MC = [  # balanced golds (0..3 twice); within a question all choices have the same length
    ("What color is a ripe banana?", ["yellow", "purple", "orange", "silver"], 0),
    ("What do bees make?", ["bread", "honey", "paper", "glass"], 1),
    ("Which animal barks?", ["cat", "cow", "dog", "owl"], 2),
    ("What falls from rain clouds?", ["sand", "salt", "milk", "rain"], 3),
    ("Which planet do we live on?", ["earth", "venus", "pluto", "ceres"], 0),
    ("What do you drink when thirsty?", ["stone", "water", "sugar", "smoke"], 1),
    ("How many legs does a spider have?", ["three", "seven", "eight", "forty"], 2),
    ("What shines in the sky by day?", ["ice", "sea", "fog", "sun"], 3),
]
SCHEMA = [  # (sentence, the two referents, continuation, gold); golds alternate
    ("Tom thanked Ann because", "Tom", "Ann", "had helped him.", 1),
    ("The ball broke the window because", "the ball", "the window", "was thrown hard.", 0),
    ("Sam gave a coat to Max because", "Sam", "Max", "was cold.", 1),
    ("The fish ate the worm because", "the fish", "the worm", "was hungry.", 0),
    ("Lily hugged Emma because", "Lily", "Emma", "was crying.", 1),
    ("The rope held the boat because", "the rope", "the boat", "was strong.", 0),
]
LM = [
    ("The capital of France is", "Paris"),
    ("Two plus two equals", "four"),
    ("The opposite of hot is  ", "cold"),  # trailing spaces: contexts are trimmed
    ("Water freezes at zero degrees", "Celsius"),
    ("The first month of the year is", "January"),
    ("A week has seven", "days"),
]


def mc_examples() -> list[dict[str, Any]]:
    return [{"query": f"Question: {q}\nAnswer:", "choices": c, "gold": g} for q, c, g in MC]


def schema_examples() -> list[dict[str, Any]]:
    return [{"context_options": [f"{s} {a}", f"{s} {b}"], "continuation": c, "gold": g} for s, a, b, c, g in SCHEMA]


def lm_examples() -> list[dict[str, Any]]:
    return [{"context": c, "continuation": x} for c, x in LM]


TASKS = [  # label, type, file, shots, baseline (percent), examples
    ("mc_trivia", "multiple_choice", "qa/mc_trivia.jsonl", 2, 25.0, mc_examples()),
    ("schema_pronouns", "schema", "schema/pronouns.jsonl", 1, 50.0, schema_examples()),
    ("lm_facts", "language_modeling", "lm/facts.jsonl", 2, 0.0, lm_examples()),
]


def write_bundle(root: Path) -> Path:
    """core.yaml + eval_meta_data.csv + eval_data/*.jsonl, DCLM's layout."""
    icl_tasks = [
        {
            "label": label,
            "dataset_uri": path,
            "num_fewshot": [shots],
            "icl_task_type": kind,
            "continuation_delimiter": " ",
        }
        for label, kind, path, shots, _, _ in TASKS
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": icl_tasks}, sort_keys=False))
    with open(root / "eval_meta_data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Eval Task", "Task Category", "Task Type", "#shots", "Random baseline"])
        for label, kind, _, shots, baseline, _ in TASKS:
            writer.writerow([label, "test", kind, shots, baseline])
    for _, _, path, _, _, examples in TASKS:
        (root / "eval_data" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "eval_data" / path).write_text("".join(json.dumps(e) + "\n" for e in examples))
    return root


def gold_texts() -> list[str]:
    return (
        [f"{e['query']} {e['choices'][e['gold']]}" for e in mc_examples()]
        + [f"{e['context_options'][e['gold']]} {e['continuation']}" for e in schema_examples()]
        + [f"{e['context'].strip()} {e['continuation']}" for e in lm_examples()]
    )


class ByteTokenizer:
    """Stand-in for speedrun_trainer.data.tokenizer's `byte` tokenizer: UTF-8 bytes, separator 256."""

    eot_id = EOT
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class StandInLM(torch.nn.Module):
    """The GPT call contract: model(idx) -> (B, T, V) logits; model(idx, targets, reduction="none")
    -> (B, T) nats, 0 where targets == -1; refuses inputs longer than spec.seq_len. Records inputs."""

    def __init__(self, seq_len: int | None = None) -> None:
        super().__init__()
        self.spec = SimpleNamespace(seq_len=seq_len)
        self.seen: list[torch.Tensor] = []

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*idx.shape, 257)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
        if self.spec.seq_len is not None:
            assert idx.size(1) <= self.spec.seq_len, f"got {idx.size(1)} tokens > seqLen {self.spec.seq_len}"
        self.seen.append(idx.clone())
        logits = self.logits(idx)
        if targets is None:
            return logits
        b, t = idx.shape
        return F.cross_entropy(logits.view(b * t, -1), targets.reshape(b * t), ignore_index=-1, reduction="none").view(
            b, t
        )


class OracleLM(StandInLM):
    """Predicts the byte that follows the longest suffix of the input found in the gold texts,
    with confidence growing with that suffix's length: right answers continue a gold text all the
    way, wrong ones break the match. It is never told which row or choice is the gold one."""

    def __init__(self, golds: list[str], seq_len: int | None = None) -> None:
        super().__init__(seq_len)
        self.corpus = "\n\n".join(golds).encode()

    def _next_bytes(self, suffix: bytes) -> set[int]:
        found, pos = set(), self.corpus.find(suffix)
        while pos >= 0 and pos + len(suffix) < len(self.corpus):
            found.add(self.corpus[pos + len(suffix)])
            pos = self.corpus.find(suffix, pos + 1)
        return found

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*idx.shape, 257)
        for b, row in enumerate(idx.tolist()):
            m = 0  # length of the longest suffix ending here that occurs in the corpus
            for i, tok in enumerate(row):
                if tok >= 256:
                    m = 0
                    continue
                m += 1
                while m and bytes(row[i + 1 - m : i + 1]) not in self.corpus:
                    m -= 1
                for nxt in self._next_bytes(bytes(row[i + 1 - m : i + 1])) if m else ():
                    out[b, i, nxt] = 2.0 * m
        return out


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_bundle(tmp_path / "eval_bundle")


def test_oracle_scores_one_and_uniform_scores_zero(bundle: Path) -> None:
    oracle = evaluate_core(OracleLM(gold_texts()), ByteTokenizer(), bundle.as_uri(), max_per_task=None, device="cpu")
    assert oracle["core_metric"] == pytest.approx(1.0)
    for label, t in oracle["tasks"].items():
        assert (t["accuracy"], t["centered"]) == (1.0, pytest.approx(1.0)), label
    uniform = evaluate_core(StandInLM(), ByteTokenizer(), str(bundle), max_per_task=None, device="cpu")
    assert uniform["core_metric"] == pytest.approx(0.0, abs=1e-9)
    tasks = uniform["tasks"]
    assert [tasks[k]["accuracy"] for k in tasks] == [0.25, 0.5, 0.0]  # ties go to the first choice
    assert tasks["mc_trivia"] == {
        "accuracy": 0.25,
        "centered": 0.0,
        "random_baseline": 0.25,
        "num_examples": 8,
        "task_type": "multiple_choice",
        "num_fewshot": 2,
    }
    table = format_core_table(uniform)
    header = ["task", "type", "shots", "examples", "accuracy", "baseline", "centered"]
    assert table.splitlines()[0].split() == header
    assert table.splitlines()[-1].split() == ["CORE", "0.0000"]


def test_prompts_follow_nanochat_rendering(bundle: Path) -> None:
    tasks = {t.label: t for t in core_eval.load_bundle(str(bundle))}
    mc, schema, lm = tasks["mc_trivia"], tasks["schema_pronouns"], tasks["lm_facts"]
    shot = mc.examples[0]
    prompts = core_eval.render_prompts(mc, mc.examples[1], [shot])
    assert prompts[1] == (
        "Question: What color is a ripe banana?\nAnswer: yellow\n\nQuestion: What do bees make?\nAnswer: honey"
    )
    options = core_eval.render_prompts(schema, schema.examples[0], [])
    assert options == [f"Tom thanked Ann because {who} had helped him." for who in ("Tom", "Ann")]
    without, with_ = core_eval.render_prompts(lm, lm.examples[2], [lm.examples[0]])
    assert without == "The capital of France is Paris\n\nThe opposite of hot is"
    assert with_ == without + " cold"
    rows = [[EOT, 1, 2, 3], [EOT, 1, 2, 4, 5]]
    assert core_eval.continuation_spans("multiple_choice", rows) == [(3, 4), (3, 5)]
    assert core_eval.continuation_spans("schema", [[EOT, 7, 8, 9], [EOT, 6, 8, 9]]) == [(2, 4), (2, 4)]
    assert core_eval.continuation_spans("language_modeling", [[EOT, 1, 2], [EOT, 1, 2, 3, 4]]) == [(3, 5)]


def test_fewshot_sampling_is_deterministic(bundle: Path) -> None:
    picks = sample_fewshot(10, 3, 4)
    assert picks == sample_fewshot(10, 3, 4) and 3 not in picks and len(set(picks)) == 4
    assert picks == random.Random(1234 + 3).sample([0, 1, 2, 4, 5, 6, 7, 8, 9], 4)  # nanochat's rule
    assert sorted(sample_fewshot(3, 0, 5)) == [1, 2]  # never more shots than other examples
    assert sample_fewshot(10, 3, 0) == []
    runs = []
    for seed in (1234, 1234, 99):
        model = StandInLM()
        evaluate_core(model, ByteTokenizer(), str(bundle), max_per_task=None, device="cpu", seed=seed)
        runs.append(model.seen)
    same = all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert same and len(runs[0]) == len(runs[1]) == 8 + 6 + 6  # one batch per example
    # another seed draws other shots
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))
    assert runs[0][0].shape[0] == 4  # the four choices of a question are one batch


def test_max_per_task_and_prompts_never_cropped(bundle: Path) -> None:
    result = evaluate_core(StandInLM(), ByteTokenizer(), str(bundle), max_per_task=3, device="cpu")
    assert [t["num_examples"] for t in result["tasks"].values()] == [3, 3, 3] and result["max_per_task"] == 3
    chosen = core_eval.select_examples(list(range(8)), 3)
    assert chosen == core_eval.select_examples(list(range(8)), 3) and len(chosen) == 3
    long = StandInLM()
    full = evaluate_core(long, ByteTokenizer(), str(bundle), max_per_task=None, device="cpu")
    assert full["max_per_task"] is None
    longest = max(x.size(1) for x in long.seen)
    assert longest > 96  # the few-shot prompts are long, and reach the model whole, as nanochat scores them


def test_real_gpt_scores_prompts_longer_than_seq_len(bundle: Path) -> None:
    from speedrun_api.spec_train import ModelSpec
    from speedrun_trainer.train.model import GPT

    torch.manual_seed(0)
    spec = ModelSpec(vocab_size=257, seq_len=32, hidden_dim=32, intermediate_dim=64, num_layers=1, num_heads=2)
    model = GPT(spec)
    x = torch.randint(0, 256, (1, 100))
    model.eval()
    logits = model(x)  # RoPE extends past seqLen at evaluation
    assert logits.shape == (1, 100, 257)
    # causal: the first 32 positions are what a seqLen-long forward gives
    assert torch.allclose(logits[:, :32], model(x[:, :32]), atol=1e-5)
    model.train()
    with pytest.raises(ValueError, match="exceeds seqLen"):
        model(x)  # training never runs past the spec's seqLen
    result = evaluate_core(model, ByteTokenizer(), str(bundle), max_per_task=2, device="cpu")
    assert -1.0 <= result["core_metric"] <= 1.0


def test_bundle_from_s3_and_zip_over_http(bundle: Path, s3_bucket: Any, http_server: tuple[str, Path]) -> None:
    client = s3_bucket.client()
    for path in bundle.rglob("*"):
        if path.is_file():
            key = f"bundles/core/{path.relative_to(bundle).as_posix()}"
            client.put_object(Bucket=s3_bucket.name, Key=key, Body=path.read_bytes())
    from_s3 = evaluate_core(
        OracleLM(gold_texts()),
        ByteTokenizer(),
        f"s3://{s3_bucket.name}/bundles/core/",
        max_per_task=4,
        device="cpu",
        endpoint_url=s3_bucket.endpoint_url,
    )
    base_url, root = http_server
    with zipfile.ZipFile(root / "eval_bundle.zip", "w") as zf:  # nanochat ships eval_bundle.zip
        for path in bundle.rglob("*"):
            zf.write(path, f"eval_bundle/{path.relative_to(bundle).as_posix()}")
    from_zip = evaluate_core(
        OracleLM(gold_texts()), ByteTokenizer(), f"{base_url}/eval_bundle.zip", max_per_task=4, device="cpu"
    )
    assert from_s3 == from_zip and from_s3["core_metric"] == pytest.approx(1.0)


def test_bad_bundles_are_one_line_errors(bundle: Path, tmp_path: Path) -> None:
    (bundle / "eval_meta_data.csv").write_text("Eval Task,Random baseline\nmc_trivia,25\n")
    with pytest.raises(BundleError, match="no random baseline for task schema_pronouns"):
        core_eval.load_bundle(str(bundle))
    broken = write_bundle(tmp_path / "broken")
    (broken / "eval_data" / "lm" / "facts.jsonl").write_text('{"context": "x"}\n')
    with pytest.raises(BundleError, match=r"facts.jsonl:1: a language_modeling example needs continuation"):
        core_eval.load_bundle(str(broken))
    shutil.rmtree(broken / "eval_data")
    with pytest.raises(DataError, match="no such file"):
        core_eval.load_bundle(str(broken))
    with pytest.raises(ValueError, match=r"torch\.distributed"):
        evaluate_core(StandInLM(), ByteTokenizer(), str(bundle), max_per_task=1, device="cpu", world_size=2)


def test_real_gpt_and_byte_tokenizer(bundle: Path) -> None:
    from speedrun_api.spec_train import ModelSpec
    from speedrun_trainer.data.tokenizer import load_tokenizer
    from speedrun_trainer.train.model import GPT

    torch.manual_seed(0)
    spec = ModelSpec(vocab_size=257, seq_len=64, hidden_dim=32, intermediate_dim=64, num_layers=1, num_heads=2)
    model = GPT(spec).train()
    result = evaluate_core(model, load_tokenizer("byte"), str(bundle), max_per_task=4, device="cpu")
    assert model.training  # the mode is restored
    assert set(result["tasks"]) == {"mc_trivia", "schema_pronouns", "lm_facts"}
    for t in result["tasks"].values():
        assert 0.0 <= t["accuracy"] <= 1.0 and t["num_examples"] == 4
    assert -1.0 <= result["core_metric"] <= 1.0


def test_ranks_split_the_examples_and_sum_their_counts(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ranks, each in turn, with all_reduce played by the test: rank 1 then rank 0 record
    their own counts, then each adds the other's, as a SUM all_reduce would."""
    single = StandInLM()
    expected = evaluate_core(single, ByteTokenizer(), str(bundle), max_per_task=None, device="cpu")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    own: dict[int, torch.Tensor] = {}
    models: dict[int, StandInLM] = {}
    for rank in (0, 1):
        monkeypatch.setattr(dist, "all_reduce", lambda t, op=None, r=rank: own.__setitem__(r, t.clone()))
        models[rank] = StandInLM()
        evaluate_core(
            models[rank], ByteTokenizer(), str(bundle), max_per_task=None, device="cpu", rank=rank, world_size=2
        )
    results = []
    for rank in (0, 1):
        monkeypatch.setattr(dist, "all_reduce", lambda t, op=None, r=rank: t.add_(own[1 - r]))
        results.append(
            evaluate_core(
                StandInLM(), ByteTokenizer(), str(bundle), max_per_task=None, device="cpu", rank=rank, world_size=2
            )
        )
    assert results[0] == results[1] == expected
    # after the shuffle every gold-0 example sits at an even place: rank 0 has all the hits
    assert own[0].tolist() == [2, 3, 0] and own[1].tolist() == [0, 0, 0]
    sizes, at = [8, 6, 6], 0
    for size in sizes:  # rank r scores examples r, r + 2, ... of every task, exactly as one process does
        task, at = single.seen[at : at + size], at + size
        for rank in (0, 1):
            share = task[rank::2]
            mine, models[rank].seen = models[rank].seen[: len(share)], models[rank].seen[len(share) :]
            assert all(torch.equal(a, b) for a, b in zip(mine, share, strict=True))


def test_ddp_and_compile_wrappers_are_bypassed(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranks run different numbers of forwards: a DDP forward could wait on the others forever."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from speedrun_api.spec_train import ModelSpec
    from speedrun_trainer.train.model import GPT

    class Compiled(torch.nn.Module):  # torch.compile's OptimizedModule keeps the original here
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

        def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            raise AssertionError("CORE must not run the compiled wrapper")

    dist.init_process_group("gloo", init_method=(tmp_path / "store").as_uri(), rank=0, world_size=1)
    try:
        spec = ModelSpec(vocab_size=257, seq_len=64, hidden_dim=32, intermediate_dim=64, num_layers=1, num_heads=2)
        inner = GPT(spec)
        ddp = DDP(Compiled(inner))
        monkeypatch.setattr(DDP, "forward", Compiled.forward)
        wrapped = evaluate_core(ddp, ByteTokenizer(), str(bundle), max_per_task=2, device="cpu")
    finally:
        dist.destroy_process_group()
    assert core_eval.unwrap(ddp) is inner
    assert wrapped == evaluate_core(inner, ByteTokenizer(), str(bundle), max_per_task=2, device="cpu")


def test_fp8_layers_run_as_plain_linears(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CORE never runs FP8 (train/fp8.py `without_fp8`): an fp8 model scores what the plain model
    of its weights scores, the final evaluation's model, and its Float8Linear layers are put back."""
    pytest.importorskip("torchao.float8")
    from torchao.float8.float8_linear import Float8Linear

    from speedrun_api.spec_train import ModelSpec
    from speedrun_trainer.train.fp8 import convert_to_fp8
    from speedrun_trainer.train.model import GPT

    torch.manual_seed(0)
    spec = ModelSpec(vocab_size=257, seq_len=64, hidden_dim=128, intermediate_dim=256, num_layers=1, num_heads=2)
    model, plain = GPT(spec), GPT(spec)
    plain.load_state_dict(model.state_dict())
    converted = convert_to_fp8(model)

    def no_fp8(self: Float8Linear, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("CORE ran an FP8 layer")

    monkeypatch.setattr(Float8Linear, "forward", no_fp8)
    got = evaluate_core(model, ByteTokenizer(), str(bundle), max_per_task=2, device="cpu")
    assert got == evaluate_core(plain, ByteTokenizer(), str(bundle), max_per_task=2, device="cpu")
    assert all(type(model.get_submodule(n)) is Float8Linear for n in converted)
