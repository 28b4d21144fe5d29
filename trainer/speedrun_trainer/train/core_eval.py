"""CORE: the DCLM in-context-learning ensemble, scored the way nanochat scores it.

    from speedrun_trainer.train.core_eval import evaluate_core, format_core_table
    result = evaluate_core(model, tokenizer, "s3://bucket/eval_bundle", max_per_task=500,
                           device="cuda", rank=rank, world_size=world_size)
    print(format_core_table(result))

`evaluate_run_core` runs it as the spec's `eval.core` asks, for the final evaluation and during
training on `eval.core.every`'s cadence (train/core_cadence.py); tests: `pytest tests/unit/trainer/test_core_eval.py`.

The bundle (DCLM / nanochat layout) is a directory URI (file://, a path, s3:// or https://) or a
`.zip` of one (nanochat's `eval_bundle.zip`):
    core.yaml            icl_tasks: [{label, icl_task_type, dataset_uri, num_fewshot, continuation_delimiter}]
    eval_meta_data.csv   columns "Eval Task" and "Random baseline" (percent)
    eval_data/<dataset_uri>   one JSON example per line
Examples: multiple_choice {query, choices, gold}; schema {context_options, continuation, gold};
language_modeling {context, continuation}.

Scoring, per example (nanochat's rules): the examples are shuffled once with seed 1337 and cut to
`max_per_task`; example i gets `num_fewshot` others drawn by `random.Random(seed + i)`, rendered
"<shot>\\n\\n" before it; every prompt starts with the tokenizer's document separator. Multiple
choice renders one prompt per choice (continuations differ after the common token prefix), schema
one per context option (the continuation is the common token suffix); the pick is the lowest mean
continuation loss, ties to the first. Language modeling is right when greedy argmax reproduces
every continuation token. Prompts are never cropped (nanochat's model never crops one: its RoPE
table covers 10x its sequence length); ours extends its RoPE table past seqLen at evaluation. All the
prompts of one example are one batch, run through the plain module (DDP and torch.compile
wrappers removed: every prompt length would be a new shape to compile) and never in FP8 (an fp8
run's Float8Linear layers run as plain linears, train/fp8.py `without_fp8`). Ranks take every
world_size-th example; the correct counts are summed with one all_reduce. Centered accuracy =
(acc - b) / (1 - b), b the random baseline; CORE = mean centered accuracy over the tasks.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel

from speedrun_api.spec import SpeedrunJob
from speedrun_trainer.data.storage import DataError, fetch_uri
from speedrun_trainer.train.fp8 import without_fp8
from speedrun_trainer.train.runtime import Dist

TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
REQUIRED_KEYS = {
    "multiple_choice": ("query", "choices", "gold"),
    "schema": ("context_options", "continuation", "gold"),
    "language_modeling": ("context", "continuation"),
}
DATA_SHUFFLE_SEED = 1337  # nanochat: fixes which examples `max_per_task` keeps
FEWSHOT_SEED = 1234  # nanochat: example i draws its shots with random.Random(1234 + i)
SHOT_SEPARATOR = "\n\n"


class BundleError(DataError):
    """An eval bundle that cannot be read or makes no sense; one line naming the URI."""


@dataclass(frozen=True)
class Task:
    label: str
    task_type: str
    dataset_uri: str
    num_fewshot: int
    continuation_delimiter: str
    random_baseline: float  # a fraction: 0.25 for four equally likely choices
    examples: list[dict[str, Any]]


# ---- the bundle -----------------------------------------------------------------------------


class _BundleFiles:
    """Reads files by path relative to the bundle root, from a directory URI or a zip."""

    def __init__(self, uri: str, endpoint_url: str | None) -> None:
        self.uri, self.endpoint_url = uri.rstrip("/"), endpoint_url
        self.zip: zipfile.ZipFile | None = None
        self.zip_root = ""
        if self.uri.lower().endswith(".zip"):
            try:
                self.zip = zipfile.ZipFile(io.BytesIO(fetch_uri(self.uri, endpoint_url)))
            except zipfile.BadZipFile as e:
                raise BundleError(f"{uri}: not a zip file ({e})") from None
            configs = sorted((n for n in self.zip.namelist() if n.rsplit("/", 1)[-1] == "core.yaml"), key=len)
            if not configs:
                raise BundleError(f"{uri}: no core.yaml in the zip")
            self.zip_root = configs[0][: -len("core.yaml")]

    def read(self, rel: str) -> bytes:
        if self.zip is None:
            return fetch_uri(f"{self.uri}/{rel}", self.endpoint_url)
        try:
            return self.zip.read(self.zip_root + rel)
        except KeyError:
            raise BundleError(f"{self.uri}: no {self.zip_root + rel} in the zip") from None


def _random_baselines(files: _BundleFiles) -> dict[str, float]:
    text = files.read("eval_meta_data.csv").decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and not {"Eval Task", "Random baseline"} <= set(rows[0]):
        raise BundleError(f"{files.uri}/eval_meta_data.csv: needs columns 'Eval Task' and 'Random baseline'")
    try:
        return {row["Eval Task"].strip(): float(row["Random baseline"]) / 100.0 for row in rows}
    except ValueError as e:
        raise BundleError(f"{files.uri}/eval_meta_data.csv: bad random baseline ({e})") from None


def _read_examples(files: _BundleFiles, label: str, task_type: str, dataset_uri: str) -> list[dict[str, Any]]:
    where = f"{files.uri}/eval_data/{dataset_uri}"
    examples = []
    for n, line in enumerate(files.read(f"eval_data/{dataset_uri}").decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            example = json.loads(line)
        except json.JSONDecodeError as e:
            raise BundleError(f"{where}:{n}: not valid JSON ({e})") from None
        missing = [k for k in REQUIRED_KEYS[task_type] if k not in example]
        if missing:
            raise BundleError(f"{where}:{n}: a {task_type} example needs {', '.join(missing)}")
        examples.append(example)
    if not examples:
        raise BundleError(f"{where}: task {label} has no examples")
    return examples


def load_bundle(uri: str, endpoint_url: str | None = None) -> list[Task]:
    """Every task of the bundle at `uri`, examples in file order, in core.yaml's order."""
    files = _BundleFiles(uri, endpoint_url)
    try:
        config = yaml.safe_load(files.read("core.yaml"))
    except yaml.YAMLError as e:
        raise BundleError(f"{files.uri}/core.yaml: not valid YAML ({e})".replace("\n", " ")) from None
    entries = config.get("icl_tasks") if isinstance(config, dict) else None
    if not entries:
        raise BundleError(f"{files.uri}/core.yaml: no icl_tasks")
    baselines = _random_baselines(files)
    tasks = []
    for entry in entries:
        label, task_type = entry.get("label"), entry.get("icl_task_type")
        if task_type not in TASK_TYPES:
            allowed = ", ".join(TASK_TYPES)
            raise BundleError(f"{files.uri}/core.yaml: task {label}: icl_task_type must be one of {allowed}")
        if label not in baselines:
            raise BundleError(f"{files.uri}/eval_meta_data.csv: no random baseline for task {label}")
        shots = entry.get("num_fewshot", 0)
        tasks.append(
            Task(
                label=label,
                task_type=task_type,
                dataset_uri=entry["dataset_uri"],
                num_fewshot=int(shots[0] if isinstance(shots, list) else shots),
                continuation_delimiter=entry.get("continuation_delimiter", " "),
                random_baseline=baselines[label],
                examples=_read_examples(files, label, task_type, entry["dataset_uri"]),
            )
        )
    return tasks


