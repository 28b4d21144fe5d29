"""The image tests' support without building anything: the input hash, the registry cache, the
`make image` line the builds run (tests/support/images.py, image_registry.py).

An image's tag is a hash of what goes into it, so it must change with the Dockerfile, the image's
lock, the package metadata and the source, and with nothing else (bytecode, the other image's
lock). The registry must find, from another process on another port, a tag pushed earlier: that
is what makes a second run build nothing. tests/e2e/test_images.py builds the images for real.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.support import images
from tests.support.helpers import ROOT
from tests.support.image_registry import Registry, running_registry


def test_the_hashed_inputs_are_what_the_dockerfile_copies() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    sources = set()
    for args in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M):
        sources.update(source.rstrip("/") for source in args.split()[:-1])
    locks = {s for s in sources if s.startswith("requirements/")}
    assert sources - locks == set(images.CONTEXT) - {"Dockerfile", ".dockerignore"}
    assert set(images.IMAGES) < set(images.BUILDABLE) == set(images.LOCKS) == set(images.BASE_ARG)
    for name in images.BUILDABLE:
        assert images.LOCKS[name] == f"requirements/{name}.txt" and images.LOCKS[name] in locks
        assert set(images.BASE_ARG.values()) == set(images.ENSURE_BASE) == set(images.LOCK_FILE)


def test_each_image_is_built_on_the_base_its_target_names() -> None:
    """The Dockerfile's stage for each image starts FROM the ARG the build gives the base as."""
    froms = dict(re.findall(r"^FROM (\S+) AS (\S+)$", (ROOT / "Dockerfile").read_text(), re.M))
    targets = {target: base for base, target in froms.items()}
    for name, arg in images.BASE_ARG.items():
        assert targets[name] == "${" + arg + "}" or (name == "trainer" and targets[name] == "${BASE}"), name


def fake_tree(root: Path) -> Path:
    for entry in (*images.CONTEXT, *images.LOCKS.values()):
        path = root / entry
        if (ROOT / entry).is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{entry}\n")
        else:
            (path / "pkg").mkdir(parents=True)
            (path / "pkg" / "mod.py").write_text("x = 1\n")
    return root


def test_the_tag_changes_with_what_goes_into_the_image_only(tmp_path: Path) -> None:
    root = fake_tree(tmp_path)
    tag = {name: images.input_tag(name, "sha256:base", root) for name in images.BUILDABLE}
    assert len(set(tag.values())) == len(tag)
    assert images.input_tag("trainer", "sha256:other", root) != tag["trainer"]
    (root / "api/pkg/__pycache__").mkdir()
    (root / "api/pkg/__pycache__/mod.cpython-311.pyc").write_bytes(b"\0")
    (root / "operator/pkg/mod.pyc").write_bytes(b"\0")
    assert {name: images.input_tag(name, "sha256:base", root) for name in images.BUILDABLE} == tag
    (root / "requirements/trainer.txt").write_text("torch==9\n")
    assert images.input_tag("operator", "sha256:base", root) == tag["operator"]
    assert images.input_tag("trainer-tpu", "sha256:base", root) == tag["trainer-tpu"]
    assert images.input_tag("trainer", "sha256:base", root) != tag["trainer"]
    (root / "requirements/trainer-tpu.txt").write_text("optax==9\n")
    assert images.input_tag("trainer-tpu", "sha256:base", root) != tag["trainer-tpu"]
    assert images.input_tag("operator", "sha256:base", root) == tag["operator"]
    for changed in ("Dockerfile", "README.md", "trainer/pkg/mod.py"):
        before = images.input_tag("operator", "sha256:base", root)
        (root / changed).write_text((root / changed).read_text() + "# changed\n")
        assert images.input_tag("operator", "sha256:base", root) != before, changed
    (root / "trainer/pkg/new.py").write_text("")
    assert images.input_tag("operator", "sha256:base", root) != before


