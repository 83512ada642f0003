"""Invariant and Spreading instance features (Ye, Zhang, Yuen, Chang 2019, "Unsupervised
Embedding Learning via Invariant and Spreading Instance Feature", arXiv 1904.03436).

End-to-end instance classification inside the batch: the embeddings of the batch's images serve
as the classifier weights (no memory bank, no momentum encoder), so the augmented view x^_i must
be classified as instance i (invariance) and every other image x_j must not be (spreading); see
``losses.invaspread_loss`` for the likelihood. Paper defaults (CIFAR-10 with ResNet-18): 128-d
L2-normalized embedding, tau 0.1, batch 128, SGD lr 0.03, momentum 0.9, weight decay 5e-4.
The paper's x_i is the image itself; the authors' code augments both branches, as we do (the
first view is x, the second x^). The batch is global: every process's embeddings are gathered
with their gradients.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import dist
from selfsup.losses import invaspread_loss
from selfsup.methods.base import Method


class InvaSpread(Method):
    def __init__(self, backbone: nn.Module, embedding_dim: int = 128, temperature: float = 0.1):
        super().__init__(backbone)
        self.embedding = nn.Linear(backbone.out_dim, embedding_dim)
        self.temperature = temperature

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        f, f_hat = (F.normalize(self.embedding(self.backbone(v)), dim=1) for v in views[:2])
        loss = invaspread_loss(dist.gather_with_grad(f), dist.gather_with_grad(f_hat), self.temperature)
        return {"loss": loss, "positive_similarity": (f * f_hat).sum(dim=1).mean().detach()}
