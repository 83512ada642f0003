"""Where contrastive negatives come from: in-batch, memory bank, momentum queue."""

from selfsup.negatives.sources import SOURCES, InBatch, MemoryBank, Queue, build_source

__all__ = ["SOURCES", "InBatch", "MemoryBank", "Queue", "build_source"]
