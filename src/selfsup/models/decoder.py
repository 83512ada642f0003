"""A small convolutional decoder for dense pretext tasks (colorization, inpainting).

The backbone's ``forward_features`` map is upsampled back towards the input resolution: each stage
is a bilinear x2 upsampling, a 3x3 convolution, BatchNorm and ReLU; a 1x1 convolution gives the
output channels and a final bilinear resize gives exactly the requested size (which covers
backbones whose stride is not a power of two of the stages). The decoder is discarded after
pre-training; only the backbone is evaluated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.errors import SelfSupError


@torch.no_grad()
def feature_geometry(backbone: nn.Module, size: int = 64) -> tuple[int, int]:
    """(channels, stride) of ``backbone.forward_features``, measured on a blank image in eval mode
    (so BatchNorm statistics are untouched)."""
    if not hasattr(backbone, "forward_features"):
        raise SelfSupError(f"{type(backbone).__name__} has no forward_features(); dense pretext tasks need a "
                           "backbone that returns its last feature map (e.g. selfsup.models.ResNet)")
    was_training = backbone.training
    backbone.eval()
    p = next(backbone.parameters())
    f = backbone.forward_features(torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype))
    backbone.train(was_training)
    return int(f.shape[1]), max(1, size // int(f.shape[-1]))


def upsampling_stages(stride: int, output_stride: int = 1) -> int:
    """x2 stages that bring a map of ``stride`` to ``output_stride`` (the last resize does any rest)."""
    return max(0, round(math.log2(max(1.0, stride / output_stride))))


class UpsampleDecoder(nn.Module):
    """``stages`` x2 upsampling stages whose widths halve from ``hidden_dim`` (default: half the
    input channels), then a 1x1 convolution to ``out_dim``; ``forward`` resizes to ``size``."""

    def __init__(self, in_dim: int, out_dim: int, stages: int, hidden_dim: int | None = None, min_dim: int = 8):
        super().__init__()
        mods: list[nn.Module] = []
        d = in_dim
        for i in range(stages):
            h = max(min_dim, (hidden_dim or in_dim // 2) // 2**i)
            mods += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                     nn.Conv2d(d, h, 3, padding=1, bias=False), nn.BatchNorm2d(h), nn.ReLU(inplace=True)]
            d = h
        mods.append(nn.Conv2d(d, out_dim, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        out = self.net(features)
        if tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out
