"""`make image` and README.md's cluster box, checked without a container engine or a cluster.

`make -n image` shows what `make image` would run: a build of each Dockerfile target, a push of
each, and the `helm install --set ...` line it prints; `helm template` with that line (and with the
README box's own helm line) shows the chart pulls exactly the pushed images, and that the box's
default storage and Secret are the ones its other commands create and use.
tests/e2e/test_cluster_readme_box.py runs the box itself on the control plane.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import yaml

from speedrun_operator.settings import OperatorSettings
from tests.support.helpers import ROOT
from tests.support.readme_box import cluster_box, helm_sets, option, words

CHART = ROOT / "charts" / "speedrun-operator"
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


def make_n(*args: str) -> subprocess.CompletedProcess[str]:
    # As a user's shell runs it: under `make test`, the inherited MAKELEVEL/MAKEFLAGS would make
    # this a sub-make that prints "Entering directory" lines around what it would run.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    return subprocess.run(["make", "-n", "image", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def pushed(stdout: str) -> list[str]:
    return [line.split()[-1] for line in stdout.splitlines() if re.match(r"\S+ push ", line)]


def printed_helm_line(stdout: str) -> list[str]:
    """The `helm install ...` that make echoes, as words."""
    [echo] = [line for line in stdout.splitlines() if "helm install" in line]
    return words(shlex.split(echo)[1])


def rendered_operator(helm: Path, argv: list[str]) -> dict[str, Any]:
    """The operator container of the chart as this `helm install` line installs it."""
    assert argv[:2] == ["helm", "install"], argv
    release, chart = argv[2], argv[3]
    namespace = option(argv, "-n", "--namespace") or "default"
    sets = [arg for key, value in helm_sets(argv).items() for arg in ("--set", f"{key}={value}")]
    proc = subprocess.run([str(helm), "template", release, str(ROOT / chart), "--namespace", namespace, *sets],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    [deployment] = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "Deployment"]
    return dict(deployment["spec"]["template"]["spec"]["containers"][0])


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def images(container: dict[str, Any]) -> tuple[str, str, str]:
    """(operator image, trainer image, TPU trainer image) the chart runs."""
    env = env_of(container)
    return container["image"], env["SPEEDRUN_TRAINER_IMAGE"], env["SPEEDRUN_OPERATOR_TPU_TRAINER_IMAGE"]


def test_make_image_builds_each_dockerfile_target_and_pushes_it() -> None:
    proc = make_n("REGISTRY=registry.example.com/you/", "BUILDER=docker")  # a trailing slash is not doubled
    assert proc.returncode == 0, proc.stderr
    operator, trainer, tpu = (
        f"registry.example.com/you/operator:{APP_VERSION}",
        f"registry.example.com/you/trainer:{APP_VERSION}",
        f"registry.example.com/you/trainer-tpu:{APP_VERSION}",
    )
    assert proc.stdout.splitlines()[:6] == [
        f"docker build --target operator -t {operator} .",
        f"docker build --target trainer -t {trainer} .",
        f"docker build --target trainer-tpu -t {tpu} .",
        f"docker push {operator}",
        f"docker push {trainer}",
        f"docker push {tpu}",
    ]
    dockerfile = (ROOT / "Dockerfile").read_text()
    for target in ("operator", "trainer", "trainer-tpu"):
        assert re.search(rf"^FROM \S+ AS {target}$", dockerfile, re.M), target


def test_make_image_takes_the_tag_and_the_container_tool() -> None:
    proc = make_n("REGISTRY=quay.io/me", "TAG=2024.1", "CONTAINER_TOOL=podman")
    assert proc.returncode == 0, proc.stderr
    assert "podman build --target trainer -t quay.io/me/trainer:2024.1 ." in proc.stdout
    assert pushed(proc.stdout) == [
        "quay.io/me/operator:2024.1",
        "quay.io/me/trainer:2024.1",
        "quay.io/me/trainer-tpu:2024.1",
    ]


def test_make_image_without_a_registry_says_what_to_give() -> None:
    proc = make_n()
    assert proc.returncode == 2 and not proc.stdout
    [line] = proc.stderr.splitlines()
    assert "REGISTRY: give the registry and namespace to push to, e.g. make image REGISTRY=ghcr.io/you" in line


def test_the_printed_helm_line_installs_the_pushed_images(helm: Path) -> None:
    proc = make_n("REGISTRY=registry.example.com/you", "TAG=1.2.3")
    assert images(rendered_operator(helm, printed_helm_line(proc.stdout))) == tuple(pushed(proc.stdout))


def box_command(commands: list[list[str]], *first: str) -> list[str]:
    found = [argv for argv in commands if argv[: len(first)] == list(first)]
    assert len(found) == 1, f"the README's cluster box: expected one `{' '.join(first)} ...`, got {found}"
    return found[0]


def test_readme_box_installs_what_make_image_pushes_with_default_storage(helm: Path) -> None:
    commands = [words(c) for c in cluster_box()]
    make = box_command(commands, "make", "image")
    install = box_command(commands, "helm", "install")
    proc = make_n(*make[2:])
    assert proc.returncode == 0, proc.stderr
    operator = rendered_operator(helm, install)
    assert images(operator) == tuple(pushed(proc.stdout))

    values = helm_sets(install)
    settings = OperatorSettings.from_env(env_of(operator))
    assert settings.problem() is None and settings.default_storage_uri == values["operator.defaultStorageUri"]
    assert settings.default_storage_endpoint_url.startswith("https://")
    # The Secret the operator names is the one the box creates, in the namespace its job runs in.
    namespace = option(install, "-n", "--namespace")
    secret = next(argv for argv in commands if argv[3:6] == ["create", "secret", "generic"])
    assert (option(secret, "-n"), secret[6]) == (namespace, settings.default_storage_secret)
    keys = {a.removeprefix("--from-literal=").split("=")[0] for a in secret if a.startswith("--from-literal=")}
    assert keys == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    apply = box_command(commands, "kubectl", "-n", namespace, "apply")
    manifest = yaml.safe_load((ROOT / apply[-1]).read_text())
    assert "storage" not in manifest["spec"], "the box's example runs on the default storage"
