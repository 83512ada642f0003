"""Triplet ranking loss with a margin: the loss of the siamese-triplet networks of Wang & Gupta
(2015, "Unsupervised Learning of Visual Representations using Videos", arXiv 1505.00687) that
Transitive Invariance (Wang, He & Gupta 2017, arXiv 1708.02901) trains with."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import SelfSupError
from selfsup.losses.precision import fp32

DISTANCES = ("cosine", "euclidean")


@fp32
def pair_distance(x: Tensor, y: Tensor, distance: str = "cosine") -> Tensor:
    """Row-wise distance between two (N, D) tensors: 1 - cos(x, y), or the Euclidean norm."""
    if distance == "cosine":
        return 1.0 - F.cosine_similarity(x, y, dim=1, eps=1e-8)
    return (x - y).norm(dim=1)


@fp32
def triplet_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 0.5,
                 distance: str = "cosine", weight: Tensor | None = None) -> Tensor:
    """Mean hinge loss over triplets: max(0, D(a, p) - D(a, n) + m).

    The papers use the cosine distance D(x, y) = 1 - x.y / (||x|| ||y||) and margin m = 0.5.
    ``anchor``, ``positive``, ``negative``: (N, D) rows forming N triplets. ``weight``: optional
    (N,) non-negative weights (e.g. a 0/1 mask of the triplets that exist); the result is then the
    weighted mean, and 0 (with a gradient of zeros) when every weight is 0.
    """
    if anchor.ndim != 2 or anchor.shape != positive.shape or anchor.shape != negative.shape:
        raise SelfSupError(f"triplet_loss needs three (N, D) tensors of one shape, got {tuple(anchor.shape)}, "
                           f"{tuple(positive.shape)} and {tuple(negative.shape)}")
    if distance not in DISTANCES:
        raise SelfSupError(f"triplet_loss distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
    if margin < 0:
        raise SelfSupError(f"triplet_loss margin must be zero or positive, got {margin}")
    a, p, n = anchor.float(), positive.float(), negative.float()
    hinge = (pair_distance(a, p, distance) - pair_distance(a, n, distance) + margin).clamp_min(0)
    if weight is None:
        return hinge.mean()
    if weight.shape != hinge.shape:
        raise SelfSupError(f"triplet_loss weight must have shape ({hinge.shape[0]},), got {tuple(weight.shape)}")
    w = weight.to(hinge.dtype)
    return (hinge * w).sum() / w.sum().clamp_min(torch.finfo(hinge.dtype).tiny)
