"""Which gang the cluster offers, and the PodGroup of each training attempt (builders/placement.py).

The chart value `operator.gangScheduling` (SPEEDRUN_OPERATOR_GANG_SCHEDULING) names the kind, or
`auto` asks the apiserver's discovery once per process: Kubernetes' own PodGroup
(`scheduling.k8s.io/v1alpha2`, served with the GenericWorkload feature gate and that API version
enabled) first, then the scheduler-plugins PodGroup CRD (`scheduling.x-k8s.io/v1alpha1`), else
none. Serving the API is not enough for a gang: the scheduler must run the plugin (the
GangScheduling feature gate, or Coscheduling in its profile); docs/operator.md "Gang start".

The PodGroup is created after its Job (it is owned by that Job, so it goes with the attempt);
the scheduler keeps pods that name a PodGroup not yet there out of its queue until it appears.
It is ensured only while the attempt's pods are not all ready, and created once per Job (a Job's
uid is remembered once its PodGroup is made or found to exist), so it costs one request per attempt.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from speedrun_api.spec import SpeedrunJob
from speedrun_operator import kube
from speedrun_operator.builders import placement

_resolved: dict[str, placement.GangMode] = {}
_lock = threading.Lock()
_made: set[str] = set()  # uids of training Jobs whose PodGroup this process saw or made: no GET again
MADE_MAX = 10_000  # forgotten all at once past this: one GET each again, then remembered


def gang_mode(client: kube.KubeClient, setting: str) -> placement.GangMode:
    """The chart value, with `auto` resolved by discovery (remembered: the API a cluster serves
    changes only with an apiserver restart, and the operator restarts with upgrades)."""
    if setting in ("kubernetes", "coscheduling", "none"):
        return setting  # type: ignore[return-value]
    with _lock:
        if setting not in _resolved:
            _resolved[setting] = _discover(client)
        return _resolved[setting]


def _discover(client: kube.KubeClient) -> placement.GangMode:
    if client.served(kube.POD_GROUP):
        return "kubernetes"
    if client.served(kube.COSCHEDULING_POD_GROUP):
        return "coscheduling"
    return "none"


def forget() -> None:
    """Ask discovery again on the next use (tests; an operator that restarts does it anyway)."""
    with _lock:
        _resolved.clear()
        _made.clear()


def ensure_pod_group(client: kube.KubeClient, job: SpeedrunJob, train_job: dict[str, Any], attempt: int) -> None:
    """The PodGroup the attempt's pods name (read from the Job's own template: the Job may predate
    this process), owned by its training Job; nothing for a Job being deleted (a gang restart) or
    one whose pods all started."""
    mode = placement.named_gang(train_job["spec"]["template"])
    group = placement.build_pod_group(job, mode, attempt)
    if group is None or train_job["metadata"].get("deletionTimestamp"):
        return
    status = train_job.get("status") or {}
    if int(status.get("ready") or 0) + int(status.get("succeeded") or 0) >= placement.min_count(job):
        return
    kind = kube.POD_GROUP if mode == "kubernetes" else kube.COSCHEDULING_POD_GROUP
    meta = train_job["metadata"]
    if meta["uid"] in _made:
        return
    # Owned by the attempt's Job (not blocking its deletion: a Foreground delete of the Job takes it).
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"], "controller": True}
    group["metadata"].update(namespace=meta["namespace"], ownerReferences=[owner])
    # Created without a GET first: a Job this pass created has none yet (the usual case), and for
    # one that had (another pass, an earlier operator process) the apiserver's 409 says so.
    with contextlib.suppress(kube.Conflict):
        client.create(kind, meta["namespace"], group)
    _remember(meta["uid"])


def _remember(uid: str) -> None:
    with _lock:
        if len(_made) >= MADE_MAX:
            _made.clear()
        _made.add(uid)
