"""MoCo v3 (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers", arXiv 2104.02057).

No queue: each view's prediction q = h(g(f(x))) is contrasted with the momentum encoder's keys
k = g_m(f_m(x')) of the other view for the whole (all-process) batch, InfoNCE with the other
images' keys as negatives, scaled by 2T, summed over both view orders (Algorithm 1). The
momentum rises from 0.99 to 1 with a half-cosine over training.

Paper defaults: projector 3-layer MLP, predictor 2-layer MLP, hidden 4096, output 256, BatchNorm
on every layer of both (the outputs' without affine parameters, as in SimCLR); T = 1.0 for
ResNet-50 (0.2 for ViTs); LARS, lr 0.3 x B/256 (300 epochs), weight decay 1e-6, BYOL's
augmentations with crops from 20%. Keys are gathered across processes without gradient and
queries with gradient, so each process computes the global batch's loss.

The heads follow the authors' released ResNet code (``moco/builder.py``: ``_build_mlp`` and
``MoCo_ResNet``): every hidden layer is Linear (no bias) + BN + ReLU, the output layer a Linear
without bias; the projector's output then has BN without affine, the predictor's has none
(``_build_mlp(2, dim, mlp_dim, dim, False)``), so q is the predictor's plain linear output. Only
their ViT predictor ends in that BN too (``predictor_last_bn=True`` gives it), as the paper's
"every layer" describes; our backbones are ResNets, so the default is the ResNet code's. The
other difference from that code: it uses a 2-layer projector for ResNets, the paper 3 layers
(``projector_layers=2`` gives the code's).

CIFAR recipe (configs/moco_v3.yaml): ResNet-18 with the 3x3 stem at batch 512, and BYOL's view
pair without its Gaussian blur at 32 px: the blur's sigma (0.1-2 px) was set for 224 px views, and
at 32 px the same pixels are a seven times larger share of the image; SimCLR's CIFAR setting
(arXiv 2002.05709, App. B.9) and solo-learn's CIFAR MoCo v3 recipe drop the blur too. The
solarization of the second view stays.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup import dist
from selfsup.losses import info_nce_in_batch
from selfsup.methods.base import Context, Method
from selfsup.models import MLP, ema_update, momentum_at, momentum_copy


class MoCoV3(Method):
    def __init__(self, backbone: nn.Module, projection_dim: int = 256, hidden_dim: int = 4096,
                 projector_layers: int = 3, temperature: float = 1.0, momentum: float = 0.99,
                 momentum_schedule: str = "cosine", predictor_last_bn: bool = False):
        super().__init__(backbone)
        momentum_at(0, 1, momentum, schedule=momentum_schedule)  # a bad schedule name fails here, not mid-run
        self.projector = MLP(backbone.out_dim, hidden_dim, projection_dim, layers=projector_layers, last_bn=True)
        # The authors' ResNet predictor: BN after the hidden layer only, none after the output.
        self.predictor = MLP(projection_dim, hidden_dim, projection_dim, layers=2, last_bn=predictor_last_bn,
                             last_bias=False)
        self.momentum_encoder = momentum_copy(nn.Sequential(backbone, self.projector))
        self.temperature, self.momentum, self.momentum_schedule = temperature, momentum, momentum_schedule

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        q1, q2 = (self.predictor(self.projector(self.backbone(v))) for v in views[:2])
        with torch.no_grad():
            k1, k2 = (dist.gather_no_grad(self.momentum_encoder(v)) for v in views[:2])
        q1, q2 = dist.gather_with_grad(q1), dist.gather_with_grad(q2)
        loss = (info_nce_in_batch(q1, k2, self.temperature, scale_by_temperature=True)
                + info_nce_in_batch(q2, k1, self.temperature, scale_by_temperature=True))
        return {"loss": loss}

    def on_step_end(self, ctx: Context) -> None:
        m = momentum_at(ctx.step, ctx.total_steps, self.momentum, schedule=self.momentum_schedule)
        ema_update(self.momentum_encoder, nn.Sequential(self.backbone, self.projector), m)
        ctx.log["momentum"] = m
