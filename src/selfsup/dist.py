"""Thin helpers over torch.distributed that are no-ops in a single process.

Every cross-batch piece of the library goes through these, so the same code runs on one process
and under torchrun. Gathers come in two kinds: ``gather_with_grad`` (in-batch negatives, whose
gradients must flow back to the rank that produced them) and ``gather_no_grad`` (keys for a queue
or a memory bank, which receive no gradient).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.distributed as dist

_LOCAL: ContextVar[bool] = ContextVar("selfsup_dist_local", default=False)


def is_distributed() -> bool:
    return not _LOCAL.get() and dist.is_available() and dist.is_initialized()


@contextmanager
def local() -> Iterator[None]:
    """Inside the block every helper here acts as on one process: no collective runs.

    For work that each rank repeats on the same complete data, such as a clustering E-step over
    the whole data set: combining the ranks' copies would count every row world_size times.
    """
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over all processes (in place and returned); identity on one process."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(x).div_(world_size()) if is_distributed() else x


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, rank order, detached."""
    if not is_distributed():
        return x.detach()
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.detach().contiguous())
    return torch.cat(out)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's loss may depend on this rank's rows: sum those gradients, keep our slice.
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        n = grad.shape[0] // world_size()
        return grad[rank() * n : (rank() + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0; gradients flow back to their owners.

    Equal-sized shards are required (the trainer drops the last incomplete batch).
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def shard(x: torch.Tensor) -> torch.Tensor:
    """This process's rows of ``x``, something drawn for the whole global batch (dim 0 = world_size
    x the local batch). Every rank draws the same numbers from the same RNG state and keeps its
    slice, so N processes use exactly what one process with the whole batch would."""
    return x.tensor_split(world_size())[rank()] if is_distributed() else x


def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_distributed():
        dist.broadcast(x, src)
    return x
