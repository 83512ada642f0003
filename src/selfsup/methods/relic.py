"""ReLIC (Mitrovic, McWilliams, Walker, Buesing, Blundell 2021, "Representation Learning via
Invariant Causal Mechanisms", arXiv 2010.07922) and ReLICv2 (Tomasev, Bica, McWilliams, Buesing,
Pascanu, Blundell, Mitrovic 2022, "Pushing the limits of self-supervised ResNets: Can we
outperform supervised learning without labels on ImageNet?", arXiv 2201.05119).

Both add an explicit invariance penalty to instance discrimination: the likelihood of an image's
identity over the batch, computed from one view against the other, must not change when the two
views swap roles. The loss of one (online, target) pair of view batches is
:func:`selfsup.losses.relic_loss`,

    alpha * NLL + beta * KL(p_online || sg[p_target]),

the NLL being the in-batch contrastive term of the online view against the target view, the KL
running from the online view's likelihood over the target candidates (rows of the score matrix
online x target) to the target view's likelihood over the online candidates (its columns), the
latter under a stop-gradient (exact formula in that function). With two networks the column is
the target network's output of image i scoring the online outputs, not the online network's other
view scoring target outputs: each pair's loss sees one online and one target output batch only,
as ReLICv2's pseudo-code has it (the small crops have no target output); the reasoning is in
``relic_loss_terms``.

ReLIC (v1, class ``ReLIC``): one network f (encoder + 2-layer MLP critic), two views, candidates
from the other view, the loss averaged over both orders of the pair (the paper sums its KL over
the ordered augmentation pairs a_lk, a_qt). v1 writes the contrastive weight as 1 and the
invariance weight as alpha: that is ``beta`` here (``alpha`` stays 1).

ReLICv2 (class ``ReLICv2``): an online network f (encoder + projector) and a target network g,
its exponential moving average (g <- gamma g + (1 - gamma) f after every optimizer step, gamma
rising from ``base_momentum`` to 1 on BYOL's cosine schedule). Multi-crop: the first ``num_large``
views (large crops) go through both networks, the small crops through the online network only;
every online view is scored against every target large view, the same crop included, and the sum
is divided by (L + S) x L, as the paper's pseudo-code does. There is no predictor: the pseudo-code
compares online and target outputs directly. Augmentations are BYOL's (solarization on the second
large view), and with probability 0.1 a crop has its background removed by an unsupervised
foreground mask (``views.options.background``, see ``selfsup.data.views.background_removal``).

Defaults: temperature 0.1, alpha = beta = 1 (ours, the loss's defaults), base momentum 0.996
(BYOL's, which ReLICv2 takes over), 2 large views, background removal p = 0.1 (ReLICv2's).

Deviations (small images / CPU budget; see configs/relic.yaml, configs/relicv2.yaml): ResNet-18
with the CIFAR stem and 32 px views instead of ResNet-50 at 224/96 px; projector 2048-128; a
2 x 32 px + 4 x 16 px multi-crop without blur; the CIFAR recipe's base momentum is 0.99, not
0.996: a CIFAR run has a sixth of ImageNet's steps or fewer (500 epochs of about 98 steps against
1000 of 312), and on the cosine schedule the mean of 1 - m over a run is (1 - m0) / 2, so from
0.996 a run of a few hundred steps ends with most of the random init still in the target
(0.998^156 = 0.73 of it after 156 steps; 0.995^156 = 0.46 from 0.99). Over the full 500-epoch
recipe either value moves the target far from its init; the difference is in short and budgeted
runs. BYOL's CIFAR recipe here also starts at 0.99 (solo-learn's CIFAR value). The saliency masks
come from our label-free estimator; negatives are the whole batch of every process (the
pseudo-code's loss takes a number of negatives, ``n_e``, which we do not subsample); background
removal is drawn per image and view, independently (the pseudo-code draws it per large crop and
lets the small crops reuse the last draw); v1 uses ReLICv2's stop-gradient in its KL too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from selfsup import dist
from selfsup.errors import SelfSupError
from selfsup.losses import relic_loss_terms
from selfsup.methods.base import Context, Method
from selfsup.models import MLP, ema_update, momentum_at, momentum_copy


def _pair_losses(online: list[Tensor], targets: list[Tensor], temperature: float, alpha: float, beta: float,
                 skip_same: bool) -> dict[str, Tensor]:
    """Mean ReLIC loss (and its two terms) over every (online i, target j) pair of views."""
    sums = {"loss": 0.0, "contrastive": 0.0, "kl": 0.0}
    count = 0
    for i, o in enumerate(online):
        for j, t in enumerate(targets):
            if skip_same and i == j:
                continue
            terms = relic_loss_terms(o, t, temperature, alpha, beta)
            for k in sums:
                sums[k] = sums[k] + getattr(terms, k)
            count += 1
    return {k: v / count for k, v in sums.items()}


def _encode_by_size(encoder: Callable[[Tensor], Tensor], views: list[Tensor]) -> list[Tensor]:
    """Encode views, one forward pass per run of equal-sized views (global crops, local crops)."""
    out: list[Tensor] = []
    start = 0
    while start < len(views):
        end = start
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        out += encoder(torch.cat(views[start:end])).chunk(end - start)
        start = end
    return out


class ReLIC(Method):
    """ReLIC v1: SimCLR-like single network, two views, contrastive NLL + beta x invariance KL."""

    def __init__(self, backbone: nn.Module, projection_dim: int = 128, hidden_dim: int = 2048,
                 temperature: float = 0.1, alpha: float = 1.0, beta: float = 1.0):
        super().__init__(backbone)
        self.projector = MLP(backbone.out_dim, hidden_dim, projection_dim, layers=2)
        self.temperature, self.alpha, self.beta = temperature, alpha, beta

    def online(self, x: Tensor) -> Tensor:
        return self.projector(self.backbone(x))

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        if len(views) < 2:
            raise SelfSupError(f"ReLIC needs 2 views per image, the recipe gives {len(views)}; use views.recipe=simclr")
        z = _encode_by_size(self.online, views[:2])
        return self.objective(z, z)

    def objective(self, online: list[Tensor], target: list[Tensor]) -> dict[str, Tensor]:
        """Mean ReLIC loss over every (online view, target view) pair, on the batch of all processes.

        Passing the same list twice means one network (v1): its views are scored against each
        other, never against themselves, and candidates carry gradients to their owners.
        """
        one_network = online is target
        online = [dist.gather_with_grad(v) for v in online]
        target = online if one_network else [dist.gather_no_grad(t) for t in target]
        return _pair_losses(online, target, self.temperature, self.alpha, self.beta, skip_same=one_network)


class ReLICv2(ReLIC):
    """ReLICv2: online network against an EMA target network, multi-crop, background removal."""

    def __init__(self, backbone: nn.Module, projection_dim: int = 128, hidden_dim: int = 2048,
                 temperature: float = 0.1, alpha: float = 1.0, beta: float = 1.0, base_momentum: float = 0.996,
                 num_large: int = 2):
        super().__init__(backbone, projection_dim, hidden_dim, temperature, alpha, beta)
        if num_large < 1:
            raise SelfSupError(f"num_large={num_large}: ReLICv2 needs at least one large view for the target")
        self.base_momentum, self.num_large = base_momentum, num_large
        self.target_backbone = momentum_copy(self.backbone)
        self.target_projector = momentum_copy(self.projector)

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        if len(views) < self.num_large:
            raise SelfSupError(f"ReLICv2 has num_large={self.num_large} large views but the recipe gives "
                               f"{len(views)} views; use views.recipe=multicrop or lower method.num_large")
        online = _encode_by_size(self.online, views)
        with torch.no_grad():
            target = _encode_by_size(self.target, views[: self.num_large])
        return self.objective(online, target)

    def target(self, x: Tensor) -> Tensor:
        return self.target_projector(self.target_backbone(x))

    def on_step_end(self, ctx: Context) -> None:
        m = momentum_at(ctx.step, ctx.total_steps, self.base_momentum)
        ema_update(self.target_backbone, self.backbone, m)
        ema_update(self.target_projector, self.projector, m)
        ctx.log["momentum"] = m
