"""The Indexed training Job `<name>-train`: one pod per node, torchrun with c10d rendezvous (a TPU
slice: one pod per host running JAX, builders/tpu.py).

completions = parallelism = nodes (the maximum for elastic jobs), so pod `i` is hostname
`<name>-train-i`, and the agent of completion index 0 hosts the rendezvous store at
`<name>-train-0.<name>:29400` (the torchrun wrapper decides that from JOB_COMPLETION_INDEX, never
from a DNS lookup that races the EndpointSlice). Every agent waits for the store and for the others
(`--rdzv-conf`) up to `runPolicy.rendezvousTimeoutSeconds` or `startupDeadlineSeconds`, whichever is
longer: a rank that waits for a late one never gives up before the operator's start-up deadline,
so a slow start fails once, at the deadline, with its reason, instead of burning restarts.

Failure policy (gang restart, JobSet's model): the Job itself never retries (backoffLimit 0,
torchrun `--max-restarts=0`): the first pod failure fails the Job, and the operator re-creates it
as the next attempt (label `speedrun.dev/attempt`), resuming from the last checkpoint, counted
once in `status.restarts` against `runPolicy.maxRestarts`. The trainer's invalid-config exit code
(2) fails the Job through its podFailurePolicy with reason PodFailurePolicy, which the operator
never retries. A pod preempted, evicted or lost with its node (condition DisruptionTarget) fails
the Job too (`FailJob`, no waiting for the survivors' timeouts): the operator restarts the gang
without counting it against maxRestarts (disruptions.py reads the Job's message).

`resources.hostNetwork` puts the pods on their node's network, so NCCL sees the host's NICs (GKE's
GPUDirect-TCPX/TCPXO, EFA, InfiniBand/RoCE without a CNI for them): dnsPolicy
ClusterFirstWithHostNet keeps the headless Service's names resolvable, the rendezvous and metrics
ports become host ports (stated as `hostPort`, so the scheduler never puts two pods that use them
on one node: the second waits for another node instead of failing to bind), and each agent
advertises its pod IP (the node's) as `--local-addr`, not the node's hostname, which the other
nodes' pods may not resolve.
"""

from __future__ import annotations

from typing import Any

from speedrun_api.run_contract import TRAIN_MODULE
from speedrun_api.spec import SpeedrunJob
from speedrun_operator import labels as L
from speedrun_operator.builders import common, placement, pod_overrides, tpu
from speedrun_operator.settings import OperatorSettings

POD_IP_ENV = "POD_IP"


def torchrun_train_command(job: SpeedrunJob, attempt: int = 0) -> list[str]:
    """`python -m speedrun_trainer.train.torchrun --nnodes=N|MIN:MAX ... -m speedrun_trainer.train --config ...`.

    `speedrun_trainer.train.torchrun` takes torchrun's arguments and keeps exit code 2 (invalid config).
    The rendezvous id is the run's and the attempt's (`<uid>-<attempt>`): an agent of an earlier
    attempt still running on a lost node (stuck_pods.py) can never join this attempt's rendezvous,
    whose store has the same address.
    """
    r, name = job.spec.resources, job.metadata.name
    lo, hi = r.node_range
    return [
        *common.TORCHRUN,
        f"--nnodes={lo}:{hi}" if r.elastic else f"--nnodes={hi}",
        f"--nproc-per-node={r.procs_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={L.rendezvous_endpoint(name)}",
        f"--rdzv-id={common.job_uid(job)}-{attempt}",
        f"--rdzv-conf={rendezvous_conf(job)}",
        *([f"--local-addr=$({POD_IP_ENV})"] if r.host_network else []),  # the kubelet expands $(POD_IP)
        "--max-restarts=0",  # restarts are the operator's gang restarts, counted in status.restarts
        "-m",
        TRAIN_MODULE,
        "--config",
        L.CONFIG_PATH,
    ]


