"""The size limit of each pod's shard cache (the emptyDir at CACHE_DIR), so that a job's data
cannot fill its node's disk and get the node's other pods evicted for disk pressure.

What the cache holds (trainer/speedrun_trainer/data/loader.py, fetch.py, builtin.py): every shard
file of `data.train` and of the evaluation set, downloaded once per pod (the whole glob, not only
the tokens read), the tokenizer, the eval bundle, builtin corpora once tokenized. The operator
cannot list the files, so without `spec.data.cacheSize` the limit is derived from the tokens the
run reads: the plan's training tokens plus the eval tokens, at the shards' 2 bytes a token
(4 when the vocabulary needs more than 16 bits), times HEADROOM_FACTOR (shards are whole files,
and a glob usually holds more than one run reads), plus HEADROOM_FIXED for the rest. A pod that
outgrows it is evicted by its kubelet, so a job whose data glob holds much more than it reads
sets `spec.data.cacheSize` to the size of its files.
"""

from __future__ import annotations

import math

from speedrun_api.plan import horizon_steps
from speedrun_api.spec import SpeedrunJob

GI = 1024**3
HEADROOM_FACTOR = 4
HEADROOM_FIXED = 8 * GI  # tokenizer files, nanochat's CORE eval bundle (unzipped), builtin corpora
UINT16_VOCAB = 2**16


def tokens_read(job: SpeedrunJob) -> int:
    """Training tokens of the whole run (every rank's, each pod caches all shards) plus eval tokens."""
    s = job.spec
    return horizon_steps(job) * s.train.batch_size * s.model.seq_len + s.eval.bpb.tokens


def cache_size_limit(job: SpeedrunJob) -> str:
    """The emptyDir's sizeLimit: `spec.data.cacheSize` if given, else derived (see the module)."""
    if job.spec.data.cache_size is not None:
        return str(job.spec.data.cache_size)
    bytes_per_token = 2 if job.spec.model.vocab_size <= UINT16_VOCAB else 4
    size = HEADROOM_FACTOR * tokens_read(job) * bytes_per_token + HEADROOM_FIXED
    return f"{math.ceil(size / GI)}Gi"
