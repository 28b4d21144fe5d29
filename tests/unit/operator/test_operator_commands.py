"""`speedrun operator` (operator/speedrun_operator/commands.py): its flags become settings, the
settings become kopf's argv."""

from __future__ import annotations

from speedrun_operator.operator_commands import kopf_run_argv
from speedrun_operator.settings import OperatorSettings


def test_kopf_argv() -> None:
    # Always standalone: replicas coordinate through a Lease (leader.py), never kopf peering.
    assert kopf_run_argv(OperatorSettings()) == ["run", "-m", "speedrun_operator.main", "--standalone",
                                                 "--all-namespaces"]  # fmt: skip
    argv = kopf_run_argv(OperatorSettings(namespaces=("a", "b"), leader_election=True,
                                          liveness="http://0.0.0.0:8080/healthz"))  # fmt: skip
    assert argv == ["run", "-m", "speedrun_operator.main", "--standalone", "--namespace", "a", "--namespace", "b",
                    "--liveness", "http://0.0.0.0:8080/healthz"]  # fmt: skip
    assert kopf_run_argv(OperatorSettings(), dev=True)[-2:] == ["--dev", "--verbose"]


def test_operator_flags_become_settings() -> None:
    import argparse

    from speedrun_operator.operator_commands import register, settings_from_args

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["operator", "-n", "team-a", "--image", "i:2", "--metrics-port", "0",
                              "--leader-election"])  # fmt: skip
    settings = settings_from_args(args, OperatorSettings())
    assert (settings.namespaces, settings.trainer_image, settings.metrics_port, settings.leader_election) == (
        ("team-a",),
        "i:2",
        0,
        True,
    )
    assert args.func.__name__ == "operator_command"
