"""Integration: `speedrun operator --peering NAME` runs with kopf peering (several replicas).

kopf's KopfPeering object is how replicas agree who is active: each writes a keep-alive entry
into its status and only the highest priority one handles resources. Here one operator with
mandatory peering announces itself there and still reconciles.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kopf.testing import KopfRunner

from speedrun_operator.commands import kopf_run_argv
from speedrun_operator.settings import OperatorSettings
from tests.kube_emulator import wait_for
from tests.operator_fixtures import NAMESPACE, OPERATOR_ENV, Speedruns, emulated_cluster, tiny_job

PEERING = "speedrun-operator"
KOPF_PEERING_CRD = {
    "spec": {
        "group": "kopf.dev",
        "scope": "Namespaced",
        "names": {"kind": "KopfPeering", "plural": "kopfpeerings", "singular": "kopfpeering"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
        ],
    }
}


def test_operator_with_mandatory_peering_announces_itself_and_reconciles(tmp_path: Path) -> None:
    with emulated_cluster(tmp_path) as cluster:
        cluster.emulator.register_crd(KOPF_PEERING_CRD)
        cluster.create("kopf.dev/v1", "kopfpeerings", NAMESPACE, {"metadata": {"name": PEERING}})
        runs = Speedruns(cluster)
        argv = kopf_run_argv(OperatorSettings(namespaces=(NAMESPACE,), peering=PEERING))
        assert argv[-2:] == ["--peering", PEERING]
        with pytest.MonkeyPatch.context() as mp:
            for key, value in {**OPERATOR_ENV, "SPEEDRUN_OPERATOR_METRICS_PORT": "0"}.items():
                mp.setenv(key, value)
            with KopfRunner(argv, timeout=30):
                peers = wait_for(
                    lambda: (cluster.get("kopf.dev/v1", "kopfpeerings", NAMESPACE, PEERING) or {}).get("status"),
                    what="a keep-alive entry in the KopfPeering status",
                )
                [entry] = peers.values()
                assert entry["priority"] == 0 and entry["lifetime"] > 0
                runs.apply(tiny_job("peered"))
                wait_for(lambda: runs.job("peered-train"), what="the training Job")
