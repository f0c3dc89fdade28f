"""Per-worker training batches: what each rank of a DDP run (or a federated client) draws, step by
step, from a prepared dataset's arrays, resumable from any step and reading only the rows it draws."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from gan_core.data import DataError


class RowSubset:
    """Rows `rows` of an array (a memmap) that reads nothing until indexed: a shard without a copy
    of it (a federated client's). Has what ShardedBatches uses: len, shape, dtype, [int array]."""

    def __init__(self, a: np.ndarray, rows: np.ndarray):
        self.a, self.rows = a, rows
        self.shape, self.dtype = (len(rows), *a.shape[1:]), a.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.a[self.rows[i]]


Rows = dict[str, np.ndarray | RowSubset | torch.Tensor]  # name -> (N, ...) array, one row per example


class ShardedBatches:
    """Endless per-worker batches (dicts of uint8 tensors) drawn by torch's DistributedSampler,
    resumable from a step.

    `aligned` arrays share one index (images with their labels, or with their pairs in paired data);
    `independent` arrays (the second domain of unpaired data) are drawn by a sampler of their own, so
    no pairing between the domains is ever implied. Each epoch every worker sees a disjoint shard;
    `epoch` and the position inside it follow from the step alone, so a resumed run continues with
    exactly the batches the original would have seen.

    The arrays may be numpy (np.memmap from load_prepared(mmap=True)) or torch tensors. From numpy
    only a batch's rows are read, into a fresh tensor (pinned when `device` is CUDA, then copied
    without blocking), so a rank never holds more of the dataset than its current batch: per epoch
    it touches exactly its sampler's shard. Either kind gives the same batches for the same seed.
    """

    def __init__(self, aligned: Rows, batch_size: int, rank: int, world: int, seed: int,
                 independent: Rows | None = None, device: torch.device | str | None = None):
        self.aligned, self.independent, self.batch_size = aligned, independent or {}, batch_size
        self.device = torch.device(device) if device is not None else None
        self._order: dict[int, tuple[int, torch.Tensor]] = {}
        self.per_epoch, self.sampler = self._sampler(aligned, rank, world, seed)
        self.per_epoch_b, self.sampler_b = (self._sampler(self.independent, rank, world, seed + 1)
                                            if self.independent else (0, None))

    def _sampler(self, arrays: Rows, rank: int, world: int, seed: int):
        n = len(next(iter(arrays.values())))
        sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                     drop_last=True)
        per_epoch = len(sampler) // self.batch_size
        if per_epoch == 0:
            raise DataError(f"{'/'.join(arrays)}: {n} training images are smaller than one batch of "
                            f"{self.batch_size} per worker x {world} workers")
        return per_epoch, sampler

    def _rows(self, sampler: DistributedSampler, epoch: int, b: int) -> torch.Tensor:
        cached = self._order.get(id(sampler))
        if cached is None or cached[0] != epoch:  # one permutation per epoch, not per batch
            sampler.set_epoch(epoch)
            cached = self._order[id(sampler)] = (epoch, torch.tensor(list(sampler), dtype=torch.long))
        return cached[1][b * self.batch_size:(b + 1) * self.batch_size]

    def _gather(self, arrays: Rows, sel: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {name: gather_rows(a, sel, self.device) for name, a in arrays.items()}
        return out if self.device is None else {k: v.to(self.device, non_blocking=True) for k, v in out.items()}

    def from_step(self, step: int) -> Iterator[dict[str, torch.Tensor]]:
        k = step  # the global batch number, which also places the independent sampler
        while True:
            epoch, b = divmod(k, self.per_epoch)
            batch = self._gather(self.aligned, self._rows(self.sampler, epoch, b))
            if self.sampler_b is not None:
                batch.update(self._gather(self.independent, self._rows(self.sampler_b, *divmod(k, self.per_epoch_b))))
            yield batch
            k += 1


def gather_rows(a: np.ndarray | RowSubset | torch.Tensor, sel: torch.Tensor,
                device: torch.device | None = None) -> torch.Tensor:
    """a[sel] as a tensor that owns its memory. A numpy array (a memmap) is read in ascending row
    order, which walks the file forwards (readahead helps), and the rows are put back in the
    sampler's order as they land; the rows go straight into pinned memory when bound for a GPU,
    so the copy to it needs no staging buffer and need not block."""
    if isinstance(a, torch.Tensor):
        return a[sel]
    rows = sel.numpy()
    order = np.argsort(rows, kind="stable")
    pin = device is not None and device.type == "cuda"
    dtype = torch.from_numpy(np.empty(0, a.dtype)).dtype  # numpy's dtype as torch names it
    out = torch.empty((len(rows), *a.shape[1:]), dtype=dtype, pin_memory=pin)
    out.numpy()[order] = a[rows[order]]  # (B, ...) copied from the map; nothing else of `a` is read
    return out
