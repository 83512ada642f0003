"""Where contrastive negatives come from: in-batch, memory bank, momentum queue."""

from selfsup.negatives.sources import InBatch, MemoryBank, Queue

__all__ = ["InBatch", "MemoryBank", "Queue"]
