"""Deep InfoMax (Hjelm, Fedorov, Lavoie-Marchildon, Grewal, Bachman, Trischler, Bengio 2019,
"Learning deep representations by mutual information estimation and maximization",
arXiv 1808.06670).

The encoder's last feature map gives one local feature per location; its pooled vector, through a
small MLP, is the global feature. Local DIM maximizes a lower bound on the mutual information
between the global feature of an image and each of its local features, with the other images of
the batch as the product-of-marginals samples (Eq. 6): ``estimator="jsd"`` is the Jensen-Shannon
bound (Eq. 2), ``"infonce"`` the InfoNCE bound (Eq. 5). The scores are dot products of the two
sides after their own small encoders (a 1x1-convolution net for the locals, an MLP for the
global), the paper's encoder-and-dot-product scorer; ``feature_dim`` and ``hidden_dim`` are their
widths.

Paper setting we keep: local objective only (beta = 1, alpha = 0), batch negatives. Deviations:
no prior-matching term (gamma = 0.1 in the paper; it needs an adversarial discriminator), and the
local map is the backbone's last one (``forward_features``: 4x4 at 32 px with the CIFAR stem)
where the paper takes an 8x8 map of its own convolutional encoder. Views: one lightly augmented
view (``views.recipe: single``); the paper trains on the plain images.
"""

from __future__ import annotations

from torch import Tensor, nn

from selfsup import dist
from selfsup.errors import SelfSupError
from selfsup.losses import dim_local_loss
from selfsup.methods.base import Method
from selfsup.models import MLP


class DeepInfoMax(Method):
    def __init__(self, backbone: nn.Module, estimator: str = "jsd", feature_dim: int = 64, hidden_dim: int = 512):
        super().__init__(backbone)
        if estimator not in ("jsd", "infonce"):
            raise SelfSupError(f"estimator must be 'jsd' or 'infonce', got {estimator!r}")
        if not hasattr(backbone, "forward_features"):
            raise SelfSupError(f"{type(self).__name__} needs local features: the backbone must have forward_features "
                               "(the ResNets of selfsup.models do)")
        c = backbone.out_dim
        self.global_encoder = MLP(c, hidden_dim, feature_dim, layers=2)
        self.local_encoder = nn.Sequential(nn.Conv2d(c, hidden_dim, 1, bias=False), nn.BatchNorm2d(hidden_dim),
                                           nn.ReLU(inplace=True), nn.Conv2d(hidden_dim, feature_dim, 1))
        self.estimator = estimator

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(global features (B, feature_dim), local features (B, feature_dim, H, W)) of ``x``."""
        fmap = self.backbone.forward_features(x)
        return self.global_encoder(fmap.mean(dim=(2, 3))), self.local_encoder(fmap)

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        g, local = self.encode(views[0])
        # The other images of every process are the negatives; gradients flow back to their owners.
        loss = dim_local_loss(dist.gather_with_grad(local.float()), dist.gather_with_grad(g.float()), self.estimator)
        return {"loss": loss}
