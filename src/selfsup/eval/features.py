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


def augmented_batches(dataset: ArrayDataset, index: Tensor, mean, std, size: int, batch_size: int,
                      generator: torch.Generator, device: torch.device | str = "cpu",
                      scale: tuple[float, float] = (0.08, 1.0)) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch over ``dataset[index]`` in a random order: random resized crop to ``size`` and
    horizontal flip (the training transform of the linear and semi-supervised protocols),
    normalized. Batches of a single image are dropped (BatchNorm cannot train on them)."""
    order = index[torch.randperm(len(index), generator=generator)]
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        if len(idx) < 2:
            continue
        x = A.to_float(dataset.images[idx].to(device))
        x = A.random_resized_crop(x, size, generator, scale, flip_p=0.5)
        yield A.normalize(x, mean, std), dataset.labels[idx].to(device)


def topk_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    """Percentage of rows whose label is among the ``k`` largest logits."""
    k = min(k, logits.shape[1])
    return 100.0 * (logits.topk(k, 1).indices == labels[:, None]).any(1).float().mean().item()
