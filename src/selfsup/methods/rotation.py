"""RotNet (Gidaris, Singh, Komodakis 2018, "Unsupervised Representation Learning by Predicting Image
Rotations", arXiv 1803.07728).

The network classifies by how much an image was rotated: 0, 90, 180 or 270 degrees. To tell, it
has to locate and recognise the objects and their canonical orientation. Every image of the batch
goes in with all four rotations at once (``data.pretext.rotate_batch``), which the paper found
better than one random rotation per image; the loss is the cross-entropy of the 4-way classifier,
averaged over the 4B rotated copies.

Paper defaults (CIFAR-10 experiments): a Network-In-Network backbone whose last block, global
pooling and a linear layer form the rotation classifier; SGD with momentum 0.9, weight decay 5e-4,
batch 128 images (x4 rotations), lr 0.1 divided by 5 after 30, 60 and 80 of 100 epochs.

Deviations: the backbone is our ResNet and the classifier a linear layer (``hidden_dim: 0``) or a
2-layer MLP on its pooled features; the schedule is the trainer's warm-up + cosine, not steps.
Rotations act on the normalized view, which commutes with per-channel normalization. Horizontal
flips in the view recipe remove part of the orientation signal from asymmetric images such as
digits (on the digits RotNet gained 9 kNN points with flips and 12 without, 4 epochs); the tests
turn them off, the CIFAR recipe keeps them as the paper's training does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data.pretext import rotate_batch
from selfsup.methods.base import Method
from selfsup.models import MLP


class RotNet(Method):
    def __init__(self, backbone: nn.Module, hidden_dim: int = 0):
        super().__init__(backbone)
        if hidden_dim < 0:
            raise ValueError(f"hidden_dim must be >= 0 (0: a linear classifier), got {hidden_dim}")
        d = backbone.out_dim
        self.classifier = nn.Linear(d, 4) if hidden_dim == 0 else MLP(d, hidden_dim, 4, layers=2)

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        x, labels = rotate_batch(views[0])
        logits = self.classifier(self.backbone(x)).float()
        with torch.no_grad():
            accuracy = (logits.argmax(1) == labels).float().mean() * 100
        return {"loss": F.cross_entropy(logits, labels), "rotation_acc": accuracy}
