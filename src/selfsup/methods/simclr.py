"""SimCLR (Chen, Kornblith, Norouzi, Hinton 2020, "A Simple Framework for Contrastive Learning of
Visual Representations", arXiv 2002.05709).

Two augmented views of each image go through the encoder f and a projection head g; NT-Xent pulls
the two projections together and pushes them from the 2(N-1) other views of the batch (in-batch
negatives). Paper defaults: 2-layer MLP head, 128-d output, LARS, lr 0.3 x B/256 (ImageNet),
weight decay 1e-6, warm-up 10 epochs + cosine. For CIFAR-10 (App. B.9) the paper uses the 3x3
stem, colour strength 0.5, no blur, and temperature 0.5, which is our default.
"""

from __future__ import annotations

from torch import Tensor, nn

from selfsup import dist
from selfsup.losses import nt_xent
from selfsup.methods.base import Method
from selfsup.models import MLP


class SimCLR(Method):
    def __init__(self, backbone: nn.Module, projection_dim: int = 128, hidden_dim: int = 2048,
                 temperature: float = 0.5):
        super().__init__(backbone)
        self.projector = MLP(backbone.out_dim, hidden_dim, projection_dim, layers=2)
        self.temperature = temperature

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        z1, z2 = (self.projector(self.backbone(v)) for v in views[:2])
        # In-batch negatives come from every process; gradients flow back to their owners.
        loss = nt_xent(dist.gather_with_grad(z1), dist.gather_with_grad(z2), self.temperature)
        return {"loss": loss, "embeddings": z1.detach()}
