"""Which nodes a GPU pod selects, per environment: the node labels each cloud (or NVIDIA's GPU
feature discovery) puts on its GPU nodes, chosen by the operator's `acceleratorLabels` profile.

    node_labels("nvidia-h100-80gb", "eks")   # {"karpenter.k8s.aws/instance-gpu-name": "h100"}
    device_kind("nvidia-b200")                # "gpu": a name the table lacks (with deviceFlops)
    device_resource("nvidia-b200")            # "nvidia.com/gpu"

Every GPU pod requests `nvidia.com/gpu` whatever the profile; the labels only pick the GPU model
among the nodes that have GPUs. No label fits every cluster, hence the profiles:

- `none` (the default): no selector, only the resource request. Schedules on any cluster whose
  nodes advertise the GPUs; the model is not pinned (a cluster with several GPU models, or an
  autoscaler that must know which GPU to add, wants its own profile).
- `gke`: `cloud.google.com/gke-accelerator`, the label GKE sets on GPU node pools and that node
  auto-provisioning reads (https://cloud.google.com/kubernetes-engine/docs/how-to/gpus: A3 High
  `nvidia-h100-80gb`, A3 Mega `nvidia-h100-mega-80gb`, A3 Ultra `nvidia-h200-141gb`, A2
  `nvidia-tesla-a100` and `nvidia-a100-80gb`, G2 `nvidia-l4`).
- `eks`: Karpenter's well-known labels, which it sets on the nodes it launches and AWS's EKS best
  practices recommend selecting GPUs by (https://docs.aws.amazon.com/eks/latest/best-practices/
  aiml-compute.html): `karpenter.k8s.aws/instance-gpu-name` (`h100` p5, `h200` p5e/p5en, `a100`
  p4d/p4de, `l4` g6) and, where one name has two memory sizes, `instance-gpu-memory` in MiB
  (p4d 40960, p4de 81920), as Karpenter's generated instance-types reference lists them.
- `eks-auto`: the same labels under `eks.amazonaws.com/` (EKS Auto Mode, "Create a node pool for
  EKS Auto Mode": `eks.amazonaws.com/instance-gpu-name`, `instance-gpu-memory`).
- `aks`: `kubernetes.azure.com/accelerator: nvidia`, which AKS sets on every NVIDIA GPU node
  (AKS "Use labels", reserved system labels): it says "an NVIDIA GPU", not which one.
- `nvidia-gfd`: `nvidia.com/gpu.product`, set by NVIDIA's GPU feature discovery (the GPU Operator,
  on-prem, OpenShift, EKS or AKS with the operator): the device name nvidia-smi prints with spaces
  as dashes (k8s-device-plugin internal/lm/resource.go), e.g. `NVIDIA-H100-80GB-HBM3`. A node
  whose GPUs are shared by time-slicing carries `...-SHARED`: select it with
  `spec.resources.nodeSelector`, which wins per key over the profile.

TPUs exist only on GKE: their `cloud.google.com/gke-tpu-accelerator` (accelerators.py) and
topology labels go in every profile. An accelerator the table lacks (allowed with
`resources.deviceFlops`) is a GPU: it requests `nvidia.com/gpu` and, in `aks`, selects AKS's
generic GPU label; names that say CPU or TPU are refused (`unknown_accelerator_problem`), since
neither can be run without the table's entry.
"""

from __future__ import annotations

from speedrun_api.accelerators import NVIDIA_GPU, known_accelerators, lookup

PROFILES = ("none", "gke", "eks", "eks-auto", "aks", "nvidia-gfd")
DEFAULT_PROFILE = "none"

GKE_GPU = "cloud.google.com/gke-accelerator"
KARPENTER_GPU_NAME = "karpenter.k8s.aws/instance-gpu-name"
KARPENTER_GPU_MEMORY = "karpenter.k8s.aws/instance-gpu-memory"  # MiB per GPU
EKS_AUTO_GPU_NAME = "eks.amazonaws.com/instance-gpu-name"
EKS_AUTO_GPU_MEMORY = "eks.amazonaws.com/instance-gpu-memory"
AKS_ACCELERATOR = "kubernetes.azure.com/accelerator"
GFD_PRODUCT = "nvidia.com/gpu.product"