def select_examples(examples: list[dict[str, Any]], max_per_task: int | None) -> list[dict[str, Any]]:
    """The examples scored: shuffled with a fixed seed, then at most `max_per_task`."""
    chosen = list(examples)
    random.Random(DATA_SHUFFLE_SEED).shuffle(chosen)
    return chosen[:max_per_task] if max_per_task and max_per_task > 0 else chosen


# ---- prompts --------------------------------------------------------------------------------


def sample_fewshot(num_examples: int, idx: int, k: int, seed: int = FEWSHOT_SEED) -> list[int]:
    """Indices of the `k` shots for example `idx`: never itself, the same on every call and rank."""
    pool = [i for i in range(num_examples) if i != idx]
    return random.Random(seed + idx).sample(pool, min(k, len(pool))) if k > 0 else []


def render_prompts(task: Task, item: dict[str, Any], shots: list[dict[str, Any]]) -> list[str]:
    """The texts to score: one per choice (multiple_choice), per context option (schema), or
    [without, with] the continuation (language_modeling)."""
    d = task.continuation_delimiter
    if task.task_type == "multiple_choice":
        prefix = "".join(f"{s['query']}{d}{s['choices'][s['gold']]}{SHOT_SEPARATOR}" for s in shots)
        return [f"{prefix}{item['query']}{d}{choice}" for choice in item["choices"]]
    if task.task_type == "schema":
        prefix = "".join(f"{s['context_options'][s['gold']]}{d}{s['continuation']}{SHOT_SEPARATOR}" for s in shots)
        return [f"{prefix}{option}{d}{item['continuation']}" for option in item["context_options"]]
    # Contexts may carry stray whitespace: trimmed, and the prompt without the continuation is
    # stripped so that it stays a clean token prefix of the prompt with it.
    prefix = "".join(f"{s['context'].strip()}{d}{s['continuation']}{SHOT_SEPARATOR}" for s in shots)
    question = f"{prefix}{item['context'].strip()}{d}"
    return [question.strip(), question + item["continuation"]]


