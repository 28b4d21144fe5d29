"""The TPU image's Python 3.12 base without building it (tests/support/base_image_312.py).

What of the interpreter's prefix goes into /usr/local (the stdlib, Python.h, libpython, pip; no
test suites, bytecode, static library, other site-packages or the machine's own .pth files), the
prefix rewritten in text files and left alone in binaries, the python3/python/pip links, and a
tag that changes with the interpreter and not from run to run. The build itself (debootstrap,
buildah, and its proof as uid 1000) runs in `python -m tests.support.images build --images
trainer-tpu`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import base_image, base_image_312
from tests.support.base_image_312 import Interpreter, install_interpreter, recipe_tag, relocate, wanted

OLD = "/root/.pyenv/versions/3.12.9"


@pytest.mark.parametrize(
    ("path", "kept"),
    [
        ("bin/python3.12", True),
        ("bin/pip3.12", True),
        ("bin/python3.12-config", True),
        ("bin/idle3.12", False),
        ("bin/2to3-3.12", False),
        ("lib/libpython3.12.so.1.0", True),
        ("lib/libpython3.so", True),
        ("lib/pkgconfig/python-3.12.pc", False),
        ("lib/python3.12/os.py", True),
        ("lib/python3.12/pydoc_data/topics.py", True),  # builtin://pydoc-topics reads it
        ("lib/python3.12/ensurepip/_bundled/pip-23.2.1-py3-none-any.whl", True),  # venv's pip
        ("lib/python3.12/lib-dynload/_ssl.cpython-312-x86_64-linux-gnu.so", True),
        ("lib/python3.12/config-3.12-x86_64-linux-gnu/Makefile", True),
        ("lib/python3.12/config-3.12-x86_64-linux-gnu/libpython3.12.a", False),
        ("lib/python3.12/test/test_os.py", False),
        ("lib/python3.12/idlelib/idle_test/test_run.py", False),
        ("lib/python3.12/__pycache__/os.cpython-312.pyc", False),
        ("lib/python3.12/site-packages/pip/__init__.py", True),
        ("lib/python3.12/site-packages/pip-23.2.1.dist-info/RECORD", True),
        ("lib/python3.12/site-packages/_machine_ca.pth", False),
        ("lib/python3.12/site-packages/numpy/__init__.py", False),
        ("include/python3.12/Python.h", True),
        ("share/man/man1/python3.12.1", False),
    ],
)
def test_what_of_the_prefix_goes_into_the_image(path: str, kept: bool) -> None:
    assert wanted(Path(path)) is kept


def test_the_prefix_is_rewritten_in_text_and_left_in_binaries() -> None:
    script = f"#!{OLD}/bin/python3.12\nimport pip\n".encode()
    assert relocate(script, Path(OLD)) == b"#!/usr/local/bin/python3.12\nimport pip\n"
    sysconfig = f"build_time_vars = {{'prefix': '{OLD}', 'LIBDIR': '{OLD}/lib'}}\n".encode()
    assert OLD.encode() not in relocate(sysconfig, Path(OLD))
    elf = b"\x7fELF\0\0" + f"{OLD}/lib".encode() + b"\0"
    assert relocate(elf, Path(OLD)) == elf, "a binary's strings keep their length: the loader falls back to ldconfig"


def fake_prefix(root: Path) -> Path:
    """A pyenv-like prefix whose text files name it, as a real one's do."""
    prefix = root / OLD.lstrip("/")
    files = {
        "bin/python3.12": b"\x7fELF\0binary",
        "bin/pip3.12": f"#!{prefix}/bin/python3.12\n".encode(),
        "bin/python3.12-config": f'#!/bin/sh\nprefix="{prefix}"\n'.encode(),
        "bin/idle3.12": b"#!python\n",
        "lib/libpython3.12.so.1.0": b"\x7fELF\0lib",
        "lib/python3.12/os.py": b"# os\n",
        "lib/python3.12/site-packages/pip/__init__.py": b"",
        "lib/python3.12/site-packages/other.pth": b"import other\n",
        "include/python3.12/Python.h": b"/* Python.h */\n",
    }
    for name, data in files.items():
        (prefix / name).parent.mkdir(parents=True, exist_ok=True)
        (prefix / name).write_bytes(data)
    (prefix / "bin/python3.12").chmod(0o755)
    (prefix / "lib/libpython3.12.so").symlink_to("libpython3.12.so.1.0")
    return prefix


def test_the_interpreter_lands_in_usr_local_as_the_python_image_has_it(tmp_path: Path) -> None:
    prefix = fake_prefix(tmp_path / "host")
    root = tmp_path / "rootfs"
    copied = install_interpreter(Interpreter(prefix, "3.12.9 (main)"), root)
    local = root / "usr/local"
    assert {str(p.relative_to(local)) for p in copied} == {
        "bin/python3.12", "bin/pip3.12", "bin/python3.12-config", "lib/libpython3.12.so.1.0",
        "lib/libpython3.12.so", "lib/python3.12/os.py", "lib/python3.12/site-packages/pip/__init__.py",
        "include/python3.12/Python.h",
    }  # fmt: skip
    assert os.access(local / "bin/python3.12", os.X_OK)
    assert os.readlink(local / "lib/libpython3.12.so") == "libpython3.12.so.1.0"
    links = {name: os.readlink(local / "bin" / name) for name in ("python3", "python", "pip3", "pip", "python3-config")}
    assert links == {"python3": "python3.12", "python": "python3", "pip3": "pip3.12", "pip": "pip3",
                     "python3-config": "python3.12-config"}  # fmt: skip
    assert (local / "bin/pip3.12").read_text() == "#!/usr/local/bin/python3.12\n"
    assert (local / "bin/python3.12-config").read_text() == '#!/bin/sh\nprefix="/usr/local"\n'


def test_the_tag_names_the_interpreter_and_is_stable() -> None:
    a = recipe_tag(Interpreter(Path(OLD), "3.12.9 (main, Jan 1 2026)"))
    assert a == recipe_tag(Interpreter(Path("/elsewhere"), "3.12.9 (main, Jan 1 2026)"))
    assert a != recipe_tag(Interpreter(Path(OLD), "3.12.10 (main, Feb 1 2026)"))
    assert a.startswith("3.12-bookworm-") and a != base_image.recipe_tag()


def test_this_machines_interpreter_is_a_self_contained_3_12() -> None:
    """The interpreter the base copies (the one the JAX venv uses): its own prefix, shared libpython."""
    try:
        found = base_image_312.find_interpreter()
    except RuntimeError as err:
        pytest.skip(str(err))
    assert found.version.startswith("3.12.") and str(found.prefix) not in ("/usr", "/usr/local")
    assert (found.prefix / "include/python3.12/Python.h").is_file()
    assert any((found.prefix / "lib").glob("libpython3.12.so*"))
