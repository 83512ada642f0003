"""The four sources of negatives behind one small interface.

Contrastive methods differ mostly in where their negatives come from (He et al. 2019, Fig. 2):

- end-to-end / in-batch (Ye et al. 2019; SimCLR, Chen et al. 2020): the other keys of the
  current batch, gathered from every process WITH gradient;
- memory bank (Wu et al. 2018, InstDisc): one stored vector per data set index, refreshed by a
  momentum update of the rows just seen; no gradient;
- momentum queue (MoCo, He et al. 2019): a FIFO of keys from a momentum encoder; no gradient.

Every source answers three questions: which extra negatives does this step use (``negatives``),
are the batch's other keys negatives too (``in_batch``), and is row i of the stored negatives the
query's own image i (``indexed``: a memory bank's row is that image's positive, not a negative);
and takes the step's keys afterwards (``update``). So SimCLR can take a queue, and MoCo a memory
bank, by configuration: ``build_source`` makes one from a method's arguments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import dist
from selfsup.errors import SelfSupError


class InBatch(nn.Module):
    """The other keys of the batch are the negatives; nothing is stored."""

    in_batch = True
    indexed = False

    def negatives(self) -> Tensor | None:
        return None

    def update(self, keys: Tensor, index: Tensor) -> None:
        pass


class Queue(nn.Module):
    """A FIFO of ``size`` keys of dimension ``dim`` (MoCo's dictionary).

    Initialized with random unit vectors as MoCo does; ``update`` enqueues the keys of all
    processes (detached, in rank order) and drops the oldest, wrapping around the end.
    """

    in_batch = False
    indexed = False

    def __init__(self, size: int, dim: int, seed: int = 0):
        super().__init__()
        if size < 1 or dim < 1:
            raise SelfSupError(f"queue size and dim must be positive, got size={size}, dim={dim}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("queue", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # keys ever enqueued

    @property
    def size(self) -> int:
        return self.queue.shape[0]

    def negatives(self) -> Tensor:
        return self.queue.clone()

    @torch.no_grad()
    def update(self, keys: Tensor, index: Tensor | None = None) -> None:
        keys = dist.gather_no_grad(keys).to(self.queue.dtype)
        n = keys.shape[0]
        if n > self.size:
            keys, n = keys[-self.size :], self.size
        pos = (self.ptr + torch.arange(n, device=keys.device)) % self.size
        self.queue[pos] = keys
        self.ptr.copy_((self.ptr + n) % self.size)
        self.count.add_(n)

    @property
    def full(self) -> bool:
        return int(self.count) >= self.size


class MemoryBank(nn.Module):
    """One unit vector per data set index (InstDisc's memory bank, Wu et al. 2018, Sec. 3.2).

    ``update(features, index)`` sets v_i <- normalize(m v_i + (1 - m) f_i) for exactly the rows
    seen (all processes' rows, no gradient). ``negatives()`` returns the whole bank; methods that
    sample (InstDisc's NCE) call ``sample``.
    """

    in_batch = False
    indexed = True

    def __init__(self, size: int, dim: int, momentum: float = 0.5, seed: int = 0):
        super().__init__()
        if size < 1 or dim < 1:
            raise SelfSupError(f"memory bank needs one row per image: size={size}, dim={dim}")
        if not 0.0 <= momentum < 1.0:
            raise SelfSupError(f"memory bank momentum must be in [0, 1), got {momentum}")
        g = torch.Generator().manual_seed(seed)
        # InstDisc's initialization: uniform in [-1/sqrt(d/3), 1/sqrt(d/3)], then unit length.
        bound = 1.0 / (dim / 3) ** 0.5
        self.register_buffer("bank", F.normalize(torch.rand(size, dim, generator=g) * 2 * bound - bound, dim=1))
        self.momentum = momentum

    def negatives(self) -> Tensor:
        return self.bank.clone()

    def rows(self, index: Tensor) -> Tensor:
        return self.bank[index].clone()

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        """Uniformly sampled row indices (the NCE noise distribution P_n = 1/N)."""
        return torch.randint(0, self.bank.shape[0], shape, generator=generator).to(self.bank.device)

    @torch.no_grad()
    def update(self, features: Tensor, index: Tensor) -> None:
        features = dist.gather_no_grad(features).to(self.bank.dtype)
        index = dist.gather_no_grad(index)
        mixed = self.momentum * self.bank[index] + (1 - self.momentum) * features
        self.bank[index] = F.normalize(mixed, dim=1)


SOURCES = ("in_batch", "queue", "bank")


def build_source(name: str, dim: int, *, queue_size: int = 4096, dataset_size: int = 0,
                 bank_momentum: float = 0.5) -> InBatch | Queue | MemoryBank:
    """The source of negatives a method's ``negatives`` argument names, for keys of size ``dim``."""
    if name == "in_batch":
        return InBatch()
    if name == "queue":
        return Queue(queue_size, dim)
    if name == "bank":
        if dataset_size < 1:
            raise SelfSupError("negatives='bank' keeps one row per image and needs dataset_size (the trainer fills "
                               "it in; pass dataset_size=len(dataset) when building the method by hand)")
        return MemoryBank(dataset_size, dim, bank_momentum)
    raise SelfSupError(f"unknown source of negatives {name!r}; choose one of: {', '.join(SOURCES)}")