def _common_prefix(rows: list[list[int]]) -> int:
    n = 0
    for column in zip(*rows, strict=False):  # up to the shortest row
        if any(t != column[0] for t in column):
            break
        n += 1
    return n


def continuation_spans(task_type: str, rows: list[list[int]]) -> list[tuple[int, int]]:
    """[start, end) of the scored tokens in each row; always 1 <= start < end."""
    if task_type == "multiple_choice":
        start = _common_prefix(rows)
        spans = [(start, len(r)) for r in rows]
    elif task_type == "schema":
        suffix = _common_prefix([r[::-1] for r in rows])
        spans = [(len(r) - suffix, len(r)) for r in rows]
    else:  # language_modeling: rows are [without, with]; the continuation ends the second
        spans = [(_common_prefix(rows), len(rows[1]))]
    return [(min(max(s, 1), e - 1), e) for s, e in spans]


# ---- scoring --------------------------------------------------------------------------------


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile wrappers. Ranks score different numbers of
    examples, so a DDP forward (which may broadcast buffers) could wait forever on the others;
    and every prompt length would be a new shape to compile."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


@torch.no_grad()
def score_example(
    model: torch.nn.Module,
    tokenizer: Any,
    task: Task,
    data: list[dict[str, Any]],
    idx: int,
    device: torch.device | str,
    seed: int = FEWSHOT_SEED,
) -> bool:
    """Whether the model gets example `idx` of `data` right (one forward pass)."""
    item = data[idx]
    shots = [data[i] for i in sample_fewshot(len(data), idx, task.num_fewshot, seed)]
    prompts = render_prompts(task, item, shots)
    rows = [[tokenizer.eot_id, *tokenizer.encode(p)] for p in prompts]
    spans = continuation_spans(task.task_type, rows)
    if task.task_type == "language_modeling":
        rows = rows[1:]
    # Never cropped, as nanochat scores them: a prompt longer than seqLen runs past it (RoPE extends).
    cut = [(r, s, e) for r, (s, e) in zip(rows, spans, strict=True)]
    width = max(len(r) for r, _, _ in cut)
    ids = torch.full((len(cut), width), tokenizer.eot_id, dtype=torch.long)  # right padding, never scored
    targets = torch.full((len(cut), width), -1, dtype=torch.long)
    for i, (r, s, e) in enumerate(cut):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        targets[i, s - 1 : e - 1] = ids[i, s:e]  # position t predicts token t + 1
    ids, targets = ids.to(device), targets.to(device)
    if task.task_type == "language_modeling":
        _, s, e = cut[0]
        predicted = model(ids)[0, s - 1 : e - 1].argmax(dim=-1)  # (e - s,)
        return bool(torch.equal(predicted, ids[0, s:e]))
    losses = model(ids, targets, reduction="none").float()  # (B, T) nats, 0 where ignored
    counts = torch.tensor([e - s for _, s, e in cut], device=losses.device, dtype=torch.float32)
    mean_losses = (losses.sum(dim=1) / counts).tolist()
    return mean_losses.index(min(mean_losses)) == item["gold"]


