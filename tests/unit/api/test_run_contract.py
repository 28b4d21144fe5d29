"""The run's contract (speedrun_api.run_contract): where a run's storage is, for every launcher,
and the names each side imports from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from speedrun_api import run_contract
from speedrun_api.manifest import parse_job
from speedrun_api.run_contract import cache_dir, local_run_root, resolve_storage_uri
from speedrun_operator.builders import storage_uri as operator_storage_uri
from speedrun_operator.settings import OperatorSettings
from tests.support.helpers import tiny_manifest


def job(storage_uri: str | None = None, namespace: str | None = None) -> Any:
    manifest = tiny_manifest(**{"metadata.name": "tiny", "spec.storage": {"uri": storage_uri} if storage_uri else None})
    if namespace is not None:
        manifest["metadata"]["namespace"] = namespace
    return parse_job(manifest)


@pytest.mark.parametrize(
    ("spec_uri", "override", "default", "expected"),
    [
        (None, None, "file:///runs/tiny/1", "file:///runs/tiny/1"),  # nothing given: the launcher's default
        ("s3://b/spec", None, "file:///runs/tiny/1", "s3://b/spec"),  # the spec beats the default
        ("s3://b/spec", "s3://b/flag", "file:///runs/tiny/1", "s3://b/flag"),  # the launcher's word beats both
        (None, "", "runs/tiny", "runs/tiny"),  # an empty override (an unset variable) is no override
        (None, None, None, None),  # no default: the caller decides what no storage means
    ],
)
def test_override_then_spec_then_default(
    spec_uri: str | None, override: str | None, default: str | None, expected: str | None
) -> None:
    assert resolve_storage_uri(job(spec_uri), override=override, default=default) == expected


def test_the_default_must_be_stated() -> None:
    with pytest.raises(TypeError):
        resolve_storage_uri(job())  # type: ignore[call-arg]


def test_local_runs_live_under_the_runs_dir() -> None:
    assert local_run_root("tiny") == Path(run_contract.LOCAL_RUNS_DIR) / "tiny"
    assert local_run_root("tiny", "/tmp/elsewhere") == Path("/tmp/elsewhere/tiny")


def test_a_trainer_started_by_hand_keeps_its_runs_dir_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from speedrun_trainer.train.runtime import run_storage

    monkeypatch.delenv(run_contract.ENV_STORAGE_URI, raising=False)
    monkeypatch.chdir(tmp_path)
    assert run_storage(job()).url("") == (tmp_path / "runs" / "tiny").as_uri()
    monkeypatch.setenv(run_contract.ENV_STORAGE_URI, (tmp_path / "launcher").as_uri())
    assert run_storage(job("s3://b/spec")).url("") == (tmp_path / "launcher").as_uri()


def test_the_operator_defaults_under_its_prefix_by_namespace_or_nowhere() -> None:
    prefixed = OperatorSettings(default_storage_uri="s3://bucket/runs/")
    assert operator_storage_uri(job(namespace="team"), prefixed) == "s3://bucket/runs/team/tiny"
    assert operator_storage_uri(job(), prefixed) == "s3://bucket/runs/default/tiny"
    assert operator_storage_uri(job("s3://b/own", namespace="team"), prefixed) == "s3://b/own"
    assert operator_storage_uri(job(), OperatorSettings()) is None


def test_cache_dir_from_the_environment_else_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(run_contract.ENV_CACHE_DIR, str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv(run_contract.ENV_CACHE_DIR)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "speedrun"


def test_every_environment_name_is_a_speedrun_variable() -> None:
    names = {k: v for k, v in vars(run_contract).items() if k.startswith("ENV_")}
    assert names and all(v.startswith("SPEEDRUN_") for v in names.values())
    assert len(set(names.values())) == len(names)
