"""Frozen features of a whole data set, computed once and cached by the callers."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data import augment as A
from selfsup.data.datasets import ArrayDataset


def eval_batches(dataset: ArrayDataset, mean, std, size: int | None = None, batch_size: int = 512,
                 device: torch.device | str = "cpu") -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """The data set in order, unaugmented: resized to ``size`` when given, normalized."""
    for s in range(0, len(dataset), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(dataset)))
        x = A.to_float(dataset.images[idx].to(device))
        if size is not None and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        yield A.normalize(x, mean, std), dataset.labels[idx].to(device), idx.to(device)


@torch.no_grad()
def extract_features(encoder: nn.Module, dataset: ArrayDataset, mean, std, size: int | None = None,
                     batch_size: int = 512, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """(features (N, D) float32 on CPU, labels (N,)) of ``encoder`` in eval mode."""
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    for x, y, _ in eval_batches(dataset, mean, std, size, batch_size, device):
        feats.append(encoder(x).float().cpu())
        labels.append(y.cpu())
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)
