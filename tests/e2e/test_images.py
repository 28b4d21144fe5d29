"""The operator and trainer images, built from the Dockerfile by `make image` as a user builds them
(tests/support/images.py), pushed to a real registry on loopback, then pulled and run.

Cold, this builds the base (debootstrap, ~1 min), the operator image (~30 s) and the 6.3 GB
trainer image (~4.5 min with its push); warm, the registry has every tag and nothing is built,
and the test takes ~20 s (docs/testing.md, "The images"). Each image runs in a container
(`buildah from` + `buildah run`, runc) made from the registry's copy, and the test checks that
copy's digest is the pushed one.
Skips with one line without buildah, debootstrap, docker-registry or root.

    pytest tests/e2e/test_images.py
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.support import images
from tests.support.image_registry import Registry, running_registry

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def built() -> Iterator[tuple[Registry, dict[str, images.Image]]]:
    reason = images.missing_tools()
    if reason:
        pytest.skip(f"images: {reason}")
    with running_registry() as registry:
        yield registry, images.ensure_images(registry, report=print)


def run_in(image: images.Image, *argv: str, env: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`argv` in a fresh container of the image as the registry has it; the container is removed."""
    container = subprocess.run(["buildah", "from", "-q", "--tls-verify=false", "--pull=always", image.ref],
                               capture_output=True, text=True, check=True, timeout=900).stdout.strip()  # fmt: skip
    try:
        digest = subprocess.run(["buildah", "inspect", "--format", "{{.FromImageDigest}}", container],
                                capture_output=True, text=True, check=True, timeout=60).stdout.strip()  # fmt: skip
        assert digest == image.digest, f"the container runs {digest}, the registry holds {image.digest}"
        flags = [arg for value in env for arg in ("--env", value)]
        return subprocess.run(["buildah", "run", *flags, container, "--", *argv], capture_output=True, text=True,
                              timeout=900)  # fmt: skip
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False, timeout=120)


def test_operator_image_runs_the_operator_as_uid_1000_without_torch(
    built: tuple[Registry, dict[str, images.Image]],
) -> None:
    operator = built[1]["operator"]
    print(f"operator image: {operator.ref}@{operator.digest}")
    code = (
        "import os, importlib.util, speedrun_operator.main; "
        "assert importlib.util.find_spec('torch') is None, 'torch in the operator image'; "
        "print('uid', os.getuid(), 'home', os.environ['HOME'])"
    )
    proc = run_in(operator, "python", "-c", code)
    assert proc.returncode == 0 and proc.stdout.split() == ["uid", "1000", "home", "/tmp"], proc.stderr[-2000:]
    proc = run_in(operator, "speedrun", "operator", "--help")
    assert proc.returncode == 0 and "operator" in proc.stdout, proc.stderr[-2000:]


def test_trainer_image_compiles_with_torch_compile(built: tuple[Registry, dict[str, images.Image]]) -> None:
    trainer = built[1]["trainer"]
    print(f"trainer image: {trainer.ref}@{trainer.digest}")
    proc = run_in(trainer, "python3", "-c", images.compile_check())
    assert proc.returncode == 0 and "torch.compile (inductor C++): ok" in proc.stdout, proc.stderr[-3000:]
    proc = run_in(trainer, "python3", "-c", "import os, speedrun_trainer.train.loop; print(os.getuid())")
    assert proc.returncode == 0 and proc.stdout.strip() == "1000", proc.stderr[-2000:]


def test_a_second_run_builds_nothing(built: tuple[Registry, dict[str, images.Image]]) -> None:
    registry, first = built
    again = images.ensure_images(registry)
    assert {name: (image.ref, image.digest, image.built) for name, image in again.items()} == {
        name: (image.ref, image.digest, False) for name, image in first.items()
    }
