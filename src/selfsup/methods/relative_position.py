"""Relative position of patches, or context prediction (Doersch, Gupta & Efros 2015, "Unsupervised
Visual Representation Learning by Context Prediction", arXiv 1505.05192).

A centre patch and one of its 8 neighbours in a 3x3 layout are cut from an image; the network
classifies where the neighbour lies (8-way cross-entropy). Both patches go through the same
encoder (a pair of towers with shared weights and a per-patch fully connected layer), the two
features are concatenated (centre first) and an MLP predicts the position. Paper defaults: 96-px
patches with a 48-px gap and up to 7 px of jitter per patch (so the task cannot be solved by
continuing lines or textures across the boundary), AlexNet/VGG towers with 4096-wide fully
connected layers; against chromatic aberration they drop or project colour channels, and some
patches are downsampled (to as little as 100 pixels) and upsampled back.

Deviations: a ResNet instead of AlexNet; BatchNorm in the head. At CIFAR scale the layout must fit
in a 32-px view: 8-px patches with a 3-px gap and 1 px of jitter (3x8 + 2x3 + 2x1 = 32). The
encoder shrinks such patches to 1x1 at its last stage; ``min_patch_size`` upsamples patches
(bilinear) to at least that side. Colour dropping/projection and the pixelation augmentation are
not applied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data.pretext import RELATIVE_POSITION_OFFSETS, relative_position_pairs
from selfsup.methods.base import Method
from selfsup.methods.jigsaw import Encoder, upsample_to
from selfsup.models import MLP


class RelativePositionTask(nn.Module):
    """The patch-pair task for any encoder: the pair generator and the 8-way classifier head."""

    def __init__(self, feature_dim: int, patch_size: int = 8, gap: int = 3, jitter: int = 1,
                 min_patch_size: int = 0, patch_dim: int = 512, hidden_dim: int = 4096):
        super().__init__()
        self.patch_size, self.gap, self.jitter, self.min_patch_size = patch_size, gap, jitter, min_patch_size
        self.patch_fc = nn.Sequential(nn.Linear(feature_dim, patch_dim, bias=False), nn.BatchNorm1d(patch_dim),
                                      nn.ReLU(inplace=True))
        self.classifier = MLP(2 * patch_dim, hidden_dim, len(RELATIVE_POSITION_OFFSETS), layers=2)

    def pairs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(centre (B, C, p, p), neighbour (B, C, p, p), labels (B,))``; label k means the neighbour
        is ``RELATIVE_POSITION_OFFSETS[k]`` (row, column) grid steps from the centre."""
        return relative_position_pairs(x, self.patch_size, self.gap, self.jitter)

    def forward(self, encode: Encoder, x: Tensor) -> dict[str, Tensor]:
        center, neighbor, labels = self.pairs(x)
        # one pass over both patches, so BatchNorm normalizes them with the same statistics
        features = self.patch_fc(encode(upsample_to(torch.cat((center, neighbor)), self.min_patch_size)))
        f_center, f_neighbor = features.chunk(2)
        logits = self.classifier(torch.cat((f_center, f_neighbor), dim=1))
        loss = F.cross_entropy(logits.float(), labels)
        return {"loss": loss, "accuracy": (logits.argmax(1) == labels).float().mean()}


class RelativePosition(Method):
    def __init__(self, backbone: nn.Module, patch_size: int = 8, gap: int = 3, jitter: int = 1,
                 min_patch_size: int = 0, patch_dim: int = 512, hidden_dim: int = 4096):
        super().__init__(backbone)
        self.context = RelativePositionTask(backbone.out_dim, patch_size, gap, jitter, min_patch_size, patch_dim,
                                            hidden_dim)

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        return self.context(self.backbone, views[0])
