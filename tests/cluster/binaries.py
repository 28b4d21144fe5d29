"""The control plane's binaries: built from the pinned Go modules in tests/cluster/go/, cached per machine.

    python -m tests.cluster.binaries build    # `make cluster-bin`: build what is missing, print the dir
    python -m tests.cluster.binaries build --optional   # `make test`: the same, but without Go says
                                                        # so in one line and exits 0 (the tier skips)
    python -m tests.cluster.binaries path     # print the dir the tests will use (builds nothing)

Four modules, pinned by their go.sum (one module each, so that their dependency graphs do not
have to agree with each other):

    tests/cluster/go/kubernetes   k8s.io/kubernetes v1.36.3: kube-apiserver, kube-controller-manager,
                                  kube-scheduler, kubelet, kube-proxy (staging modules replaced by
                                  k8s.io/X v0.36.3)
    tests/cluster/go/etcd         go.etcd.io/etcd/server/v3 v3.6.16: etcd
    tests/cluster/go/coredns      github.com/coredns/coredns v1.14.7: coredns (kubernetes plugin)
    tests/cluster/go/containerd   github.com/containerd/containerd/v2 v2.4.2: containerd,
                                  containerd-shim-runc-v2, ctr (the real nodes' runtime)

The control plane needs the first five binaries (BINARIES); the real nodes (kubelet_node.py) the
kubelet, kube-proxy and containerd's three besides (NODE_BINARIES).

They are built into `~/.cache/speedrun-operator/cluster/<hash of the go.mod and go.sum files>/bin`
($SPEEDRUN_CLUSTER_CACHE replaces the `~/.cache/speedrun-operator/cluster` part), never into
the repository. The build uses the installed Go only (GOTOOLCHAIN=local) at `nice -n 10`.
KUBEBUILDER_ASSETS (controller-runtime envtest's convention), when set, names a directory of
binaries the user already has: each binary found there is used as it is and nothing is built for
it; those it lacks (envtest's assets have no controller-manager, scheduler or coredns) come from
the cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

GO_DIR = Path(__file__).resolve().parent / "go"


@dataclass(frozen=True)
class Target:
    binary: str
    module_dir: str  # under GO_DIR
    package: str
    tags: str = ""  # go build -tags


# containerd's Makefile builds with urfave_cli_no_docs, and the shim with no_grpc besides; no_btrfs
# because the btrfs snapshotter needs libbtrfs headers (cgo) that the test machines lack.
CONTAINERD_TAGS = "urfave_cli_no_docs no_btrfs"


TARGETS = (
    Target("etcd", "etcd", "go.etcd.io/etcd/server/v3"),
    Target("kube-apiserver", "kubernetes", "k8s.io/kubernetes/cmd/kube-apiserver"),
    Target("kube-controller-manager", "kubernetes", "k8s.io/kubernetes/cmd/kube-controller-manager"),
    Target("kube-scheduler", "kubernetes", "k8s.io/kubernetes/cmd/kube-scheduler"),
    Target("coredns", "coredns", "github.com/coredns/coredns"),
    Target("kubelet", "kubernetes", "k8s.io/kubernetes/cmd/kubelet"),
    Target("kube-proxy", "kubernetes", "k8s.io/kubernetes/cmd/kube-proxy"),
    Target("containerd", "containerd", "github.com/containerd/containerd/v2/cmd/containerd", CONTAINERD_TAGS),
    Target("containerd-shim-runc-v2", "containerd", "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
           CONTAINERD_TAGS + " no_grpc"),
    Target("ctr", "containerd", "github.com/containerd/containerd/v2/cmd/ctr", CONTAINERD_TAGS),
)  # fmt: skip
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "coredns")
NODE_BINARIES = ("kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr")


class BinariesMissing(RuntimeError):
    """What is missing, in one line (the tier's skip reason)."""


def cache_root() -> Path:
    default = Path.home() / ".cache" / "speedrun-operator" / "cluster"
    return Path(os.environ.get("SPEEDRUN_CLUSTER_CACHE") or default)


def module_hash() -> str:
    """sha256 over every go.mod and go.sum under tests/cluster/go (path and content), 16 hex digits."""
    digest = hashlib.sha256()
    for path in sorted(GO_DIR.glob("*/go.[ms][ou][dm]")):
        digest.update(str(path.relative_to(GO_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cache_bin_dir() -> Path:
    return cache_root() / module_hash() / "bin"


def _assets_dir() -> Path | None:
    value = os.environ.get("KUBEBUILDER_ASSETS")
    return Path(value) if value else None


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def locate(names: tuple[str, ...] = BINARIES) -> dict[str, Path]:
    """binary name -> path, from KUBEBUILDER_ASSETS first, else the cache; BinariesMissing otherwise."""
    found: dict[str, Path] = {}
    assets, cached = _assets_dir(), cache_bin_dir()
    for name in names:
        for directory in (assets, cached):
            if directory is not None and _executable(directory / name):
                found[name] = directory / name
                break
    missing = [name for name in names if name not in found]
    if missing:
        where = f"KUBEBUILDER_ASSETS={assets} nor {cached}" if assets else str(cached)
        raise BinariesMissing(f"no {', '.join(missing)} in {where} (run `make cluster-bin`, which needs Go)")
    return found


def go_missing() -> str | None:
    """Why nothing can be built here, or None."""
    if shutil.which("go"):
        return None
    return "no `go` on PATH to build the control plane and nodes (Go >= 1.26.6: containerd 2.4's go.mod)"


def _required_version(module_dir: str, module: str) -> str:
    go_mod = (GO_DIR / module_dir / "go.mod").read_text()
    return next(line.split()[1] for line in go_mod.splitlines() if line.strip().startswith(f"{module} v"))


def ldflags(target: Target) -> str:
    """-s -w, and the release version each project's own build stamps: Kubernetes'
    hack/lib/version.sh (without it the binaries say v0.0.0-master, and helm refuses charts with a
    kubeVersion; the node's VERSION column is the kubelet's), containerd's Makefile (the node's
    CONTAINER-RUNTIME column is containerd://<version>)."""
    flags = "-s -w"
    if target.module_dir == "containerd":
        version = _required_version("containerd", "github.com/containerd/containerd/v2")
        return f"{flags} -X github.com/containerd/containerd/v2/version.Version={version}"
    if target.module_dir != "kubernetes":
        return flags
    version = _required_version("kubernetes", "k8s.io/kubernetes")
    major, minor = version.lstrip("v").split(".")[:2]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += (f" -X {package}.gitVersion={version} -X {package}.gitMajor={major} -X {package}.gitMinor={minor}"
                  f" -X {package}.gitTreeState=clean")  # fmt: skip
    return flags


def build() -> Path:
    """Build every binary that neither KUBEBUILDER_ASSETS nor the cache has; returns the cache dir."""
    assets, out = _assets_dir(), cache_bin_dir()
    todo = [t for t in TARGETS if not (assets and _executable(assets / t.binary)) and not _executable(out / t.binary)]
    if not todo:
        return out
    reason = go_missing()
    if reason:
        raise BinariesMissing(reason)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false -mod=readonly"}
    for target in todo:
        staging = out / f".{target.binary}.{os.getpid()}"
        started = time.monotonic()
        tags = [f"-tags={target.tags}"] if target.tags else []
        cmd = ["nice", "-n", "10", "go", "build", "-trimpath", *tags, f"-ldflags={ldflags(target)}", "-o",
               str(staging), target.package]  # fmt: skip
        print(f"cluster-bin: building {target.binary} ({target.package})", file=sys.stderr)
        subprocess.run(cmd, cwd=GO_DIR / target.module_dir, env=env, check=True)
        os.replace(staging, out / target.binary)  # atomic: a concurrent reader sees all or nothing
        print(f"cluster-bin: {target.binary} built in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return out


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "path"
    optional = "--optional" in argv[1:]
    if command not in ("build", "path") or set(argv[1:]) - {"--optional"}:
        print("usage: python -m tests.cluster.binaries [build [--optional]|path]", file=sys.stderr)
        return 2
    if command == "build" and optional and go_missing():
        try:
            locate()
        except BinariesMissing:
            print(f"cluster-bin: {go_missing()}; the control-plane tier will skip", file=sys.stderr)
            return 0
    try:
        if command == "build":
            build()
        binaries = locate()
    except BinariesMissing as err:
        print(f"cluster-bin: {err}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as err:
        command = " ".join(map(str, err.cmd[:6]))
        print(f"cluster-bin: {command} ... failed with exit code {err.returncode}", file=sys.stderr)
        return 1
    print(os.path.dirname(binaries["kube-apiserver"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
