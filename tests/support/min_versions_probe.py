"""Run in the floors' venv (tests/support/min_versions.py): the operator as far as it goes
without an apiserver. Its kopf handlers register, its start-up configures kopf's settings and
its API client, a manifest parses and its children build and serialise; prints the versions."""

from __future__ import annotations

import json
import logging
import sys
from importlib.metadata import version
from pathlib import Path

import kopf
import yaml

from speedrun_api.manifest import parse_job
from speedrun_operator import builders, main
from speedrun_operator.handlers import operator_startup, periodic


def probe(example: Path) -> dict[str, str]:
    settings = kopf.OperatorSettings()
    memo = kopf.Memo()
    context = operator_startup.configure(settings, memo, logging.getLogger("probe"))
    assert settings.watching.label_selectors, "kopf dropped the Job watch's server-side selector"
    assert context.client is not None and main.SPEEDRUNJOBS
    job = parse_job(yaml.safe_load(example.read_text()))
    builders.check_runnable(job, context.settings)
    ours = context.settings
    children = [builders.build_run_configmap(job), builders.build_headless_service(job),
                builders.build_train_job(job, ours, 0), builders.build_eval_job(job, ours)]  # fmt: skip
    for child in children:
        json.dumps(child)  # as the client sends it
    periodic.Periodic(context, logging.getLogger("probe")).stop()
    return {name: version(name) for name in sys.argv[2:]}


if __name__ == "__main__":
    print(json.dumps(probe(Path(sys.argv[1]))))
