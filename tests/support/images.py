"""The project's images, built from its Dockerfile by `make image`, as a user builds them.

    python -m tests.support.images build [--images operator trainer trainer-tpu]   # CI calls it early

A registry on loopback (tests/support/image_registry.py) holds everything, its storage cached per
machine; the bases are made here: Python 3.11 for the operator and trainer
(tests/support/base_image.py), the machine's CPython 3.12 for the TPU trainer
(tests/support/base_image_312.py). Each image's tag is a hash of what goes into it: the
Dockerfile, its lock, the package metadata and the source the Dockerfile copies, and the base's
digest. The registry is asked for that tag first, so a second run with nothing changed builds
nothing. Otherwise `make image BUILDER=buildah IMAGES=<one> TAG=<hash> PYTHON_IMAGE=<the base>`
(TPU_PYTHON_IMAGE=<the 3.12 base> for trainer-tpu) builds and pushes it, at `nice -n 10`, with
buildah's layer cache (`--layers`, the Makefile's): a source-only change rebuilds only the last
layers, and the pip downloads come from the Dockerfile's cache mount. Builds take a lock per base,
so two test processes never build the same image twice at once, and the TPU image's long build
does not hold up the operator and trainer images.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.base_image import REPOSITORY as BASE_REPOSITORY
from tests.support.base_image import ensure_base
from tests.support.base_image_312 import ensure_base_312, find_interpreter
from tests.support.helpers import ROOT
from tests.support.image_registry import CACHE, Registry, running_registry

NAMESPACE = "speedrun"
# The Dockerfile's targets built here, and those built by default (`make test`, the session's
# `built_images`): the TPU image (~6 GB of jax, libtpu and torch for a backend the CPU tests run
# from a venv) only when asked for, by `--images trainer-tpu` or ensure_images(registry, names).
BUILDABLE = ("operator", "trainer", "trainer-tpu")
IMAGES = ("operator", "trainer")
LOCKS = {name: f"requirements/{name}.txt" for name in BUILDABLE}
# The Dockerfile's ARG that names each image's base, and the base made for it.
BASE_ARG = {"operator": "PYTHON_IMAGE", "trainer": "PYTHON_IMAGE", "trainer-tpu": "TPU_PYTHON_IMAGE"}
ENSURE_BASE = {"PYTHON_IMAGE": ensure_base, "TPU_PYTHON_IMAGE": ensure_base_312}
LOCK_FILE = {"PYTHON_IMAGE": "build.lock", "TPU_PYTHON_IMAGE": "build-tpu.lock"}
# What the Dockerfile's COPY lines take from the context (tests/unit/deploy/test_images.py checks
# this list against them), and the build's own recipe.
CONTEXT = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "api", "trainer", "operator")
SKIPPED_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache"}


@dataclass
class Image:
    name: str
    ref: str
    digest: str
    built: bool  # False: the registry had this tag already
    seconds: float
    pull_bytes: int


def missing_tools(names: tuple[str, ...] = IMAGES) -> str | None:
    """Why images `names` cannot be built here (one line), or None."""
    tools = [t for t in ("buildah", "debootstrap", "docker-registry", "make") if shutil.which(t) is None]
    if tools:
        return f"needs {', '.join(tools)} (Debian: apt-get install buildah debootstrap docker-registry)"
    if os.geteuid() != 0:
        return "needs root (debootstrap and buildah's storage)"
    if "TPU_PYTHON_IMAGE" in {BASE_ARG[name] for name in names}:
        try:
            find_interpreter()
        except RuntimeError as err:
            return f"the TPU image's base: {err}"
    return None


def _files(path: Path, root: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    for child in sorted(path.rglob("*")):
        parts = set(child.relative_to(root).parts)
        if child.is_file() and not parts & SKIPPED_PARTS and child.suffix != ".pyc" and ".egg-info" not in str(child):
            yield child


def input_tag(name: str, base_digest: str, root: Path = ROOT) -> str:
    """A hash of what goes into the image: change any of it and the tag changes."""
    h = hashlib.sha256(f"{name}\n{base_digest}\n".encode())
    for entry in (*CONTEXT, LOCKS[name]):
        for path in _files(root / entry, root):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def compile_check() -> str:
    """The Python code of the trainer image's own `torch.compile` check (the Dockerfile's RUN)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", "")
    [code] = re.findall(r'python3 -c "(import torch; .+?torch\.compile.+?)"', text, re.S)
    return code