def _autocast(device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    # nanochat scores CORE in bf16 on GPUs; on CPUs fp32 is both faster and exact.
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate_core(
    model: torch.nn.Module,
    tokenizer: Any,
    bundle_uri: str,
    *,
    max_per_task: int | None,
    device: torch.device | str,
    rank: int = 0,
    world_size: int = 1,
    endpoint_url: str | None = None,
    seed: int = FEWSHOT_SEED,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """CORE of `model` on the bundle: {"core_metric", "tasks": {label: {accuracy, centered,
    random_baseline, num_examples, task_type, num_fewshot}}}, identical on every rank."""
    distributed = dist.is_available() and dist.is_initialized()
    if world_size > 1 and not distributed:
        raise ValueError(f"world_size {world_size} needs torch.distributed initialized (to sum the counts)")
    tasks = load_bundle(bundle_uri, endpoint_url)
    selected = [select_examples(t.examples, max_per_task) for t in tasks]
    correct = torch.zeros(len(tasks), dtype=torch.long, device=device)
    model = unwrap(model)
    was_training = model.training
    model.eval()
    try:
        with _autocast(device), without_fp8(model):  # never FP8 matmuls (train/fp8.py)
            for n, (task, data) in enumerate(zip(tasks, selected, strict=True)):
                hits = sum(
                    score_example(model, tokenizer, task, data, i, device, seed)
                    for i in range(rank, len(data), world_size)
                )
                correct[n] = hits
                if log is not None:
                    scored = len(range(rank, len(data), world_size))
                    log(f"CORE task {task.label}: {hits}/{scored} right on rank {rank}")
    finally:
        model.train(was_training)
    if distributed and world_size > 1:
        dist.all_reduce(correct, op=dist.ReduceOp.SUM)
    results: dict[str, dict[str, Any]] = {}
    for task, data, hits in zip(tasks, selected, correct.tolist(), strict=True):
        accuracy = hits / len(data)
        b = task.random_baseline
        results[task.label] = {
            "accuracy": accuracy,
            "centered": (accuracy - b) / (1.0 - b),
            "random_baseline": b,
            "num_examples": len(data),
            "task_type": task.task_type,
            "num_fewshot": task.num_fewshot,
        }
    core = sum(r["centered"] for r in results.values()) / len(results)
    return {"core_metric": core, "tasks": results, "max_per_task": max_per_task}


def evaluate_run_core(model: torch.nn.Module, job: SpeedrunJob, env: Dist, tokenizer: Any) -> dict[str, Any] | None:
    """`evaluate_core` as the run's spec asks (`eval.core`); None when it asks for no CORE.
    The training loop (for a CORE target) and the final evaluation both score this way."""
    core = job.spec.eval.core
    if core is None:
        return None
    return evaluate_core(
        model,
        tokenizer,
        core.bundle,
        max_per_task=core.max_per_task,
        device=env.device,
        rank=env.rank,
        world_size=env.world_size,
        endpoint_url=job.spec.storage.endpoint_url,
    )


def format_core_table(result: dict[str, Any]) -> str:
    """The per-task table as aligned text, CORE on the last line."""
    header = ("task", "type", "shots", "examples", "accuracy", "baseline", "centered")
    rows = [
        (
            label,
            t["task_type"],
            str(t["num_fewshot"]),
            str(t["num_examples"]),
            f"{t['accuracy']:.4f}",
            f"{t['random_baseline']:.4f}",
            f"{t['centered']:.4f}",
        )
        for label, t in result["tasks"].items()
    ]
    rows.append(("CORE", "", "", "", "", "", f"{result['core_metric']:.4f}"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs]  # text left, numbers right
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
