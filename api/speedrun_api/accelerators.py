"""The accelerator table: peak dense bf16 FLOP/s, memory per device, how Kubernetes asks for one.

`speedrun plan` and the results use `device_flops`; the plan's memory check (memory.py) uses
`device_memory`; the operator uses `resource` and (TPUs) `node_selector`; a GPU's node labels
depend on the cloud (accelerator_labels.py). Peaks are vendor dense (no sparsity) bf16 figures,
the same numbers Marin's speedrun and nanochat use, so MFU and hardware FLOPs compare across
leaderboards.

The `cpu` entry is a *nominal* figure, 1e11 FLOP/s (100 GFLOP/s) per process: roughly what one
modern x86 core pair does on fp32 matmul. It exists so CPU-tiny runs report finite MFU and
hardware FLOPs; `bench/` measures the real peak of your machine. It has no device memory: a CPU
process shares the host's, which the plan does not judge.

Memory is the vendor's figure per device, in bytes: NVIDIA's "80GB" H100 and A100, "141GB" H200,
"40GB" A100, "24GB" L4 and RTX 4090 are decimal gigabytes as the data sheets print them (the
usable `torch.cuda.mem_get_info` total is a little lower, which the plan's margin covers); Google
gives TPU HBM in GiB (v4 32, v5e 16, v5p 95, v6e 32 per chip).

TPU figures are per chip, bf16, from Google's Cloud TPU pages (checked 2026-12): v4 275 TFLOP/s
and 32 GiB (https://cloud.google.com/tpu/docs/v4), v5e 197 and 16 (.../v5e), v5p 459 and 95
(.../v5p), v6e 918 and 32 (.../v6e). A TPU's `resource` (google.com/tpu) counts the chips of one
host; chips per host and the topology's dimensionality are tpu.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Accelerator:
    name: str
    display: str
    device_flops: float  # peak dense bf16 FLOP/s per device
    device_memory: int | None  # bytes of accelerator memory per device; None for plain CPU
    resource: str | None  # extended resource requested per device, None for plain CPU
    # GKE's TPU labels (TPUs exist only there); a GPU's node labels depend on the cluster's
    # environment: accelerator_labels.py.
    node_selector: dict[str, str] = field(default_factory=dict)
    kind: str = "gpu"  # gpu | tpu | cpu


GKE_TPU = "cloud.google.com/gke-tpu-accelerator"
NVIDIA_GPU = "nvidia.com/gpu"
GOOGLE_TPU = "google.com/tpu"

CPU_NOMINAL_FLOPS = 1.0e11
GB, GIB = 10**9, 2**30

ACCELERATORS: dict[str, Accelerator] = {
    a.name: a
    for a in [
        Accelerator("cpu", "CPU (nominal)", CPU_NOMINAL_FLOPS, None, None, kind="cpu"),
        Accelerator("nvidia-h100-80gb", "H100-80G", 989.0e12, 80 * GB, NVIDIA_GPU),
        # GKE's A3 Mega: the same H100 SXM chip, under its own GKE accelerator label (accelerator_labels.py).
        Accelerator("nvidia-h100-mega-80gb", "H100-80G Mega", 989.0e12, 80 * GB, NVIDIA_GPU),
        Accelerator("nvidia-h200", "H200-141G", 989.0e12, 141 * GB, NVIDIA_GPU),
        Accelerator("nvidia-a100-80gb", "A100-80G", 312.0e12, 80 * GB, NVIDIA_GPU),
        Accelerator("nvidia-a100-40gb", "A100-40G", 312.0e12, 40 * GB, NVIDIA_GPU),
        Accelerator("nvidia-l4", "L4", 121.0e12, 24 * GB, NVIDIA_GPU),
        Accelerator("rtx-4090", "RTX 4090", 165.2e12, 24 * GB, NVIDIA_GPU),
        Accelerator("tpu-v4", "TPU v4", 275.0e12, 32 * GIB, GOOGLE_TPU, {GKE_TPU: "tpu-v4-podslice"}, "tpu"),
        Accelerator("tpu-v5e", "TPU v5e", 197.0e12, 16 * GIB, GOOGLE_TPU, {GKE_TPU: "tpu-v5-lite-podslice"}, "tpu"),
        Accelerator("tpu-v5p", "TPU v5p", 459.0e12, 95 * GIB, GOOGLE_TPU, {GKE_TPU: "tpu-v5p-slice"}, "tpu"),
        Accelerator("tpu-v6e", "TPU v6e", 918.0e12, 32 * GIB, GOOGLE_TPU, {GKE_TPU: "tpu-v6e-slice"}, "tpu"),
    ]
}


def known_accelerators() -> str:
    """Comma-separated names, for error messages."""
    return ", ".join(ACCELERATORS)


def lookup(name: str) -> Accelerator | None:
    return ACCELERATORS.get(name)