def make_image_argv(registry: Registry, name: str, tag: str, base_ref: str) -> list[str]:
    """The `make image` a user would run against this registry, for one image."""
    return ["nice", "-n", "10", "make", "image", f"REGISTRY={registry.host}/{NAMESPACE}", f"TAG={tag}",
            f"IMAGES={name}", f"{BASE_ARG[name]}={base_ref}", "BUILDER=buildah"]  # fmt: skip


@contextmanager
def build_lock(base_arg: str) -> Iterator[None]:
    """One builder at a time per base: the TPU image's long build never holds up the others."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / LOCK_FILE[base_arg]).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def make_image(registry: Registry, name: str, tag: str, base_ref: str) -> None:
    log = CACHE / "run" / f"{name}-{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    with log.open("w") as out:
        proc = subprocess.run(make_image_argv(registry, name, tag, base_ref), cwd=ROOT, env=env,
                              stdout=out, stderr=subprocess.STDOUT, timeout=3600)  # fmt: skip
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"make image IMAGES={name} failed ({proc.returncode}); the end of {log}:\n{tail}")


class NotBuilt(Exception):
    """The image's tag is not in the registry, and building it was not asked for."""


def ensure_image(registry: Registry, name: str, base_ref: str, build: bool = True) -> Image:
    """The image in `registry`, built and pushed by `make image` first if its tag is not there
    (NotBuilt instead when `build` is False)."""
    start = time.monotonic()
    base_repo, _, base_tag = base_ref.removeprefix(registry.host + "/").rpartition(":")
    base_digest = registry.digest(base_repo, base_tag)
    if base_digest is None:
        raise RuntimeError(f"{base_ref}: not in the registry")
    repository = f"{NAMESPACE}/{name}"
    built = False
    # A file edited while the build ran may be in the image under the old hash: the hash is taken
    # again afterwards, and a changed one builds again (the layer cache makes that short).
    for _ in range(3):
        tag = input_tag(name, base_digest)
        if registry.digest(repository, tag) is not None:
            break
        if not build:
            raise NotBuilt(f"{registry.ref(repository, tag)} is not in the registry")
        make_image(registry, name, tag, base_ref)
        built = True
        if input_tag(name, base_digest) == tag:
            break
    else:
        raise RuntimeError(f"{name}: its sources kept changing during the build")
    digest = registry.digest(repository, tag)
    if digest is None:
        raise RuntimeError(f"{registry.ref(repository, tag)}: pushed, yet the registry has no such tag")
    return Image(name, registry.ref(repository, tag), digest, built, time.monotonic() - start,
                 registry.pull_size(repository, tag))  # fmt: skip


def ensure_images(
    registry: Registry, names: tuple[str, ...] = IMAGES, report: Callable[[str], None] | None = None,
    build: bool = True,
) -> dict[str, Image]:  # fmt: skip
    """For each base the images need: the base, then its images, under that base's build lock;
    `report(line)` hears each phase's time as it ends."""
    say = report or (lambda line: None)
    images = {}
    for arg in dict.fromkeys(BASE_ARG[name] for name in names):
        with build_lock(arg):
            start = time.monotonic()
            base = ENSURE_BASE[arg](registry)
            base_repo, _, base_tag = base.removeprefix(registry.host + "/").rpartition(":")
            assert base_repo == BASE_REPOSITORY
            size = registry.pull_size(base_repo, base_tag) / 1e6
            say(f"base     {base} {registry.digest(base_repo, base_tag)} {size:.0f} MB  "
                f"{time.monotonic() - start:.0f} s")  # fmt: skip
            for name in (n for n in names if BASE_ARG[n] == arg):
                image = images[name] = ensure_image(registry, name, base, build)
                how = "built and pushed" if image.built else "found in the registry"
                say(f"{name:<8} {image.ref}@{image.digest} {image.pull_bytes / 1e6:.0f} MB  "
                    f"{how} in {image.seconds:.0f} s")  # fmt: skip
    return {name: images[name] for name in names}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.support.images", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="make sure the images are in the cached registry (build what is not)")
    build.add_argument("--images", nargs="+", choices=BUILDABLE, default=list(IMAGES))
    build.add_argument("--optional", action="store_true", help="say why and exit 0 where the tools are missing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reason = missing_tools(tuple(args.images))
    if reason:
        print(f"images: {reason}; the tests that run them skip", file=sys.stderr)
        return 0 if args.optional else 1
    start = time.monotonic()
    with running_registry() as registry:
        ensure_images(registry, tuple(args.images), report=lambda line: print(line, flush=True))
    print(f"images: {time.monotonic() - start:.0f} s in all; registry storage {CACHE / 'registry'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