_GKE = {
    "nvidia-h100-80gb": "nvidia-h100-80gb",
    "nvidia-h100-mega-80gb": "nvidia-h100-mega-80gb",
    "nvidia-h200": "nvidia-h200-141gb",
    "nvidia-a100-80gb": "nvidia-a100-80gb",
    "nvidia-a100-40gb": "nvidia-tesla-a100",
    "nvidia-l4": "nvidia-l4",
}
# (instance-gpu-name, instance-gpu-memory MiB or None when the name alone decides).
_AWS: dict[str, tuple[str, str | None]] = {
    "nvidia-h100-80gb": ("h100", None),
    "nvidia-h100-mega-80gb": ("h100", None),  # GCP's A3 Mega; on AWS the same chip is p5's H100
    "nvidia-h200": ("h200", None),
    "nvidia-a100-80gb": ("a100", "81920"),
    "nvidia-a100-40gb": ("a100", "40960"),
    "nvidia-l4": ("l4", None),
}
_GFD = {
    "nvidia-h100-80gb": "NVIDIA-H100-80GB-HBM3",
    "nvidia-h100-mega-80gb": "NVIDIA-H100-80GB-HBM3",
    "nvidia-h200": "NVIDIA-H200",
    "nvidia-a100-80gb": "NVIDIA-A100-SXM4-80GB",
    "nvidia-a100-40gb": "NVIDIA-A100-SXM4-40GB",
    "nvidia-l4": "NVIDIA-L4",
    "rtx-4090": "NVIDIA-GeForce-RTX-4090",
}


def _aws(accelerator: str, name_key: str, memory_key: str) -> dict[str, str]:
    if accelerator not in _AWS:
        return {}
    name, memory = _AWS[accelerator]
    return {name_key: name, **({memory_key: memory} if memory else {})}


def gpu_labels(accelerator: str, profile: str) -> dict[str, str]:
    """The node labels a pod of GPU `accelerator` selects in `profile` ({} where it has none)."""
    if profile == "gke":
        return {GKE_GPU: _GKE[accelerator]} if accelerator in _GKE else {}
    if profile == "eks":
        return _aws(accelerator, KARPENTER_GPU_NAME, KARPENTER_GPU_MEMORY)
    if profile == "eks-auto":
        return _aws(accelerator, EKS_AUTO_GPU_NAME, EKS_AUTO_GPU_MEMORY)
    if profile == "aks":
        return {AKS_ACCELERATOR: "nvidia"}
    if profile == "nvidia-gfd":
        return {GFD_PRODUCT: _GFD[accelerator]} if accelerator in _GFD else {}
    return {}


def device_kind(accelerator: str) -> str:
    """cpu, gpu or tpu: the table's kind; a name it lacks is a GPU (`unknown_accelerator_problem`
    refuses the names that say otherwise)."""
    acc = lookup(accelerator)
    return acc.kind if acc is not None else "gpu"


def device_resource(accelerator: str) -> str | None:
    """The extended resource one device is requested as: the table's, `nvidia.com/gpu` for a GPU
    it lacks, None for a CPU."""
    acc = lookup(accelerator)
    return acc.resource if acc is not None else NVIDIA_GPU


def node_labels(accelerator: str, profile: str) -> dict[str, str]:
    """Every node label a pod of `accelerator` selects: a TPU's GKE labels in any profile (the
    topology label is the builder's), a GPU's from `profile`, none for a CPU."""
    kind = device_kind(accelerator)
    if kind == "tpu":
        acc = lookup(accelerator)
        return dict(acc.node_selector) if acc is not None else {}
    return gpu_labels(accelerator, profile) if kind == "gpu" else {}


def profile_problem(profile: str) -> str | None:
    """Why `profile` is not one (one line, the allowed values), or None."""
    if profile in PROFILES:
        return None
    return f"got {profile!r}; one of {', '.join(PROFILES)}"


def unknown_accelerator_problem(accelerator: str) -> str | None:
    """Why an accelerator the table lacks cannot be taken for a GPU, or None. A TPU needs the
    table's chips per host and topologies (tpu.py); a CPU is `cpu` (deviceFlops gives its peak)."""
    if lookup(accelerator) is not None:
        return None
    if accelerator.startswith("tpu"):
        tpus = ", ".join(n for n in known_accelerators().split(", ") if n.startswith("tpu"))
        return f"unknown TPU {accelerator!r}: a TPU needs the table's chips per host; known: {tpus}"
    if accelerator.startswith("cpu"):
        return (
            f"{accelerator!r} is not in the table, and a name the table lacks is a GPU; for a CPU"
            " give `cpu` (resources.deviceFlops sets its peak)"
        )
    return None