def rendezvous_conf(job: SpeedrunJob) -> str:
    """torch's c10d rendezvous settings: how long an agent waits for the store (`read_timeout`,
    also its store operations' timeout) and for the other nodes (`join_timeout`).
    torch/distributed/elastic/rendezvous/{c10d_rendezvous_backend,dynamic_rendezvous}.py."""
    policy = job.spec.run_policy
    # Never shorter than the start-up deadline: the operator, not an agent, decides a start failed.
    timeout = max(policy.rendezvous_timeout_seconds, policy.startup_deadline_seconds)
    return f"join_timeout={timeout},read_timeout={timeout}"


def disruption_fails_job(policy: dict[str, Any]) -> dict[str, Any]:
    """The training Job's podFailurePolicy: a disrupted pod (DisruptionTarget) fails the Job at once,
    named in its message, where the common policy (eval Job) ignores it and replaces the pod: a
    training gang cannot go on without a rank, and the operator's restart is not counted."""

    def disruption(rule: dict[str, Any]) -> bool:
        return any(c.get("type") == "DisruptionTarget" for c in rule.get("onPodConditions", []))

    rules = [{**rule, "action": "FailJob"} if disruption(rule) else rule for rule in policy["rules"]]
    return {**policy, "rules": rules}


def build_train_job(
    job: SpeedrunJob, settings: OperatorSettings, attempt: int = 0, gang: placement.GangMode = "none"
) -> dict[str, Any]:
    """The Job of training attempt `attempt` (0, then one more per gang restart); its pods name the
    attempt's PodGroup of the `gang` kind (builders/placement.py)."""
    name, r, policy = job.metadata.name, job.spec.resources, job.spec.run_policy
    labels = {**common.queue_labels(job), L.LABEL_ATTEMPT: str(attempt)}
    _, nodes = r.node_range
    ports = [
        {"name": L.PORT_NAME_RENDEZVOUS, "containerPort": L.PORT_RENDEZVOUS},
        {"name": L.PORT_NAME_METRICS, "containerPort": job.spec.metrics.port},
    ]
    command = torchrun_train_command(job, attempt)
    if tpu.tpu_slice(job) is not None:  # one JAX process per TPU host, GKE's env (builders/tpu.py)
        ports, command = tpu.train_ports(job), tpu.train_command(job)
    if r.host_network:
        ports = [{**port, "hostPort": port["containerPort"]} for port in ports]
    container = common.container(job, settings, L.CONTAINER_TRAINER, command, ports, extra_resources=True)
    pod = common.pod_spec(job, settings, container)
    pod["subdomain"] = L.service_name(name)
    if tpu.tpu_slice(job) is not None:
        container["env"] += tpu.train_env()
    if r.host_network:
        pod["hostNetwork"] = True
        pod["dnsPolicy"] = "ClusterFirstWithHostNet"
        container["env"].append({"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    counts = {"completionMode": "Indexed", "completions": nodes, "parallelism": nodes, "backoffLimit": 0}
    out = common.batch_job(job, L.train_job_name(name), L.ROLE_TRAIN, labels, pod, counts)
    spec = out["spec"]
    spec["podFailurePolicy"] = disruption_fails_job(spec["podFailurePolicy"])
    if placement.wants_gang(job):
        placement.apply_gang(spec["template"], gang, placement.pod_group_name(name, attempt))
    placement.apply_topology(spec["template"], job, attempt)  # spec.resources.placement
    if r.elastic:
        # An elastic run may finish before late pods ever start: rank 0's success is the run's.
        spec["successPolicy"] = {"rules": [{"succeededIndexes": "0"}]}
    if policy.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = policy.active_deadline_seconds
    pod_overrides.apply(out, job, settings)  # the chart's and the spec's podOverrides, last
    # No ttlSecondsAfterFinished here: the operator sets it once it has recorded the outcome
    # (handlers/reconcile.py), so the TTL controller can never delete an unrecorded Job.
    return out
