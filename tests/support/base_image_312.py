"""The TPU image's Python 3.12 base, made on this machine: python:3.12-slim-bookworm stood in for.

The Dockerfile's trainer-tpu target builds on python:3.12-slim-bookworm (jax 0.12 needs Python
>= 3.12), which is on Docker Hub, out of CI's reach; Debian bookworm has no 3.12. These machines
have a CPython 3.12 of their own: pyenv's, built on this same Debian 12 (tests/support/
levanter_env.py's `python312` finds it, as the JAX and levanter venvs do). So the base is the 3.11
base's rootfs (tests/support/base_image.py: debootstrap bookworm minbase, the python image's apt
sources, the host's CAs for the system and pip) with that interpreter where the python image has
its own, under /usr/local: bin/python3.12 with python3 and python links, pip, lib/python3.12 (the
stdlib, ensurepip's bundled pip: `python3 -m venv` gives a venv with pip, as the python image's
does), include/python3.12 (Python.h) and libpython3.12.so. Instead of Debian's python3 it gets
the Debian libraries the interpreter's extension modules link (ssl, sqlite3, lzma, ctypes...),
found with ldd here and pinned in LIBRARIES; tkinter is left without Tk, as in the slim image.

Relocation: CPython finds its prefix from where its executable is (the stdlib's os.py beside it),
so /usr/local/bin/python3.12 runs from /usr/local. Its RUNPATH still names the pyenv prefix,
which the image lacks, so the loader falls back to ld.so.cache: ldconfig runs in the rootfs and
finds libpython in /usr/local/lib, as in the python image. Text files naming the old prefix
(sysconfig's build data, python-config, pip's shebang) are rewritten to /usr/local. Like the
python image, it carries no test suite, no static libpython and no .pyc. Only pip comes from the
interpreter's site-packages (whatever else is installed there is this machine's). Before it is
committed, the rootfs proves it as uid 1000: the stdlib's C modules import, sys.prefix is
/usr/local, and `python3 -m venv` makes a venv whose pip runs.

The tag is `3.12-bookworm-<hash>` of this recipe and the interpreter's sys.version (it names the
patch release and build date): a new interpreter or recipe makes a new base.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.support.base_image import (
    CONFIG,
    HOST_CAS,
    MIRROR,
    SOURCES,
    SUITE,
    clean,
    commit_base,
    debootstrap,
    host_cas,
    run_logged,
)
from tests.support.image_registry import Registry
from tests.support.levanter_env import python312

PREFIX = Path("/usr/local")
# The Debian packages of the libraries the interpreter's extension modules and libpython link
# (`ldd lib-dynload/*.so` mapped by `dpkg -S`, tkinter's Tk/X11 left out), and the python image's
# ca-certificates, netbase and tzdata.
LIBRARIES = (
    "libbz2-1.0", "libcrypt1", "libffi8", "liblzma5", "libncursesw6", "libnsl2", "libreadline8", "libsqlite3-0",
    "libssl3", "libtinfo6", "libtirpc3", "libuuid1", "zlib1g",
)  # fmt: skip
PACKAGES = ("ca-certificates", "netbase", "tzdata", *LIBRARIES)
# What the python image removes from its /usr/local too: test suites, bytecode, static libraries.
SKIPPED_DIRS = {"test", "tests", "idle_test", "__pycache__"}
SKIPPED_SUFFIXES = (".pyc", ".a")
# The only site-packages entries that come along: pip, as in the python image.
SITE_KEEP = ("pip", "README.txt")
CONFIG_312 = {"env": [*CONFIG["env"], "PYTHON_VERSION={version}"], "cmd": "python3"}
# Proven in the rootfs as uid 1000 before the commit (see the module docstring).
PROOF = """set -e
python3 -c 'import sys, ssl, sqlite3, ctypes, lzma, bz2, zlib, readline, uuid, decimal, hashlib, curses, venv
assert sys.prefix == "/usr/local", sys.prefix
assert sys.version_info[:2] == (3, 12), sys.version'
test -f /usr/local/include/python3.12/Python.h
test "$(python -c 'import sys; print(sys.executable)')" = /usr/local/bin/python
python3 -m venv /tmp/proof-venv
/tmp/proof-venv/bin/pip --version
rm -rf /tmp/proof-venv
"""


@dataclass(frozen=True)
class Interpreter:
    prefix: Path  # sys.base_prefix: bin/, lib/, include/ of a self-contained install (pyenv's)
    version: str  # sys.version: release and build


def find_interpreter() -> Interpreter:
    """The machine's CPython 3.12 (python312: PATH's, else pyenv's), with its shared libpython."""
    found = python312()
    if found is None:
        raise RuntimeError("no Python 3.12 here (python3.12 on PATH or pyenv's 3.12)")
    probe = "import json, sys, sysconfig; print(json.dumps([sys.base_prefix, sys.version, sysconfig.get_config_var('Py_ENABLE_SHARED')]))"  # noqa: E501
    prefix, version, shared = json.loads(subprocess.run([found, "-c", probe], capture_output=True, text=True,
                                                        check=True).stdout)  # fmt: skip
    if prefix in ("/usr", "/usr/local") or not shared:
        raise RuntimeError(
            f"{found}: its prefix {prefix} is not a self-contained, --enable-shared CPython (pyenv's is)"
        )
    return Interpreter(Path(prefix), version)


