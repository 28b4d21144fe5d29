"""GKE's side of a TPU slice, played for the control-plane tier: its node pool and the env it injects.

A GKE TPU node pool's nodes carry `cloud.google.com/gke-tpu-accelerator` and
`cloud.google.com/gke-tpu-topology`, `google.com/tpu` capacity (the host's chips) and the taint
`google.com/tpu=present:NoSchedule` (node_agent.NodeSpec's `tpus`, `labels`, `taints`). For a pod
that requests `google.com/tpu` in an Indexed Job with a `subdomain` (the operator's training Job),
GKE sets `TPU_WORKER_ID` (the pod's completion index) and `TPU_WORKER_HOSTNAMES` (every index's
`<job>-<i>.<subdomain>`, comma-separated), which `jax.distributed.initialize()` reads; the node
agent adds `tpu_env(api, pod)` to such a pod's environment, so a test sees what the trainer would
on GKE. Scheduling stays the real scheduler's.

A host that trains for real has no chips here: `cpu_chips(n)` is the environment such a node
(NodeSpec.env) forces over its pods' own, so that jax finds n CPU devices in the n chips' place
(`SPEEDRUN_JAX_PLATFORM=cpu` over the operator's `tpu`, which jax_main honours, saying so).
"""

from __future__ import annotations

from typing import Any

from tests.cluster.api import Api

GKE_TPU_ACCELERATOR = "cloud.google.com/gke-tpu-accelerator"
GKE_TPU_TOPOLOGY = "cloud.google.com/gke-tpu-topology"
TPU_RESOURCE = "google.com/tpu"
TPU_TAINT = {"key": TPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def tpu_env(api: Api, pod: dict[str, Any]) -> dict[str, str]:
    """TPU_WORKER_ID and TPU_WORKER_HOSTNAMES as GKE sets them, or {} for any other pod."""
    meta, spec = pod["metadata"], pod["spec"]
    requests = (spec["containers"][0].get("resources") or {}).get("limits") or {}
    index = (meta.get("annotations") or {}).get(COMPLETION_INDEX)
    owner = next((o for o in meta.get("ownerReferences") or [] if o["kind"] == "Job"), None)
    if TPU_RESOURCE not in requests or index is None or owner is None or not spec.get("subdomain"):
        return {}
    job = api.get(f"/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{owner['name']}") or {}
    hosts = int((job.get("spec") or {}).get("completions") or 1)
    names = [f"{owner['name']}-{i}.{spec['subdomain']}" for i in range(hosts)]
    return {"TPU_WORKER_ID": index, "TPU_WORKER_HOSTNAMES": ",".join(names)}


def cpu_chips(chips: int) -> dict[str, str]:
    """A TPU host played on CPU: jax's platform forced to cpu, with `chips` host devices."""
    return {"SPEEDRUN_JAX_PLATFORM": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={chips}"}
