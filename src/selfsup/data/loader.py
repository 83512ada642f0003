"""Batches of ``(uint8 images, labels, indices)`` in a seeded order that can resume mid-epoch.

The order of an epoch is a permutation drawn from ``seed + epoch``; a global batch is cut into
``world_size`` equal contiguous shards, one per process, so the same global batch is seen on 1 or
N processes (which is what the distributed equivalence tests rely on). In-memory data sets are
indexed directly (one gather per batch, optionally on the GPU); image folders are decoded by
``DataLoader`` workers. Each item from a folder carries a flag saying its own file could not be
read (a neighbour stood in), so the main process can count unreadable files in :attr:`failed`
even though workers are separate processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from selfsup.data.datasets import ArrayDataset, ImageFolder
from selfsup.errors import SelfSupError

Batch = tuple[Tensor, Tensor, Tensor]


class BatchLoader:
    def __init__(self, dataset: ArrayDataset | ImageFolder, batch_size: int, shuffle: bool = True,
                 drop_last: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, device: torch.device | str = "cpu", pin_memory: bool = False):
        if batch_size < 1:
            raise SelfSupError(f"batch size must be at least 1, got {batch_size}")
        global_batch = batch_size * world_size
        if drop_last and len(dataset) < global_batch:
            raise SelfSupError(
                f"data set has {len(dataset)} images, fewer than one batch of {global_batch} "
                f"({batch_size} per process x {world_size}); lower train.batch_size"
            )
        self.dataset, self.batch_size, self.shuffle, self.drop_last = dataset, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_workers, self.device, self.pin_memory = num_workers, torch.device(device), pin_memory
        self.epoch = 0
        # Maps the epoch's permutation to the indices batched (Method.epoch_order; the trainer sets it).
        self.reorder: Callable[[Tensor], Tensor] | None = None
        self.failed: set[int] = set()  # data set indices whose file could not be read (folders only)
        self._images = None
        if isinstance(dataset, ArrayDataset):
            # Keep the whole uint8 set on the training device: a batch is then one gather.
            self._images = dataset.images.to(self.device)
            self._labels = dataset.labels.to(self.device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        global_batch = self.batch_size * self.world_size
        n = len(self.dataset)
        return n // global_batch if self.drop_last else -(-n // global_batch)

    def order(self) -> Tensor:
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(n, generator=g)

    def _shards(self, start_batch: int) -> list[Tensor]:
        order = self.order()
        if self.reorder is not None:
            order = self.reorder(order)
            if order.shape != (len(self.dataset),):
                raise SelfSupError(f"the method's epoch_order returned {tuple(order.shape)} indices for a data set "
                                   f"of {len(self.dataset)}; it must return one index per image")
        gb = self.batch_size * self.world_size
        out = []
        for b in range(start_batch, len(self)):
            glob = order[b * gb : (b + 1) * gb]
            per = -(-len(glob) // self.world_size)
            out.append(glob[self.rank * per : (self.rank + 1) * per])
        return out

    def iter_from(self, start_batch: int = 0) -> Iterator[Batch]:
        """Batches of the current epoch, starting at batch ``start_batch`` (for exact resume)."""
        shards = self._shards(start_batch)
        if self._images is not None:
            for idx in shards:
                i = idx.to(self.device)
                yield self._images[i], self._labels[i], i
            return
        flagged = isinstance(self.dataset, ImageFolder)
        loader = DataLoader(_Flagged(self.dataset) if flagged else self.dataset,
                            batch_sampler=[s.tolist() for s in shards], num_workers=self.num_workers,
                            pin_memory=self.pin_memory and self.device.type == "cuda", persistent_workers=False)
        for item in loader:
            images, labels, index = item[:3]
            if flagged:
                self.failed.update(index[item[3]].tolist())
            yield (images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True),
                   index.to(self.device, non_blocking=True))

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)


class _Flagged:
    """An image folder whose items also say whether their own file was unreadable."""

    def __init__(self, folder: ImageFolder):
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int, bool]:
        return self.folder.get(i)
