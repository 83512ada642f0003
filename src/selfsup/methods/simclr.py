"""SimCLR (Chen, Kornblith, Norouzi, Hinton 2020, "A Simple Framework for Contrastive Learning of
Visual Representations", arXiv 2002.05709).

Two augmented views of each image go through the encoder f and a projection head g; NT-Xent pulls
the two projections together and pushes them from the 2(N-1) other views of the batch (in-batch
negatives). Paper defaults: 2-layer MLP head, 128-d output, LARS, lr 0.3 x B/256 (ImageNet),
weight decay 1e-6, warm-up 10 epochs + cosine. For CIFAR-10 (App. B.9) the paper uses the 3x3
stem, colour strength 0.5, no blur, and temperature 0.5, the class default. The CIFAR recipe
(configs/simclr.yaml) uses 0.2: at our CPU budgets (5-20 epochs) it learns faster (measured in
BENCHMARKS.md); 0.5 is for the paper's hundreds of epochs.

``negatives`` swaps the source of negatives (not in the paper; He et al. 2019 compare the three):
``in_batch`` is NT-Xent exactly as published; ``queue`` contrasts each view's projection with the
other view's and a FIFO of ``queue_size`` past projections of both views (detached); ``bank`` with
a memory bank of one projection per image (momentum ``bank_momentum``, InstDisc's update, the mean
of the two views' unit projections), the image's own row left out. The loss is symmetric in the
views in every case.
"""

from __future__ import annotations

from torch import Tensor, nn

from selfsup import dist
from selfsup.losses import nt_xent
from selfsup.methods.base import Method
from selfsup.methods.contrastive import contrast, store_keys
from selfsup.models import MLP
from selfsup.negatives import build_source


class SimCLR(Method):
    def __init__(self, backbone: nn.Module, projection_dim: int = 128, hidden_dim: int = 2048,
                 temperature: float = 0.5, negatives: str = "in_batch", queue_size: int = 4096,
                 bank_momentum: float = 0.5, dataset_size: int = 0):
        super().__init__(backbone)
        self.projector = MLP(backbone.out_dim, hidden_dim, projection_dim, layers=2)
        self.temperature = temperature
        self.source = build_source(negatives, projection_dim, queue_size=queue_size, dataset_size=dataset_size,
                                   bank_momentum=bank_momentum)

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        z1, z2 = (self.projector(self.backbone(v)) for v in views[:2])
        if self.source.in_batch:
            # In-batch negatives come from every process; gradients flow back to their owners.
            loss = nt_xent(dist.gather_with_grad(z1), dist.gather_with_grad(z2), self.temperature)
            return {"loss": loss, "embeddings": z1.detach()}
        loss = (contrast(self.source, z1, z2, self.temperature, index)
                + contrast(self.source, z2, z1, self.temperature, index)) / 2
        if self.source.indexed:
            store_keys(self.source, nn.functional.normalize(z1, dim=1) + nn.functional.normalize(z2, dim=1), index)
        else:  # one view after the other: the queue's order is the global batch's on any number of processes
            store_keys(self.source, z1, index)
            store_keys(self.source, z2, index)
        return {"loss": loss, "embeddings": z1.detach()}
