"""Ranks in completion-index order (train/rank_order.py): the permutation of torchrun's node ranks.
Real torchrun agents reordered: tests/e2e/test_rank_order.py."""

from __future__ import annotations

import pytest

from speedrun_trainer.train import rank_order


@pytest.mark.parametrize(
    ("indices", "ranks"),
    [
        ([0], [0]),
        ([1, 0], [1, 0]),
        # torchrun sorts the pods' names: x-train-0, x-train-1, x-train-10, x-train-11, x-train-2 ...
        ([0, 1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9], [0, 1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9]),
        ([3, 0, 2], [2, 0, 1]),  # an elastic run without index 1: dense ranks, index order
    ],
)
def test_each_node_takes_its_indexs_place(indices: list[int], ranks: list[int]) -> None:
    assert rank_order.node_ranks(indices) == ranks


def test_only_an_indexed_jobs_pods_with_other_nodes_reorder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    assert not rank_order.wanted()  # speedrun run, torchrun by hand
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    assert rank_order.wanted()
    monkeypatch.setenv("GROUP_WORLD_SIZE", "1")
    assert not rank_order.wanted()  # one node: nothing to order
