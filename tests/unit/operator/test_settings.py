"""Operator settings (operator/speedrun_operator/settings.py): the environment round trip and the
Lease timings that cannot work, the handler threads."""

from __future__ import annotations

import logging

import kopf
import pytest

from speedrun_operator.settings import DEFAULT_TRAINER_IMAGE, OperatorSettings


def test_settings_round_trip_through_the_environment() -> None:
    assert OperatorSettings.from_env({}) == OperatorSettings()
    assert OperatorSettings().trainer_image == DEFAULT_TRAINER_IMAGE == "ghcr.io/speedrun-operator/trainer:0.1.0"
    custom = OperatorSettings(
        trainer_image="x/y:1", namespaces=("a", "b"), metrics_port=0, leader_election=True, progress_interval=2.5
    )
    env = custom.to_env()
    assert env["SPEEDRUN_TRAINER_IMAGE"] == "x/y:1" and env["SPEEDRUN_OPERATOR_NAMESPACES"] == "a,b"
    assert OperatorSettings.from_env(env) == custom
    with pytest.raises(ValueError, match="SPEEDRUN_OPERATOR_METRICS_PORT"):
        OperatorSettings.from_env({"SPEEDRUN_OPERATOR_METRICS_PORT": "lots"})


def test_lease_timings_that_cannot_work_are_named() -> None:
    assert OperatorSettings(leader_election=True, namespaces=("a",)).problem() is None
    bad = OperatorSettings(leader_election=True, namespaces=("a",), lease_duration=5, lease_renew_deadline=10)
    assert "SPEEDRUN_OPERATOR_LEASE_RENEW_DEADLINE" in (bad.problem() or "")
    assert OperatorSettings(lease_duration=5, lease_renew_deadline=10).problem() is None  # election off


def test_default_storage_endpoint_and_secret_need_the_default_uri() -> None:
    env = {"SPEEDRUN_OPERATOR_DEFAULT_STORAGE_SECRET": "s3-creds"}
    problem = OperatorSettings.from_env(env).problem() or ""
    assert problem.startswith("SPEEDRUN_OPERATOR_DEFAULT_STORAGE_SECRET: set SPEEDRUN_OPERATOR_DEFAULT_STORAGE_URI")
    endpoint = OperatorSettings(default_storage_endpoint_url="https://s3.example.com")
    assert "SPEEDRUN_OPERATOR_DEFAULT_STORAGE_ENDPOINT_URL" in (endpoint.problem() or "")
    full = OperatorSettings(default_storage_uri="s3://b/p", default_storage_endpoint_url="https://s3.example.com",
                            default_storage_secret="s3-creds")  # fmt: skip
    assert full.problem() is None and OperatorSettings.from_env(full.to_env()) == full


def test_handler_threads_is_bounded_and_reaches_kopf_with_its_consistency_wait() -> None:
    from speedrun_operator.handlers import operator_startup

    assert OperatorSettings.from_env({"SPEEDRUN_OPERATOR_HANDLER_THREADS": "64"}).handler_threads == 64
    for bad in (0, 257):
        assert OperatorSettings(handler_threads=bad).problem() == (
            f"SPEEDRUN_OPERATOR_HANDLER_THREADS: from 1 to 256, got {bad}"
        )
    kopf_settings, memo = kopf.OperatorSettings(), kopf.Memo()
    memo.operator = operator_startup.OperatorContext(settings=OperatorSettings(), client=None)  # type: ignore[arg-type]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEEDRUN_OPERATOR_HANDLER_THREADS", "48")
        operator_startup.configure(kopf_settings, memo, logging.getLogger("test"))
    assert kopf_settings.execution.max_workers == 48
    # kopf's wait for its own patch to come back before it acts on an older body (a second create)
    assert kopf_settings.persistence.consistency_timeout == operator_startup.CONSISTENCY_TIMEOUT_SECONDS == 30
