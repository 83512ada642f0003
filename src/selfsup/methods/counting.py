"""Counting (Noroozi, Pirsiavash, Favaro 2017, "Representation Learning by Learning to Count",
arXiv 1708.06734).

The network phi "counts" visual primitives: a vector of non-negative counts per image. Counts do
not change with scale and add up over a partition, so the counts of the downsampled image D(x)
must equal the sum of the counts of its 2x2 tiles T_j(x), all of the same size. The trivial
solution phi = 0 is ruled out by a contrastive term that keeps another image y's counts at least
sqrt(M) away from x's tile sum:

    loss = ||phi(D(x)) - sum_j phi(T_j(x))||^2 + max(0, M - ||phi(D(y)) - sum_j phi(T_j(x))||^2)

(``losses.counting``, M = 10). D picks a random interpolation (bilinear, bicubic, area, nearest)
per image, so the network cannot tell D(x) from a tile by its resampling artefacts, and a random
fraction ``grayscale_p`` of the images is made grey, so that counts do not rest on colour alone
(``data.pretext``). phi is the backbone's pooled features followed by a 2-layer MLP and a ReLU,
``count_dim`` = 1000 outputs as in the paper. The partner y of image i is image i xor 1 of the
process's batch (pairs (0, 1), (2, 3), ...; with an odd batch the last image pairs with the
first): the loss is then a mean of per-pair terms and, for even per-process batches, the same on
one process and on several.

The trivial solution is also absorbing: once every count's ReLU is off for all inputs no gradient
flows, and the loss sits at exactly M (equivariance 0, contrastive M) for good. What sends a run
there is the first step. A freshly initialized head gives counts whose tile sum is far from the
downsampled image's (equivariance ~450 on the digits, contrastive term inactive), and the first
SGD step on that gradient drives every count's pre-activation below zero at once (active counts
50% -> 0.2% in one step; measured at 16 px, width 1/8, lr 0.0125). The recipe therefore clips the
global gradient norm at 1 (``train.grad_clip``; not in the paper): the equivariance term then
shrinks over a few dozen steps until the contrastive term engages, and the loss settles below M
(about 6 on the digits) with a sparse set of active counts. Without the clip the counts collapse
in most seeds; a BatchNorm before the ReLU, a softplus instead of it, lr warm-up and lower weight
decay did not prevent that, Adam at lr 1e-4 to 1e-3 did. ``active_counts`` (the percentage of
count entries above 0) is logged so that a run shows which case it is in.

``hinge``: with the paper's hinge on the squared norm of the whole count vector (``"vector"``), a
single count that differs by sqrt(M) between two images satisfies it, and the clipped runs do keep
only about 1% of the counts active (digits, 6 epochs at lr 0.1 with 128 counts: 0.83%; on 10,000
CIFAR-10 images 0.1% after 4 epochs). ``"count"`` takes the hinge on each count and both terms as
means over the counts, the form of a public TensorFlow reimplementation
(clvrai/Representation-Learning-by-Learning-to-Count), so that every count must tell the two images
apart: on the same digits run 52% of the counts stay active and kNN ends at 84.4 against 83.8
(random init 68.5). On the full CIFAR-10 train split at the 30-minute budget the two end level (kNN
top-1 35.42 with the paper's form, 0.07% of counts active; 35.12 with ``"count"``, 65% active;
random init 29.24), so the recipe keeps the paper's form.

Paper defaults: AlexNet on 114 px tiles of a 228 px crop (phi's last layer fc 1000 + ReLU), M =
10. Deviations: a ResNet backbone with an MLP head; with ``views.size`` = 32 the tiles and D(x)
are 16 px, so the encoder trains at half the resolution it is evaluated at (the paper's AlexNet
is likewise trained on 114 px and transferred at 227 px); grey conversion is applied to the
normalized view (exactly the normalized grey image when the channel statistics are equal, as on
grey data; otherwise a grey image of slightly different contrast); ``grayscale_p`` = 0.3 is our
choice, the paper gives no rate we rely on.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup.data.pretext import counting_tiles, random_downsample, random_grayscale
from selfsup.errors import SelfSupError
from selfsup.losses import counting_loss_terms
from selfsup.methods.base import Method
from selfsup.models import MLP

HINGES = ("vector", "count")  # on the count vector's squared norm (the paper), or on each count


def partner_index(b: int, device: torch.device | str | None = None) -> Tensor:
    """The contrastive partner of each image of a batch of ``b``: i xor 1 (the last one pairs with
    the first when ``b`` is odd)."""
    idx = torch.arange(b, device=device) ^ 1
    if b % 2:
        idx[-1] = 0
    return idx


class Counting(Method):
    def __init__(self, backbone: nn.Module, count_dim: int = 1000, hidden_dim: int = 2048, margin: float = 10.0,
                 grayscale_p: float = 0.3, hinge: str = "vector"):
        super().__init__(backbone)
        if not 0 <= grayscale_p <= 1:
            raise ValueError(f"grayscale_p must be a probability, got {grayscale_p}")
        if hinge not in HINGES:
            raise SelfSupError(f"counting hinge must be 'vector' (the paper: on the squared norm of the count "
                               f"vector) or 'count' (on each count), got {hinge!r}")
        self.margin, self.grayscale_p, self.hinge = margin, grayscale_p, hinge
        self.counter = nn.Sequential(MLP(backbone.out_dim, hidden_dim, count_dim, layers=2), nn.ReLU())

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        x = views[0]
        b, c, h, w = x.shape
        if b < 2:
            raise ValueError("counting needs at least 2 images per batch (the contrastive term pairs them)")
        x = random_grayscale(x, self.grayscale_p)
        tiles = counting_tiles(x)  # (B, 4, C, h/2, w/2)
        down = random_downsample(x, tuple(tiles.shape[-2:]), per_sample=True)
        phi = self.counter(self.backbone(torch.cat((down, tiles.flatten(0, 1))))).float()
        phi_down, phi_tiles = phi[:b], phi[b:].view(b, 4, -1)
        terms = counting_loss_terms(phi_down, phi_tiles, phi_down[partner_index(b, x.device)], self.margin,
                                    per_count=self.hinge == "count")
        with torch.no_grad():
            active = (phi > 0).float().mean() * 100
        return {"loss": terms.loss, "equivariance": terms.equivariance, "contrastive": terms.contrastive,
                "active_counts": active}
