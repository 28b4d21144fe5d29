"""The `speedrun` command line.

    speedrun plan FILE [--config|--json]  what a manifest will cost (Marin's print_run_info)
    speedrun run FILE                 train + evaluate locally with torchrun, no cluster
    speedrun data prepare ...         text files -> token shards
    speedrun leaderboard URI          rank the results files under a URI
    speedrun render FILE              the Kubernetes objects the operator would create
    speedrun crd [--check]            regenerate the CRD from the pydantic model
    speedrun operator                 run the kopf operator

Every user mistake is one line on stderr naming the field and what is allowed, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable

from speedrun_api.accelerators import lookup
from speedrun_api.manifest import EXIT_INVALID, SpecError, load_job, strict_json
from speedrun_api.memory import MemoryEstimate, memory_verdict
from speedrun_api.plan import Plan, resolve
from speedrun_api.run_contract import LOCAL_RUNS_DIR
from speedrun_api.spec import SpeedrunJob
from speedrun_api.tpu import slice_of
from speedrun_trainer import __version__


def human_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def format_plan(job: SpeedrunJob, plan: Plan, *, config: bool = False) -> str:
    """Marin's print_run_info, cost first: size, FLOPs, tokens, devices and wall time lead (the
    lines a user plans by), the details follow; the resolved config only with `config`."""
    spec = job.spec
    acc = lookup(spec.resources.accelerator)
    acc_name = acc.display if acc else spec.resources.accelerator
    nodes = f"{plan.min_nodes}-{plan.max_nodes}" if plan.min_nodes != plan.max_nodes else str(plan.nodes)
    t = spec.train
    verdict = memory_verdict(job)
    lines = [
        f"----- speedrun plan: {job.metadata.name} -----",
        f"Model size: {plan.model_size / 1e6:.2f} million parameters",
        f"Model FLOPs: {plan.model_flops:.2e} FLOP",
        f"Total tokens: {plan.total_tokens:,} ({plan.total_tokens:.3e})",
        f"Number of devices: {plan.num_devices} ({_layout(job, plan, nodes)}, {acc_name})",
        f"Peak memory per device: {verdict.line()}",
        "The rough estimated compute (total model FLOPs / assumed MFU) is between:",
    ]
    for key, est in plan.estimates.items():
        mfu = key.split("=")[1]
        lines.append(
            f"      * {est['hardware_flops']:.2e} FLOPs assuming an MFU of {mfu}"
            f" (about {human_seconds(est['seconds'])} of wall time)"
        )
    lines += [
        "Details:",
        f"  Device FLOPs: {plan.device_flops:.2e} FLOP/s (peak of all devices: {plan.peak_flops:.2e} FLOP/s)",
        f"  Model FLOPs per token (forward): {plan.model_flops_per_token:.3e}",
        f"  Scaling parameters (matrices + lm_head, for paramDataRatio): {plan.scaling_params / 1e6:.2f} million",
        f"  Training steps: {plan.steps} ({t.batch_size} sequences x {spec.model.seq_len} tokens per step)",
        f"  Horizon: {plan.horizon_rule}",
        f"  Gradient accumulation steps: {plan.grad_accum_steps}"
        f" ({t.batch_size} sequences / {t.device_batch_size} per device / {plan.num_devices} device(s))",
        *_memory_lines(verdict.estimate),
    ]
    if spec.target is not None:
        lines.append(f"  Target: stop when {spec.target.metric} reaches {spec.target.value} (time-to-target run)")
    if config:
        lines += ["Speedrun configuration:", json.dumps(job.manifest()["spec"], indent=2)]
    else:
        lines.append("The resolved configuration: add --config (or --json: all as one JSON object)")
    lines.append("----- end of speedrun plan -----")
    return "\n".join(lines)


def _layout(job: SpeedrunJob, plan: Plan, nodes: str) -> str:
    """How the devices are laid out: nodes x processes, or a TPU slice's hosts x chips."""
    tpu = slice_of(job.spec.resources)
    if tpu is None:
        return f"{nodes} node(s) x {plan.procs_per_node} process(es)"
    return f"{tpu.hosts} host(s) x {tpu.chips_per_host} chips, one JAX process per host"


def _memory_lines(est: MemoryEstimate) -> list[str]:
    """The estimate's breakdown in GB, wrapped to the plan's 80 columns."""
    mode = "compiled" if est.compiled else "eager"
    head = f"  Peak memory per device at deviceBatchSize {est.device_batch}, {mode} (GB):"
    lines = [head, "   "]
    for key, value in est.parts().items():
        item = f" {key.replace('_', ' ')} {value / 1e9:.1f},"
        if len(lines[-1]) + len(item) > 78:
            lines.append("   ")
        lines[-1] += item
    lines[-1] = lines[-1].rstrip(",")
    return lines


def plan_json(job: SpeedrunJob, plan: Plan) -> dict:
    return {**plan.to_dict(), "memory": memory_verdict(job).to_dict(), "config": job.manifest()}


def cmd_plan(args: argparse.Namespace) -> int:
    job = load_job(args.file)
    plan = resolve(job)
    print(strict_json(plan_json(job, plan), indent=2) if args.json else format_plan(job, plan, config=args.config))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from speedrun_trainer.cli.local import run_local

    job = load_job(args.file)
    return run_local(
        job,
        storage_uri=args.storage,
        resume=args.resume,
        runs_dir=args.runs_dir,
        launcher=args.launcher,
        force=args.force,
    )


# Subcommands that other modules register: (module, attribute). Missing or broken optional
# modules must never take down the CLI's core commands.
_PLUGINS = [
    ("speedrun_trainer.data.fetch", "register_data"),
    ("speedrun_trainer.leaderboard.leaderboard_command", "register"),
    ("speedrun_api.crd", "register"),
    ("speedrun_operator.operator_commands", "register"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speedrun", description="LLM-training speedruns, locally or on Kubernetes.")
    parser.add_argument("--version", action="version", version=f"speedrun {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("plan", help="resolve a manifest and print its size, FLOPs and cost estimates")
    p.add_argument("file", help="SpeedrunJob manifest (YAML or JSON)")
    p.add_argument("--json", action="store_true", help="print one JSON object (Marin's key names), config included")
    p.add_argument("--config", action="store_true", help="also print the resolved configuration after the costs")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="train and evaluate a manifest locally with torchrun (no cluster)")
    p.add_argument("file", help="SpeedrunJob manifest (YAML or JSON)")
    p.add_argument("--storage", help="storage URI for checkpoints and results (default <runs-dir>/<name>/<run-id>)")
    p.add_argument("--resume", action="store_true", help="continue the newest run of this manifest under --runs-dir")
    p.add_argument(
        "--force",
        action="store_true",
        help="with --resume: evaluate a run that already finished again, overwriting its results",
    )
    p.add_argument("--runs-dir", default=LOCAL_RUNS_DIR, help=f"where local runs live (default ./{LOCAL_RUNS_DIR})")
    p.add_argument(
        "--launcher",
        choices=("torchrun", "torchx"),
        default="torchrun",
        help="start the nodes as torchrun agents (default) or as a torchx dist.ddp app (local_cwd)",
    )
    p.set_defaults(func=cmd_run)

    for module, attr in _PLUGINS:
        try:
            register: Callable[[argparse._SubParsersAction], None] = getattr(importlib.import_module(module), attr)
        except ImportError:
            continue
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SpecError as err:
        for line in err.lines:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `speedrun plan --json | head`: the reader has seen enough
        # Point stdout at /dev/null so that the interpreter's final flush raises nothing either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