@pytest.mark.parametrize(
    ("name", "base", "arg"),
    [("trainer", "base/python:3.11-x", "PYTHON_IMAGE"), ("trainer-tpu", "base/python:3.12-x", "TPU_PYTHON_IMAGE")],
)
def test_the_builds_run_make_image_as_a_user_would(name: str, base: str, arg: str) -> None:
    """`make image` for one image, its base given as the ARG its stage starts FROM (the TPU image's
    TPU_PYTHON_IMAGE: PYTHON_IMAGE would leave it on Docker Hub's python:3.12)."""
    registry = Registry(host="127.0.0.1:5999", storage=Path("/nonexistent"))
    base = f"127.0.0.1:5999/{base}"
    argv = images.make_image_argv(registry, name, "abc123", base)
    assert argv[:3] == ["nice", "-n", "10"] and argv[3:5] == ["make", "image"]
    # --no-print-directory: under `make test` this make is a sub-make and would say where it runs.
    proc = subprocess.run([argv[3], "-n", "--no-print-directory", *argv[4:]], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ref = f"127.0.0.1:5999/speedrun/{name}:abc123"
    assert proc.stdout.splitlines()[:2] == [
        f"buildah build --layers --tls-verify=false --build-arg {arg}={base} --target {name} -t {ref} .",
        f"buildah push --tls-verify=false {ref}",
    ]


def test_the_build_command_takes_the_tpu_image_only_when_asked() -> None:
    """`make test` builds the operator and trainer images; the TPU image is built when named."""
    parse = images.build_parser().parse_args
    assert parse(["build"]).images == ["operator", "trainer"]
    assert parse(["build", "--images", "trainer-tpu"]).images == ["trainer-tpu"]
    with pytest.raises(SystemExit):
        parse(["build", "--images", "trainer-gpu"])


def push_tiny_image(registry: Registry, repository: str, tag: str) -> tuple[str, int]:
    """An OCI image of one empty layer, pushed over the registry's HTTP API: (its manifest digest,
    the bytes of its config and layer)."""

    def blob(data: bytes) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        start = urllib.request.Request(f"http://{registry.host}/v2/{repository}/blobs/uploads/", method="POST")
        with urllib.request.urlopen(start, timeout=10) as resp:
            location = resp.headers["Location"]
        sep = "&" if "?" in location else "?"
        url = location if location.startswith("http") else f"http://{registry.host}{location}"
        put = urllib.request.Request(f"{url}{sep}digest={digest}", data=data, method="PUT",
                                     headers={"Content-Type": "application/octet-stream"})  # fmt: skip
        urllib.request.urlopen(put, timeout=10).close()
        return {"digest": digest, "size": len(data)}

    config = blob(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode())
    layer = blob(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00")  # empty gzip
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    }).encode()  # fmt: skip
    oci = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    put = urllib.request.Request(f"http://{registry.host}/v2/{repository}/manifests/{tag}", data=manifest,
                                 method="PUT", headers=oci)  # fmt: skip
    urllib.request.urlopen(put, timeout=10).close()
    sizes = [int(str(part["size"])) for part in (config, layer)]
    return "sha256:" + hashlib.sha256(manifest).hexdigest(), sum(sizes)


@pytest.mark.skipif(shutil.which("docker-registry") is None, reason="no docker-registry (apt: docker-registry)")
def test_a_later_registry_on_another_port_finds_what_an_earlier_one_pushed(tmp_path: Path) -> None:
    storage = tmp_path / "registry"
    with running_registry(storage) as first:
        assert first.digest("speedrun/operator", "t1") is None
        digest, size = push_tiny_image(first, "speedrun/operator", "t1")
        assert first.digest("speedrun/operator", "t1") == digest
    assert first.process is not None and first.process.poll() is not None, "stopped"
    with running_registry(storage) as second:
        assert second.digest("speedrun/operator", "t1") == digest
        assert second.digest("speedrun/operator", "t2") is None
        assert second.pull_size("speedrun/operator", "t1") == size


def test_without_python_3_12_only_the_tpu_image_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """`build --optional --images trainer-tpu` on a machine with no CPython 3.12 says why in one
    line (and exits 0) instead of failing mid-build; the other images do not need one."""
    from tests.support import base_image_312

    monkeypatch.setattr(base_image_312, "python312", lambda: None)
    base = images.missing_tools(("operator", "trainer"))
    tpu = images.missing_tools(("trainer", "trainer-tpu"))
    if base is not None:
        pytest.skip(f"images cannot be built here at all: {base}")
    assert tpu == "the TPU image's base: no Python 3.12 here (python3.12 on PATH or pyenv's 3.12)"
