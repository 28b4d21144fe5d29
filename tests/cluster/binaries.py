"""The control plane's binaries: built from the pinned Go modules in tests/cluster/go/, cached per machine.

    python -m tests.cluster.binaries build    # `make cluster-bin`: build what is missing, print the dir
    python -m tests.cluster.binaries build --optional   # `make test`: the same, but without Go says
                                                        # so in one line and exits 0 (the tier skips)
    python -m tests.cluster.binaries path     # print the dir the tests will use (builds nothing)

Five modules, pinned by their go.sum (one module each, so that their dependency graphs do not
have to agree with each other):

    tests/cluster/go/kubernetes   k8s.io/kubernetes v1.36.3: kube-apiserver, kube-controller-manager,
                                  kube-scheduler, kubelet, kube-proxy (staging modules replaced by
                                  k8s.io/X v0.36.3)
    tests/cluster/go/etcd         go.etcd.io/etcd/server/v3 v3.6.16: etcd
    tests/cluster/go/coredns      github.com/coredns/coredns v1.14.7: coredns (kubernetes plugin)
    tests/cluster/go/containerd   github.com/containerd/containerd/v2 v2.4.2: containerd,
                                  containerd-shim-runc-v2, ctr (the real nodes' runtime)
    tests/cluster/go/kueue        sigs.k8s.io/kueue v0.17.0: kueue (the manager: queueing, admission,
                                  topology-aware scheduling), and its CRDs and webhook manifests
                                  copied from the module (config/) beside the binary

The control plane needs the first five binaries (BINARIES); the real nodes (kubelet_node.py) the
kubelet, kube-proxy and containerd's three besides (NODE_BINARIES); the Kueue tests (kueue.py)
kueue (KUEUE_BINARIES) and its config (`kueue_config_dir`).

Each module's binaries are built into `~/.cache/speedrun-operator/cluster/<module>-<hash of its
go.mod and go.sum>/bin` ($SPEEDRUN_CLUSTER_CACHE replaces the `~/.cache/speedrun-operator/cluster`
part), never into the repository: a change to one module's pins rebuilds that module only. The
build uses the installed Go only (GOTOOLCHAIN=local) at `nice -n 10`.
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
    Target("kueue", "kueue", "sigs.k8s.io/kueue/cmd/kueue"),
)  # fmt: skip
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "coredns")
NODE_BINARIES = ("kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr")
KUEUE_BINARIES = ("kueue",)
KUEUE_MODULE = "sigs.k8s.io/kueue"
# What the Kueue tests apply, copied from the module at build time (never committed here): the
# CRDs, and the webhook configurations (which paths serve which kinds).
KUEUE_CONFIG = ("config/components/crd/bases", "config/components/webhook/manifests.yaml")


class BinariesMissing(RuntimeError):
    """What is missing, in one line (the tier's skip reason)."""


def cache_root() -> Path:
    default = Path.home() / ".cache" / "speedrun-operator" / "cluster"
    return Path(os.environ.get("SPEEDRUN_CLUSTER_CACHE") or default)


def module_hash(module_dir: str) -> str:
    """sha256 over the module's go.mod and go.sum (name and content), 16 hex digits."""
    digest = hashlib.sha256()
    for path in sorted((GO_DIR / module_dir).glob("go.[ms][ou][dm]")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cache_dir(module_dir: str) -> Path:
    return cache_root() / f"{module_dir}-{module_hash(module_dir)}"


def cache_bin_dir(binary: str) -> Path:
    """Where the cache keeps `binary` (the dir of its module's pins)."""
    return cache_dir(TARGET_OF[binary].module_dir) / "bin"


TARGET_OF = {target.binary: target for target in TARGETS}


def _assets_dir() -> Path | None:
    value = os.environ.get("KUBEBUILDER_ASSETS")
    return Path(value) if value else None


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def cached(binary: str) -> bool:
    return _executable(cache_bin_dir(binary) / binary)


def locate(names: tuple[str, ...] = BINARIES) -> dict[str, Path]:
    """binary name -> path, from KUBEBUILDER_ASSETS first, else the cache; BinariesMissing otherwise."""
    found: dict[str, Path] = {}
    assets = _assets_dir()
    for name in names:
        for directory in (assets, cache_bin_dir(name)):
            if directory is not None and _executable(directory / name):
                found[name] = directory / name
                break
    missing = [name for name in names if name not in found]
    if missing:
        cached = ", ".join(sorted({str(cache_bin_dir(name)) for name in missing}))
        where = f"KUBEBUILDER_ASSETS={assets} nor {cached}" if assets else cached
        raise BinariesMissing(f"no {', '.join(missing)} in {where} (run `make cluster-bin`, which needs Go)")
    return found


def kueue_config_dir() -> Path:
    """The Kueue module's config/ (KUEUE_CONFIG) the build copied beside its binary."""
    config = cache_dir("kueue") / "config"
    if not (config / "components" / "crd" / "bases").is_dir():
        raise BinariesMissing(f"no Kueue config in {config} (run `make cluster-bin`, which needs Go)")
    return config


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
    assets = _assets_dir()
    todo = [t for t in TARGETS if not (assets and _executable(assets / t.binary)) and not cached(t.binary)]
    if not todo:
        return cache_bin_dir("kube-apiserver")
    reason = go_missing()
    if reason:
        raise BinariesMissing(reason)
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false -mod=readonly"}
    for target in todo:
        out = cache_bin_dir(target.binary)
        out.mkdir(parents=True, exist_ok=True)
        staging = out / f".{target.binary}.{os.getpid()}"
        started = time.monotonic()
        tags = [f"-tags={target.tags}"] if target.tags else []
        cmd = ["nice", "-n", "10", "go", "build", "-trimpath", *tags, f"-ldflags={ldflags(target)}", "-o",
               str(staging), target.package]  # fmt: skip
        print(f"cluster-bin: building {target.binary} ({target.package})", file=sys.stderr)
        subprocess.run(cmd, cwd=GO_DIR / target.module_dir, env=env, check=True)
        if target.binary == "kueue":
            _copy_kueue_config(env)  # before the binary: kueue present means its config is too
        os.replace(staging, out / target.binary)  # atomic: a concurrent reader sees all or nothing
        print(f"cluster-bin: {target.binary} built in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return cache_bin_dir("kube-apiserver")


def _copy_kueue_config(env: dict[str, str]) -> None:
    """KUEUE_CONFIG from the module's source in the module cache into `<kueue cache>/config`."""
    listed = subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", KUEUE_MODULE], cwd=GO_DIR / "kueue", env=env,
                            check=True, capture_output=True, text=True)  # fmt: skip
    source, config = Path(listed.stdout.strip()), cache_dir("kueue") / "config"
    staging = config.with_name(f".config.{os.getpid()}")
    for relative in KUEUE_CONFIG:
        if (source / relative).is_dir():
            shutil.copytree(source / relative, staging / relative.removeprefix("config/"))
        else:
            (staging / relative.removeprefix("config/")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / relative, staging / relative.removeprefix("config/"))
    for path in staging.rglob("*"):  # the module cache's files are read-only
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(config, ignore_errors=True)
    os.replace(staging, config)


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
            locate(tuple(TARGET_OF))
        except BinariesMissing as err:  # e.g. KUBEBUILDER_ASSETS without Kueue: only those tests skip
            print(f"cluster-bin: {go_missing()}; {err}: the tests that need them will skip", file=sys.stderr)
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
