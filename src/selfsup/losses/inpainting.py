"""Context encoders: L2 reconstruction of the removed region, the overlapping border weighted more."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import SelfSupError
from selfsup.losses.precision import fp32

__all__ = ["inpainting_loss", "inpainting_weights"]


@fp32
def inpainting_weights(mask: Tensor, overlap: int = 0, overlap_weight: float = 10.0) -> Tensor:
    """Per-pixel loss weights ``(B, 1, H, W)``: 1 on the removed pixels, ``overlap_weight`` on the
    context pixels within ``overlap`` pixels (Chebyshev distance) of them, 0 elsewhere."""
    if mask.dtype != torch.bool or mask.ndim != 4 or mask.shape[1] != 1:
        raise SelfSupError(f"inpainting loss: mask must be a bool (B, 1, H, W) tensor, got {mask.dtype} "
                           f"{tuple(mask.shape)}; build it with central_mask or random_region_mask")
    if overlap < 0 or overlap_weight < 0:
        raise SelfSupError(f"inpainting loss: overlap and overlap_weight must be >= 0, got {overlap}, {overlap_weight}")
    m = mask.float()
    if overlap == 0:
        return m
    grown = F.max_pool2d(m, 2 * overlap + 1, stride=1, padding=overlap)
    return m + overlap_weight * (grown - m)


@fp32
def inpainting_loss(pred: Tensor, target: Tensor, mask: Tensor, overlap: int = 0,
                    overlap_weight: float = 10.0) -> Tensor:
    r"""Pathak, Krähenbühl, Donahue, Darrell & Efros (2016), "Context Encoders: Feature Learning by
    Inpainting", arXiv:1604.07379, eq. 1, the masked L2 reconstruction loss
    :math:`\| \hat M \odot (x - F((1 - \hat M) \odot x)) \|_2^2`, with the released code's
    refinement: the prediction also covers an ``overlap``-pixel border of context around the
    removed region, whose squared errors weigh ``overlap_weight`` (10) times more.

    Returns the weighted mean of the squared errors over the weighted pixels and the channels:
    ``sum(w (pred - target)^2) / (C sum(w))`` with w from :func:`inpainting_weights`; pixels of
    weight 0 (the context outside the border) do not enter the loss.
    """
    if pred.shape != target.shape or pred.ndim != 4:
        raise SelfSupError(f"inpainting loss: pred and target must be (B, C, H, W) of one shape, got "
                           f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if mask.shape[0] != pred.shape[0] or mask.shape[2:] != pred.shape[2:]:
        raise SelfSupError(f"inpainting loss: mask {tuple(mask.shape)} does not match images {tuple(pred.shape)}")
    w = inpainting_weights(mask, overlap, overlap_weight).to(pred.dtype)
    return (w * (pred - target).pow(2)).sum() / (pred.shape[1] * w.sum()).clamp_min(1e-12)
