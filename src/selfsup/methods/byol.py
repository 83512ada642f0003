"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning", arXiv 2006.07733).

No negatives: the online network (encoder f, projector g, predictor q) predicts the target
network's projection of the other view; the loss is the normalized MSE 2 - 2 cos(q(z), z'),
symmetrized over the two views (Eq. 2). The target (f, g) is an exponential moving average of the
online weights, its momentum rising from 0.996 to 1 with a cosine over the optimizer steps
(tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2). The two views come from BYOL's asymmetric
recipe (``views.recipe: byol``: blur always on the first view, solarize on the second).

Paper defaults (ImageNet): projector and predictor MLPs with hidden 4096 (BatchNorm, ReLU) and
output 256; LARS, base lr 0.2 x B/256, weight decay 1.5e-6, 10 warm-up epochs, cosine, batch 4096.
Small-image setups differ (see configs/byol.yaml); the hidden width is an argument.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup.losses import byol_loss
from selfsup.methods.base import Context, Method
from selfsup.models import MLP, ema_update, momentum_at, momentum_copy


class BYOL(Method):
    def __init__(self, backbone: nn.Module, projection_dim: int = 256, hidden_dim: int = 4096,
                 momentum: float = 0.996, momentum_schedule: str = "cosine"):
        super().__init__(backbone)
        momentum_at(0, 1, momentum, schedule=momentum_schedule)  # a bad schedule name fails here, not mid-run
        self.projector = MLP(backbone.out_dim, hidden_dim, projection_dim, layers=2)
        self.predictor = MLP(projection_dim, hidden_dim, projection_dim, layers=2)
        self.target = momentum_copy(nn.Sequential(backbone, self.projector))
        self.momentum, self.momentum_schedule = momentum, momentum_schedule

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        p1, p2 = (self.predictor(self.projector(self.backbone(v))) for v in views[:2])
        with torch.no_grad():
            z1, z2 = (self.target(v) for v in views[:2])
        return {"loss": byol_loss(p1, z2) + byol_loss(p2, z1)}

    def on_step_end(self, ctx: Context) -> None:
        m = momentum_at(ctx.step, ctx.total_steps, self.momentum, schedule=self.momentum_schedule)
        ema_update(self.target, nn.Sequential(self.backbone, self.projector), m)
        ctx.log["momentum"] = m
