"""What the contrastive methods share: a loss against a configured source of negatives.

Any method that contrasts a query with a positive key can take its negatives from the batch, a
FIFO queue or a memory bank (``negatives: in_batch | queue | bank``, see ``selfsup.negatives``):
this is the one place that turns a source into the logits of ``losses.contrastive_loss``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from selfsup import dist
from selfsup.losses import contrastive_loss
from selfsup.negatives import InBatch, MemoryBank, Queue


def contrast(source: InBatch | Queue | MemoryBank, query: Tensor, key: Tensor, temperature: float | Tensor,
             index: Tensor) -> Tensor:
    """InfoNCE of ``query`` against ``key`` with the negatives ``source`` provides this step.

    In-batch negatives are the keys of every process, gathered with their gradients (the loss is
    then the global batch's, the same on every process). A memory bank's row of the query's own
    image is left out of its negatives.
    """
    if source.in_batch:
        query, key = dist.gather_with_grad(query), dist.gather_with_grad(key)
    exclude = index if source.indexed else None
    return contrastive_loss(query, key, temperature, source.negatives(), source.in_batch, exclude)


def store_keys(source: InBatch | Queue | MemoryBank, keys: Tensor, index: Tensor) -> None:
    """Hand this step's keys (unit length, detached) to the source: enqueue, or refresh bank rows."""
    source.update(F.normalize(keys.detach().float(), dim=1), index)
