"""The accelerator table: peak dense bf16 FLOP/s per device and how Kubernetes asks for one.

`speedrun plan` and the results use `device_flops`; the operator uses `resource` and
`node_selector`. Peaks are vendor dense (no sparsity) bf16 figures, the same numbers Marin's
speedrun and nanochat use, so MFU and hardware FLOPs compare across leaderboards.

The `cpu` entry is a *nominal* figure, 1e11 FLOP/s (100 GFLOP/s) per process: roughly what one
modern x86 core pair does on fp32 matmul. It exists so CPU-tiny runs report finite MFU and
hardware FLOPs; `bench/` measures the real peak of your machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Accelerator:
    name: str
    display: str
    device_flops: float  # peak dense bf16 FLOP/s per device
    resource: str | None  # extended resource requested per device, None for plain CPU
    node_selector: dict[str, str] = field(default_factory=dict)
    kind: str = "gpu"  # gpu | tpu | cpu


GKE_TPU = "cloud.google.com/gke-tpu-accelerator"
GKE_GPU = "cloud.google.com/gke-accelerator"
NVIDIA_GPU = "nvidia.com/gpu"
GOOGLE_TPU = "google.com/tpu"

CPU_NOMINAL_FLOPS = 1.0e11

ACCELERATORS: dict[str, Accelerator] = {
    a.name: a
    for a in [
        Accelerator("cpu", "CPU (nominal)", CPU_NOMINAL_FLOPS, None, kind="cpu"),
        Accelerator("nvidia-h100-80gb", "H100-80G", 989.0e12, NVIDIA_GPU, {GKE_GPU: "nvidia-h100-80gb"}),
        Accelerator("nvidia-h200", "H200-141G", 989.0e12, NVIDIA_GPU, {GKE_GPU: "nvidia-h200-141gb"}),
        Accelerator("nvidia-a100-80gb", "A100-80G", 312.0e12, NVIDIA_GPU, {GKE_GPU: "nvidia-a100-80gb"}),
        Accelerator("nvidia-a100-40gb", "A100-40G", 312.0e12, NVIDIA_GPU, {GKE_GPU: "nvidia-tesla-a100"}),
        Accelerator("nvidia-l4", "L4", 121.0e12, NVIDIA_GPU, {GKE_GPU: "nvidia-l4"}),
        Accelerator("rtx-4090", "RTX 4090", 165.2e12, NVIDIA_GPU),
        Accelerator("tpu-v4", "TPU v4", 275.0e12, GOOGLE_TPU, {GKE_TPU: "tpu-v4-podslice"}, "tpu"),
        Accelerator("tpu-v5e", "TPU v5e", 197.0e12, GOOGLE_TPU, {GKE_TPU: "tpu-v5-lite-podslice"}, "tpu"),
        Accelerator("tpu-v5p", "TPU v5p", 459.0e12, GOOGLE_TPU, {GKE_TPU: "tpu-v5p-slice"}, "tpu"),
        Accelerator("tpu-v6e", "TPU v6e", 918.0e12, GOOGLE_TPU, {GKE_TPU: "tpu-v6e-slice"}, "tpu"),
    ]
}


def known_accelerators() -> str:
    """Comma-separated names, for error messages."""
    return ", ".join(ACCELERATORS)


def lookup(name: str) -> Accelerator | None:
    return ACCELERATORS.get(name)
