"""The NCCL transport the trainer predicts and reports (train/nccl_transport.py), on fake sysfs
trees and environments: no GPU, no NCCL."""

from __future__ import annotations

from pathlib import Path

import pytest

from speedrun_trainer.train.nccl_transport import Transport, predict, report, spans_nodes

MULTI_NODE = {"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}


def host(
    root: Path,
    interfaces: tuple[str, ...] = ("lo", "docker0", "eth0"),
    ib: dict[str, tuple[str, str]] | None = None,
    plugin_dir: str | None = None,
) -> Path:
    """A fake filesystem: /sys/class/net/<if>, /sys/class/infiniband/<dev>/ports/1/{state,link_layer}."""
    for name in interfaces:
        (root / "sys/class/net" / name).mkdir(parents=True)
    for dev, (state, layer) in (ib or {}).items():
        port = root / "sys/class/infiniband" / dev / "ports" / "1"
        port.mkdir(parents=True)
        (port / "state").write_text(f"{state}\n")
        (port / "link_layer").write_text(f"{layer}\n")
    if plugin_dir is not None:
        (root / plugin_dir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (root / plugin_dir.lstrip("/") / "libnccl-net.so").write_bytes(b"")
    return root


ACTIVE_IB = {"mlx5_0": ("4: ACTIVE", "InfiniBand"), "mlx5_1": ("4: ACTIVE", "InfiniBand")}


@pytest.mark.parametrize(
    ("env", "fs", "want"),
    [
        ({}, {}, Transport("sockets", "eth0")),  # the pod network: loopback and docker skipped
        ({}, {"interfaces": ("lo", "ens5", "ib0")}, Transport("sockets", "ib0")),  # NCCL prefers ib*
        ({"NCCL_SOCKET_IFNAME": "enp0s3"}, {}, Transport("sockets", "enp0s3")),
        ({}, {"ib": ACTIVE_IB}, Transport("IB", "mlx5_0, mlx5_1")),
        ({}, {"ib": {"mlx5_0": ("4: ACTIVE", "Ethernet")}}, Transport("RoCE", "mlx5_0")),
        ({}, {"ib": {"mlx5_0": ("1: DOWN", "InfiniBand")}}, Transport("sockets", "eth0")),  # no active port
        ({"NCCL_IB_DISABLE": "1"}, {"ib": ACTIVE_IB}, Transport("sockets", "eth0")),
        ({"NCCL_IB_HCA": "mlx5_1"}, {"ib": ACTIVE_IB}, Transport("IB", "mlx5_1")),
        ({"NCCL_IB_HCA": "^mlx5_0"}, {"ib": ACTIVE_IB}, Transport("IB", "mlx5_1")),
        ({"NCCL_IB_HCA": "=mlx5"}, {"ib": ACTIVE_IB}, Transport("sockets", "eth0")),  # exact: no such device
        ({"NCCL_NET": "Socket"}, {"ib": ACTIVE_IB}, Transport("sockets", "eth0")),
        ({}, {"ib": ACTIVE_IB, "plugin_dir": "/usr/local/gib/lib64"},
         Transport("plugin", "/usr/local/gib/lib64/libnccl-net.so")),  # GKE's gIB: the plugin first
        ({"LD_LIBRARY_PATH": "/o/lib"}, {"plugin_dir": "/o/lib"}, Transport("plugin", "/o/lib/libnccl-net.so")),
        ({"NCCL_NET_PLUGIN": "aws-ofi"}, {}, Transport("plugin", "libnccl-net-aws-ofi.so")),
        ({"NCCL_NET_PLUGIN": "none"}, {"plugin_dir": "/usr/lib"}, Transport("sockets", "eth0")),
        ({"NCCL_NET": "IB"}, {"ib": ACTIVE_IB, "plugin_dir": "/usr/lib"}, Transport("IB", "mlx5_0, mlx5_1")),
        ({"NCCL_NET": "AWS Libfabric"}, {}, Transport("plugin", "'AWS Libfabric'")),
    ],
)  # fmt: skip
def test_predicts_what_nccl_picks(env: dict[str, str], fs: dict, want: Transport, tmp_path: Path) -> None:
    assert predict(env, host(tmp_path, **fs)) == want


def test_spans_nodes_reads_torchruns_sizes() -> None:
    assert spans_nodes(MULTI_NODE)
    assert not spans_nodes({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8"})
    assert not spans_nodes({})  # one process, started by hand
    assert not spans_nodes({**MULTI_NODE, "MASTER_ADDR": "127.0.0.1"})  # speedrun run's nodes: one machine
    assert spans_nodes({**MULTI_NODE, "MASTER_ADDR": "10.0.3.7"})


def test_logs_the_transport_and_warns_on_sockets_of_a_multi_node_gpu_run(tmp_path: Path) -> None:
    lines: list[str] = []
    got = report("nccl", MULTI_NODE, host(tmp_path), log=lines.append)
    assert got == Transport("sockets", "eth0")
    assert lines[0] == "NCCL transport: sockets over eth0"
    assert len(lines) == 2 and lines[1].startswith("warning: ")
    for what in ("resources.hostNetwork", "resources.extraResources", "spec.env", "gradReduceDtype"):
        assert what in lines[1]


def test_rdma_is_logged_without_a_warning(tmp_path: Path) -> None:
    lines: list[str] = []
    report("nccl", MULTI_NODE, host(tmp_path, ib=ACTIVE_IB), log=lines.append)
    assert lines == ["NCCL transport: IB (mlx5_0, mlx5_1)"]


@pytest.mark.parametrize(
    ("backend", "env"), [("gloo", MULTI_NODE), ("nccl", {"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8"})]
)
def test_silent_where_nccl_crosses_no_node(backend: str, env: dict[str, str], tmp_path: Path) -> None:
    lines: list[str] = []
    assert report(backend, env, host(tmp_path), log=lines.append) is None
    assert lines == []


def test_the_trainers_distributed_setup_reports_after_nccl_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from speedrun_trainer.train import runtime

    calls: list[object] = []
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runtime.torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(runtime.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime.dist, "init_process_group", lambda backend, **kw: calls.append(backend))
    monkeypatch.setattr(runtime.nccl_transport, "report", lambda backend, **kw: calls.append(("report", backend)))
    for name, value in {**MULTI_NODE, "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    assert runtime.setup_distributed().world_size == 16
    assert calls == ["nccl", ("report", "nccl")]
