"""The shard cache's size limit (operator/speedrun_operator/builders/shard_cache.py)."""

from __future__ import annotations

from speedrun_api.manifest import parse_job
from speedrun_operator.builders import build_eval_job, build_train_job
from speedrun_operator.builders.shard_cache import GI, cache_size_limit, tokens_read
from speedrun_operator.settings import OperatorSettings
from tests.support.helpers import tiny_manifest


def cache_volume(job: dict) -> dict:
    [volume] = [v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "cache"]
    return volume


def test_derived_from_the_tokens_the_run_reads() -> None:
    job = parse_job(tiny_manifest())  # 20 steps x 8 x 64 tokens + 4096 eval tokens, vocabulary 264
    assert tokens_read(job) == 20 * 8 * 64 + 4096
    assert cache_size_limit(job) == "9Gi"  # 4 x 14336 x 2 bytes, + 8Gi, rounded up
    big = parse_job(tiny_manifest(**{"spec.train.steps": 100_000, "spec.model.vocabSize": 100_000}))
    expected = 4 * (100_000 * 8 * 64 + 4096) * 4 + 8 * GI  # 4 bytes a token above 16 bits
    assert cache_size_limit(big) == f"{-(-expected // GI)}Gi"


def test_the_spec_sets_it_and_every_pod_carries_it() -> None:
    job = parse_job(tiny_manifest(**{"spec.data.cacheSize": "40Gi"}))
    assert cache_size_limit(job) == "40Gi"
    for child in (build_train_job(job, OperatorSettings()), build_eval_job(job, OperatorSettings())):
        assert cache_volume(child) == {"name": "cache", "emptyDir": {"sizeLimit": "40Gi"}}
