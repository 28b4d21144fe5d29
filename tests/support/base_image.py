"""The Python base image, made on this machine: no outside registry is reachable from CI.

The Dockerfile's default base is Docker Hub's python:3.11-slim-bookworm. CI reaches Debian's
mirror but not Docker Hub, so the base is made here the way Debian's own images are: debootstrap
bookworm (minbase) into a `buildah from scratch` container, with Debian's Python 3.11, committed
and pushed to the loopback registry. It stands in for the python image with the Dockerfile
unchanged, so it carries what the Dockerfile's stages use from python:3.11-slim: `python3 -m venv`
with pip (python3-venv), Python.h (python3-dev: Triton builds its launcher against it; the
trainer stage adds python3-dev only where python3 is missing), groupadd/useradd (minbase has
passwd), apt sources for the trainer stage's `apt-get install gcc g++`, and python/python3 under
/usr/local/bin where the python image has them.

A machine whose HTTPS goes through a proxy with its own CA (CI's does) trusts it through
/usr/local/share/ca-certificates; the base gets those certificates too, and an /etc/pip.conf that
points pip (which otherwise trusts only its bundled certifi) at the system store, so the
Dockerfile's `pip install` reaches PyPI from the build as it does from the machine.

The tag is a hash of this recipe: a changed recipe makes a new base, an unchanged one is found in
the registry and nothing is made.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.image_registry import CACHE, Registry

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "python3-dev", "ca-certificates")
REPOSITORY = "base/python"
# The apt sources python:3.11-slim-bookworm ships (deb822), so `apt-get update` in the Dockerfile
# sees the same suites, security updates included.
SOURCES = f"""Types: deb
URIs: {MIRROR}
Suites: {SUITE} {SUITE}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: {SUITE}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
HOST_CAS = Path("/usr/local/share/ca-certificates")
PIP_CONF = "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
CONFIG = {
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
    "cmd": "python3",
}


def host_cas() -> list[Path]:
    return sorted(HOST_CAS.rglob("*.crt")) if HOST_CAS.is_dir() else []


def recipe_tag() -> str:
    cas = {str(ca.relative_to(HOST_CAS)): ca.read_text() for ca in host_cas()}
    recipe = {"suite": SUITE, "mirror": MIRROR, "packages": PACKAGES, "sources": SOURCES, "config": CONFIG,
              "cas": cas, "v": 1}  # fmt: skip
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return f"3.11-{SUITE}-{digest[:12]}"


def run_logged(argv: list[str], log: Path) -> str:
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=out, text=True, timeout=1800)
        out.write(proc.stdout)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-20:]
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}); the last lines of {log}:\n" + "\n".join(tail))
    return proc.stdout.strip()


def debootstrap(root: Path, log: Path, packages: tuple[str, ...]) -> None:
    """debootstrap `packages` into `root` and shape it like the python image: its apt sources, the
    host's CAs trusted by the system and by pip. The python3.12 base (base_image_312.py) shares it."""
    include = ",".join(packages)
    argv = ["nice", "-n", "10", "debootstrap", "--variant=minbase", f"--include={include}", SUITE, str(root), MIRROR]
    run_logged(argv, log)
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(SOURCES)
    if cas := host_cas():
        for ca in cas:
            target = root / "usr/local/share/ca-certificates" / ca.relative_to(HOST_CAS)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(ca.read_bytes())
        run_logged(["chroot", str(root), "update-ca-certificates"], log)
        (root / "etc/pip.conf").write_text(PIP_CONF)


def clean(root: Path, log: Path) -> None:
    """What the python image leaves out: apt's lists and downloads, logs."""
    for path in ("var/lib/apt/lists", "var/cache/apt/archives", "var/log"):
        run_logged(["find", str(root / path), "-mindepth", "1", "-type", "f", "-delete"], log)


def make_rootfs(root: Path, log: Path) -> None:
    """debootstrap into `root` and shape it like the python image (sources, links, no apt lists)."""
    debootstrap(root, log, PACKAGES)
    for name in ("python", "python3"):
        link = root / "usr/local/bin" / name
        link.unlink(missing_ok=True)
        link.symlink_to("/usr/bin/python3")
    clean(root, log)


def commit_base(registry: Registry, tag: str, fill: Callable[[Path, Path], None], config: dict[str, Any]) -> str:
    """`registry`'s REPOSITORY:`tag`, made first where the registry lacks it: `fill(rootfs, log)`
    fills a `buildah from scratch` container, committed with `config` and pushed."""
    ref = registry.ref(REPOSITORY, tag)
    if registry.digest(REPOSITORY, tag):
        return ref
    log = CACHE / "run" / f"base-{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    container = run_logged(["buildah", "from", "scratch"], log)
    try:
        mount = Path(run_logged(["buildah", "mount", container], log))
        fill(mount, log)
        run_logged(["buildah", "umount", container], log)
        env = [arg for line in config["env"] for arg in ("--env", line)]
        run_logged(["buildah", "config", *env, "--cmd", str(config["cmd"]), container], log)
        run_logged(["buildah", "commit", "--rm", container, ref], log)
        container = ""
    finally:
        if container:
            subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
    run_logged(["buildah", "push", "--tls-verify=false", ref], log)
    return ref


def ensure_base(registry: Registry) -> str:
    """The base image's reference in `registry`, made and pushed first if the registry lacks it."""
    return commit_base(registry, recipe_tag(), make_rootfs, CONFIG)
