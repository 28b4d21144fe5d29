"""Ranks in completion-index order: the pod of index i holds ranks i*P .. i*P+P-1 (P procs per node).

torchrun's c10d rendezvous numbers the nodes in the sorted order of their addresses
(torch/distributed/elastic/rendezvous/dynamic_rendezvous.py, `_mark_rendezvous_complete` ranks
`sorted(state.participants)`, each a `_NodeDesc(addr, pid, local_id)`): the pod's FQDN, so
`x-train-10` comes before `x-train-2`, and with hostNetwork its node's IP, in no relation to the
pods' order. Placement that puts neighbouring indices on neighbouring nodes (Kueue's
topology-aware scheduling; one topology domain, builders/placement.py) only helps when the ranks
follow the indices: NCCL's rings and trees between nodes follow rank order. And the rank that
writes the run's storage, rank 0, must be the pod the operator reads (index 0: its progress
scrape, an elastic Job's success policy).

So before torch.distributed starts, each worker of a training pod (JOB_COMPLETION_INDEX set)
publishes its node's index in the store torchrun gave it (the agents' c10d store: MASTER_ADDR and
MASTER_PORT), reads every node's, and takes the rank its index's place gives it. The process
group is then made with that rank over the same store (keys of their own prefix). The numbering
is a permutation of torchrun's, so the world and each node's local ranks stay as they were; RANK
and GROUP_RANK in the environment are set to the new numbers for whatever reads them later.
Outside an Indexed Job's pods (`speedrun run`, one node) nothing changes.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence

import torch.distributed as dist

from speedrun_trainer.train.torchrun import COMPLETION_INDEX_ENV

PREFIX = "speedrun/node-index"  # the store's keys: `<prefix>/<torchrun's node rank>` -> completion index


def node_ranks(indices: Sequence[int]) -> list[int]:
    """`indices[g]`: the completion index of torchrun's node g; returns each node's new rank: its
    index's place among all (ties, which an Indexed Job never has, in torchrun's order)."""
    order = sorted(range(len(indices)), key=lambda g: (indices[g], g))
    ranks = [0] * len(indices)
    for place, group in enumerate(order):
        ranks[group] = place
    return ranks


def wanted() -> bool:
    """Whether this worker's ranks are to be reordered: a pod of an Indexed Job, with other nodes."""
    return COMPLETION_INDEX_ENV in os.environ and int(os.environ.get("GROUP_WORLD_SIZE", "1")) > 1


def by_completion_index(timeout: dt.timedelta) -> tuple[dist.Store, int]:
    """This worker's store and its rank in completion-index order (environment updated to match)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    group, groups = int(os.environ["GROUP_RANK"]), int(os.environ["GROUP_WORLD_SIZE"])
    local, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    # torchrun's own rank here: where the agents host no store (older torch), rank 0 starts it.
    store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world, timeout=timeout))
    keys = dist.PrefixStore(PREFIX, store)
    keys.set(str(group), os.environ[COMPLETION_INDEX_ENV])  # each of the node's workers: the same value
    names = [str(g) for g in range(groups)]
    keys.wait(names, timeout)
    new_group = node_ranks([int(keys.get(name)) for name in names])[group]
    new_rank = new_group * local_world + local
    os.environ.update(RANK=str(new_rank), GROUP_RANK=str(new_group))
    return store, new_rank
