"""The training step's data path: micro-batches read ahead on a background thread.

    batches = BatchPrefetcher(dataset, start_step=0, accum=2, rank=0, world=1, device_batch_size=8,
                              batch_size=16, seq_len=256, device=device)
    for step in range(start, total):
        micro_batches = batches.next_step()   # [(x int32 (B, T), y int64 (B, T)), ...] on the device
    batches.close()

A daemon thread walks the steps from `start_step` on, reading for each micro-step the
device_batch_size sequences that `batch_for` assigns to this rank, as the raw uint16 tokens of
the shards (count*T + 1 of them: x and y overlap; uint32 for shards of vocabularies over
65,536), into host tensors: pinned memory on CUDA, so
the copy to the GPU is asynchronous. It stays `depth` steps ahead. The training thread takes a
step's buffers, copies them with `non_blocking=True` and widens them on the device: uint16 (or uint32) ->
int32 for the inputs (what the embedding needs; ids stay below 2^31) and int64 for the targets (what the loss
gathers with), as modded-nanogpt's loader does: 2 bytes per token cross the bus instead of 8 and
the host does no conversion. Batches are exactly those of `TokenDataset.sequences`, so resuming
and changing world size stay exact. A read error on the thread (DataError: a vanished shard)
is raised by the next `next_step()`.

Pinned buffers are fresh per batch: torch's caching host allocator hands a block back only after
the copies that read it have completed, so the thread never overwrites data still in flight.
"""

from __future__ import annotations

import contextlib
import queue
import threading

import numpy as np
import torch

from speedrun_trainer.data.loader import TokenDataset, batch_for

_TORCH_DTYPES = {np.dtype(np.uint16): torch.uint16, np.dtype(np.uint32): torch.uint32}


class BatchPrefetcher:
    """Micro-batches of consecutive steps, read `depth` steps ahead on a background thread."""

    def __init__(
        self,
        dataset: TokenDataset,
        *,
        start_step: int,
        accum: int,
        rank: int,
        world: int,
        device_batch_size: int,
        batch_size: int,
        seq_len: int,
        device: torch.device,
        depth: int = 2,
    ) -> None:
        if accum < 1 or depth < 1:
            raise ValueError(f"accum and depth must be >= 1, got {accum}, {depth}")
        self.dataset, self.device = dataset, device
        self.accum, self.rank, self.world = accum, rank, world
        self.device_batch_size, self.batch_size, self.seq_len = device_batch_size, batch_size, seq_len
        self.step = start_step  # the step next_step() returns
        self._pin = device.type == "cuda"
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="batch-prefetch", daemon=True)
        self._thread.start()

    def host_step(self, step: int) -> list[torch.Tensor]:
        """The host token buffers (uint16 or uint32, count*T + 1 tokens each) of `step`'s micro-batches."""
        out = []
        for micro in range(self.accum):
            first = batch_for(step, micro, self.rank, self.world, self.device_batch_size, self.batch_size)
            tokens = self.dataset.sequence_tokens(first, self.device_batch_size, self.seq_len)
            buf = torch.empty(tokens.shape, dtype=_TORCH_DTYPES[tokens.dtype], pin_memory=self._pin)
            buf.numpy()[:] = tokens
            out.append(buf)
        return out

    def _produce(self) -> None:
        step = self.step
        try:
            while not self._stop.is_set():
                item = (step, self.host_step(step))
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                step += 1
        except BaseException as err:  # handed to the training thread, which raises it
            self._queue.put((step, err))

    def next_step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The next step's micro-batches on the device: [(x int32 (B, T), y int64 (B, T))] * accum."""
        if self._stop.is_set():
            raise RuntimeError("the prefetcher is closed")
        step, item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        assert step == self.step, (step, self.step)
        self.step += 1
        b, t = self.device_batch_size, self.seq_len
        out = []
        for host in item:
            dev = host.to(self.device, non_blocking=True)
            out.append((dev[:-1].view(b, t).to(torch.int32), dev[1:].view(b, t).to(torch.int64)))
        return out

    def close(self) -> None:
        """Stop the thread (it may be blocked on a full queue: drain it)."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
            self._thread.join(timeout=0.05)
