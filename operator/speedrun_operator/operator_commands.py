"""The operator's subcommands of the `speedrun` CLI: render, operator.

    speedrun render examples/gpt2-124m-8xh100.yaml [-o yaml|json] [--accelerator-labels gke|eks|...]
    speedrun operator [--namespace NS ...] [--all-namespaces] [--image IMG] [--metrics-port N]
                      [--leader-election] [--accelerator-labels PROFILE] [--dev]

The main CLI (speedrun_trainer.cli.speedrun) calls `register(subparsers)`; until then, or to run only
these, use `python -m speedrun_operator.operator_commands ...`. `operator` writes its flags into the
environment (settings.py) and then runs `kopf run -m speedrun_operator.main` in-process.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from typing import Any

import yaml

from speedrun_api.accelerator_labels import DEFAULT_PROFILE, PROFILES
from speedrun_api.manifest import EXIT_INVALID, SpecError, load_job, strict_json
from speedrun_operator.builders import BuildError, build_all, check_runnable
from speedrun_operator.settings import OperatorSettings, env_name

OPERATOR_MODULE = "speedrun_operator.main"


def register(subparsers: Any) -> None:
    """Add `render` and `operator` to an argparse subparsers object."""
    render = subparsers.add_parser("render", help="print the Kubernetes objects the operator creates for a manifest")
    render.add_argument("file", help="SpeedrunJob manifest (YAML or JSON)")
    render.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    _labels_flag(render)
    render.set_defaults(func=render_command)

    op = subparsers.add_parser("operator", help="run the operator (kopf) against the current kube context")
    op.add_argument("--namespace", "-n", action="append", default=[], help="serve this namespace (repeatable)")
    op.add_argument("--all-namespaces", "-A", action="store_true", help="serve the whole cluster (default)")
    op.add_argument("--image", help="default trainer image (SPEEDRUN_TRAINER_IMAGE)")
    op.add_argument("--metrics-port", type=int, help="operator metrics port, 0 to disable")
    op.add_argument(
        "--leader-election",
        action="store_true",
        help="several replicas: only the holder of a coordination.k8s.io Lease reconciles",
    )
    op.add_argument("--liveness", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    op.add_argument("--dev", action="store_true", help="run from a laptop: verbose logs")
    _labels_flag(op)
    op.set_defaults(func=operator_command)


def _labels_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--accelerator-labels",
        choices=PROFILES,
        help=f"which node labels select a GPU's nodes (default: {env_name('accelerator_labels')}, else "
        f"{DEFAULT_PROFILE}): none, or the labels of GKE, EKS with Karpenter, EKS Auto Mode, AKS or "
        "NVIDIA's GPU feature discovery",
    )


# ---- render -------------------------------------------------------------------------------------


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's run.json) as literal blocks, readable in `render`."""


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_presenter)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.dump_all(objects, Dumper=_BlockDumper, sort_keys=False, width=110)


def render_command(args: argparse.Namespace) -> int:
    try:
        settings = OperatorSettings.from_env()
    except ValueError as err:  # a variable that cannot be parsed
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    if args.accelerator_labels:
        settings = replace(settings, accelerator_labels=args.accelerator_labels)
    if settings.problem():
        print(f"error: {settings.problem()}", file=sys.stderr)
        return EXIT_INVALID
    try:
        job = load_job(args.file)
    except SpecError as err:
        for line in err.lines:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_INVALID
    try:
        check_runnable(job, settings)
    except BuildError as err:
        print(f"note: the operator would refuse this job: {err}", file=sys.stderr)
    objects = build_all(job, settings)
    if args.output == "json":
        print(strict_json({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2))
    else:
        print(to_yaml(objects), end="")
    return 0


# ---- operator -----------------------------------------------------------------------------------


def settings_from_args(args: argparse.Namespace, base: OperatorSettings | None = None) -> OperatorSettings:
    settings = base or OperatorSettings.from_env()
    if args.namespace:
        settings = replace(settings, namespaces=tuple(args.namespace))
    if args.all_namespaces:
        settings = replace(settings, namespaces=())
    if args.image:
        settings = replace(settings, trainer_image=args.image)
    if args.metrics_port is not None:
        settings = replace(settings, metrics_port=args.metrics_port)
    if args.leader_election:
        settings = replace(settings, leader_election=True)
    if args.liveness:
        settings = replace(settings, liveness=args.liveness)
    if getattr(args, "accelerator_labels", None):
        settings = replace(settings, accelerator_labels=args.accelerator_labels)
    return settings


def kopf_run_argv(settings: OperatorSettings, *, dev: bool = False, verbose: bool = False) -> list[str]:
    """The `kopf run` arguments for these settings (tests run the same through KopfRunner).

    Always `--standalone`: replicas coordinate through a Lease (leader.py), not kopf peering,
    which would look up KopfPeering objects the chart does not install."""
    argv = ["run", "-m", OPERATOR_MODULE, "--standalone"]
    if settings.namespaces:
        for namespace in settings.namespaces:
            argv += ["--namespace", namespace]
    else:
        argv.append("--all-namespaces")
    if settings.liveness:
        argv += ["--liveness", settings.liveness]
    if dev:
        argv.append("--dev")
    if dev or verbose:
        argv.append("--verbose")
    return argv


def credentials_problem() -> str | None:
    """One line saying why no Kubernetes credentials can be loaded (kube.load_configuration), or None."""
    import kubernetes.config

    from speedrun_operator.kube import load_configuration

    try:
        load_configuration()
    except (kubernetes.config.ConfigException, OSError) as err:
        where = os.environ.get("KUBECONFIG") or "~/.kube/config"
        reason = (str(err).splitlines() or [type(err).__name__])[0].rstrip(".")
        return (
            f"no Kubernetes credentials: not running in a cluster, and the kubeconfig ({where}) "
            f"cannot be used: {reason}. Set KUBECONFIG or run inside a pod."
        )
    return None


def operator_command(args: argparse.Namespace) -> int:
    if args.namespace and args.all_namespaces:
        print("operator: give --namespace or --all-namespaces, not both", file=sys.stderr)
        return EXIT_INVALID
    import kopf.cli

    try:
        settings = settings_from_args(args)
    except ValueError as err:  # a variable the operator cannot parse
        print(f"speedrun operator: {err}", file=sys.stderr)
        return EXIT_INVALID
    if settings.problem():
        print(f"speedrun operator: {settings.problem()}", file=sys.stderr)
        return EXIT_INVALID
    problem = credentials_problem()
    if problem:  # kopf would print a traceback and retry its login every minute
        print(f"speedrun operator: {problem}", file=sys.stderr)
        return 1
    os.environ.update(settings.to_env())  # main.py's startup handler reads them back
    try:
        kopf.cli.main.main(args=kopf_run_argv(settings, dev=args.dev), standalone_mode=False)
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="speedrun", description=__doc__.split("\n\n")[0])
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