def recipe_tag(interpreter: Interpreter) -> str:
    cas = {str(ca.relative_to(HOST_CAS)): ca.read_text() for ca in host_cas()}
    recipe = {"suite": SUITE, "mirror": MIRROR, "packages": PACKAGES, "sources": SOURCES, "config": CONFIG_312,
              "cas": cas, "python": interpreter.version, "skipped": sorted(SKIPPED_DIRS), "site": SITE_KEEP,
              "proof": PROOF, "v": 1}  # fmt: skip
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return f"3.12-{SUITE}-{digest[:12]}"


def wanted(relative: Path) -> bool:
    """Whether a file under the interpreter's prefix goes into the image (see SKIPPED_*, SITE_KEEP)."""
    parts = relative.parts
    if set(parts) & SKIPPED_DIRS or relative.name.endswith(SKIPPED_SUFFIXES):
        return False
    if parts[:3] == ("lib", "python3.12", "site-packages") and len(parts) > 3:
        return parts[3].startswith(SITE_KEEP)
    if parts[0] == "lib":
        return len(parts) > 1 and (parts[1] == "python3.12" or parts[1].startswith("libpython3"))
    if parts[0] == "include":
        return len(parts) > 1 and parts[1] == "python3.12"
    if parts[0] == "bin":  # the python image's: python3.12, pip3.12, python3.12-config and their links
        return relative.name in ("python3.12", "pip3.12", "python3.12-config")
    return False


def relocate(data: bytes, old: Path) -> bytes:
    """A text file's bytes with the old prefix made /usr/local; binaries (with a NUL) as they are."""
    if b"\0" in data or str(old).encode() not in data:
        return data
    return data.replace(str(old).encode(), str(PREFIX).encode())


def install_interpreter(interpreter: Interpreter, root: Path) -> list[Path]:
    """Copy the wanted part of the interpreter's prefix to `root`/usr/local; the files copied."""
    copied = []
    for path in sorted(interpreter.prefix.rglob("*")):
        relative = path.relative_to(interpreter.prefix)
        if not wanted(relative) or path.is_dir():
            continue
        target = root / PREFIX.relative_to("/") / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            target.unlink(missing_ok=True)
            target.symlink_to(os.readlink(path))
        else:
            target.write_bytes(relocate(path.read_bytes(), interpreter.prefix))
            shutil.copymode(path, target)
        copied.append(target)
    bin_dir = root / PREFIX.relative_to("/") / "bin"
    for link, to in (("python3", "python3.12"), ("python", "python3"), ("pip3", "pip3.12"), ("pip", "pip3"),
                     ("python3-config", "python3.12-config"), ("python-config", "python3-config")):  # fmt: skip
        (bin_dir / link).unlink(missing_ok=True)
        (bin_dir / link).symlink_to(to)
    return copied


def fill(interpreter: Interpreter) -> Callable[[Path, Path], None]:
    """The base's rootfs: the 3.11 base's shape, this interpreter, proven (the module docstring)."""

    def make(root: Path, log: Path) -> None:
        debootstrap(root, log, PACKAGES)
        install_interpreter(interpreter, root)
        run_logged(["chroot", str(root), "ldconfig"], log)
        env = ["/usr/bin/env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8"]
        run_logged(["chroot", "--userspec=1000:1000", str(root), *env, "/bin/sh", "-c", PROOF], log)
        clean(root, log)

    return make


def ensure_base_312(registry: Registry) -> str:
    """The Python 3.12 base's reference in `registry`, made and pushed first if the registry lacks it."""
    interpreter = find_interpreter()
    version = interpreter.version.split()[0]
    config = {"env": [line.format(version=version) for line in CONFIG_312["env"]], "cmd": CONFIG_312["cmd"]}
    return commit_base(registry, recipe_tag(interpreter), fill(interpreter), config)
