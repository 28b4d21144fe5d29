"""`make image`'s builder, registry and subset settings, checked with `make -n` and fake builders.

The builder is docker when its engine answers, else podman, else buildah (a docker CLI without an
engine, as on CI, is not a builder); BUILDER= (or CONTAINER_TOOL=) names one. buildah gets
`--layers`, the layer cache docker and podman use by themselves. A registry or base on loopback is
plain HTTP: podman and buildah get `--tls-verify=false` there (docker's daemon trusts loopback by
itself). IMAGES= builds a subset. tests/support/images.py runs this same target for the tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.helpers import ROOT

MAKE = shutil.which("make") or "make"


def fake_path(tmp_path: Path, docker_engine: bool | None, *others: str) -> str:
    """A PATH with sed and sh, and fake builders: docker (None: absent) whose `info` succeeds only
    with an engine, and each of `others`. Each fake records its calls in calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("sed", "sh"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    fakes = {name: "exit 0" for name in others}
    if docker_engine is not None:
        fakes["docker"] = "exit 0" if docker_engine else 'echo "Cannot connect to the Docker daemon" >&2; exit 1'
    for name, body in fakes.items():
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> {tmp_path}/calls.log\n{body}\n')
        script.chmod(0o755)
    return str(bin_dir)


def make_n(path: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "BUILDER")}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([MAKE, "-n", "image", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def commands(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if not line.startswith("echo ")]


@pytest.mark.parametrize(
    ("docker_engine", "others", "expected"),
    [
        (True, ("podman", "buildah"), "docker"),
        (False, ("podman", "buildah"), "podman"),  # a docker CLI with no engine behind it
        (False, ("buildah",), "buildah"),
        (None, ("buildah",), "buildah"),
    ],
)
def test_the_builder_is_the_first_that_works(
    tmp_path: Path, docker_engine: bool | None, others: tuple[str, ...], expected: str
) -> None:
    lines = commands(make_n(fake_path(tmp_path, docker_engine, *others), "REGISTRY=r.example.com/me", "TAG=1"))
    assert [line.split()[:2] for line in lines] == [[expected, "build"]] * 3 + [[expected, "push"]] * 3
    layers = "--layers" in lines[0].split()
    assert layers == (expected == "buildah"), lines[0]


def test_no_builder_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    proc = make_n(fake_path(tmp_path, False), "REGISTRY=r.example.com/me")
    assert proc.returncode == 2 and not proc.stdout
    [line] = proc.stderr.splitlines()
    assert "BUILDER: no container builder here: install docker (with a running engine), podman or buildah" in line


def test_builder_named_wins_and_docker_is_asked_once_at_most(tmp_path: Path) -> None:
    path = fake_path(tmp_path, True, "buildah")
    for setting in ("BUILDER=buildah", "CONTAINER_TOOL=buildah"):
        lines = commands(make_n(path, "REGISTRY=r.example.com/me", setting))
        assert all(line.startswith("buildah ") for line in lines), lines
    assert not (tmp_path / "calls.log").exists(), "a named builder needs no detection"
    commands(make_n(path, "REGISTRY=r.example.com/me"))
    assert (tmp_path / "calls.log").read_text().splitlines() == ["docker info"]


@pytest.mark.parametrize("builder", ["buildah", "podman", "docker"])
def test_a_loopback_registry_is_plain_http(builder: str) -> None:
    base = "127.0.0.1:5000/base/python:3.11"
    lines = commands(make_n(None, f"BUILDER={builder}", "REGISTRY=127.0.0.1:5000/ns", "TAG=t", "IMAGES=operator",
                            f"PYTHON_IMAGE={base}"))  # fmt: skip
    build, push = lines
    tls = [] if builder == "docker" else ["--tls-verify=false"]
    layers = ["--layers"] if builder == "buildah" else []
    assert build.split() == [builder, "build", *layers, *tls, "--build-arg", f"PYTHON_IMAGE={base}",
                             "--target", "operator", "-t", "127.0.0.1:5000/ns/operator:t", "."]  # fmt: skip
    assert push.split() == [builder, "push", *tls, "127.0.0.1:5000/ns/operator:t"]


@pytest.mark.parametrize(
    ("args", "insecure"),
    [
        (("REGISTRY=localhost:5000/ns",), True),
        (("REGISTRY=ghcr.io/me", "PYTHON_IMAGE=127.0.0.1:5000/python:3.11"), True),  # the base is pulled plainly
        (("REGISTRY=ghcr.io/me",), False),
        (("REGISTRY=registry.internal:5000/me", "INSECURE=1"), True),
        (("REGISTRY=localhost:5000/ns", "INSECURE="), False),
        (("REGISTRY=ghcr.io/me", "TPU_PYTHON_IMAGE=localhost:5000/python:3.12"), True),
    ],
)
def test_insecure_is_on_for_loopback_and_when_asked(args: tuple[str, ...], insecure: bool) -> None:
    lines = commands(make_n(None, "BUILDER=buildah", *args))
    assert all(("--tls-verify=false" in line.split()) == insecure for line in lines), lines


def test_images_builds_and_pushes_a_subset_in_order() -> None:
    lines = commands(make_n(None, "BUILDER=podman", "REGISTRY=quay.io/me", "TAG=2", "IMAGES=trainer operator"))
    assert lines == [
        "podman build --target trainer -t quay.io/me/trainer:2 .",
        "podman build --target operator -t quay.io/me/operator:2 .",
        "podman push quay.io/me/trainer:2",
        "podman push quay.io/me/operator:2",
    ]


@pytest.mark.parametrize(("images", "message"), [("operator trainer-gpu", "IMAGES: trainer-gpu is not an image"),
                                                 ("", "IMAGES: empty")])  # fmt: skip
def test_a_wrong_image_list_is_one_line(images: str, message: str) -> None:
    proc = make_n(None, "BUILDER=podman", "REGISTRY=quay.io/me", f"IMAGES={images}")
    assert proc.returncode == 2 and not proc.stdout
    [line] = proc.stderr.splitlines()
    assert message in line and "choose among operator trainer trainer-tpu" in line


def test_the_tpu_image_takes_its_own_base() -> None:
    base = "mirror.example.com/python:3.12-slim-bookworm"
    lines = commands(make_n(None, "BUILDER=podman", "REGISTRY=quay.io/me", "TAG=3", "IMAGES=trainer-tpu",
                            f"TPU_PYTHON_IMAGE={base}"))  # fmt: skip
    target = "--target trainer-tpu -t quay.io/me/trainer-tpu:3 ."
    assert lines[0] == f"podman build --build-arg TPU_PYTHON_IMAGE={base} {target}"
