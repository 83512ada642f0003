"""CLIP-style contrastive pairs (Radford et al. 2021, "Learning Transferable Visual Models From
Natural Language Supervision", arXiv 2103.00020).

Two inputs that belong together (an image and its caption in CLIP; here the two views a recipe
makes, or two modalities a recipe delivers as views) are embedded by two encoders, each followed
by a linear projection into a shared space; the symmetric in-batch cross-entropy over the cosine
similarity matrix pulls the pairs together (Fig. 3). The temperature is learned as CLIP does: a
log-scale parameter initialized to log(1/0.07), the logit scale exp(s) clipped at 100.

By default both inputs go through the one ``backbone`` (two views of one modality); with
``separate_encoder=True`` the second input has its own encoder, which starts as a copy of the
first and is trained independently. Evaluation uses ``backbone`` (the first input's encoder).
CLIP trains transformers with Adam on 400M pairs; here any backbone and the trainer's optimizer.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from selfsup import dist
from selfsup.errors import SelfSupError
from selfsup.losses import clip_loss
from selfsup.methods.base import Method


class CLIP(Method):
    def __init__(self, backbone: nn.Module, embed_dim: int = 128, separate_encoder: bool = False,
                 temperature: float = 0.07, max_logit_scale: float = 100.0):
        super().__init__(backbone)
        if not (temperature > 0 and 1 / temperature <= max_logit_scale):
            raise SelfSupError(f"the initial temperature {temperature} must be positive and at least "
                               f"1/max_logit_scale = {1 / max_logit_scale:g}")
        self.encoder_b = copy.deepcopy(backbone) if separate_encoder else None
        self.projection_a = nn.Linear(backbone.out_dim, embed_dim, bias=False)
        self.projection_b = nn.Linear(backbone.out_dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))
        self.max_logit_scale = max_logit_scale

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        encoder_b = self.backbone if self.encoder_b is None else self.encoder_b
        a = self.projection_a(self.backbone(views[0]))
        b = self.projection_b(encoder_b(views[1]))
        temperature = 1 / self.logit_scale.exp().clamp(max=self.max_logit_scale)
        loss = clip_loss(dist.gather_with_grad(a), dist.gather_with_grad(b), temperature)
        return {"loss": loss, "temperature": temperature.detach()}
