"""AMDIM: Augmented Multiscale Deep InfoMax (Bachman, Hjelm, Buchwalter 2019, "Learning
Representations by Maximizing Mutual Information Across Views", arXiv 1906.00910).

Deep InfoMax across views: the global feature of one augmented view must identify the local
features of another view of the same image among every location of every other image in the
batch (an NCE bound), averaged over both directions, with scores soft-clipped by c tanh(s / c) and a small
penalty on their squares (``losses.amdim_loss``). The global and local encoders are those of
``methods.dim.DeepInfoMax``.

Paper setting we keep: two views with random crops, flips, colour jitter and grayscale, the
1/sqrt(D) score scaling, clip c = 20 and penalty 0.04 (the authors' code). Deviation: the paper
contrasts three pairs of scales (global-to-5x5, global-to-7x7, 5x5-to-5x5 of its own 128 px
encoder) in 1024-d embeddings (the released code's default); at small scale we contrast the global
feature with the backbone's last map only, at ``feature_dim`` dimensions.
"""

from __future__ import annotations

from torch import Tensor, nn

from selfsup import dist
from selfsup.losses import amdim_loss
from selfsup.methods.dim import DeepInfoMax


class AMDIM(DeepInfoMax):
    def __init__(self, backbone: nn.Module, feature_dim: int = 64, hidden_dim: int = 512, clip: float = 20.0,
                 score_penalty: float = 0.04):
        super().__init__(backbone, "infonce", feature_dim, hidden_dim)
        self.clip, self.score_penalty = clip, score_penalty

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        (ga, la), (gb, lb) = (self.encode(v) for v in views[:2])
        ga, la, gb, lb = (dist.gather_with_grad(t.float()) for t in (ga, la, gb, lb))
        a_to_b = amdim_loss(ga, lb, self.clip, self.score_penalty)
        b_to_a = amdim_loss(gb, la, self.clip, self.score_penalty)
        return {"loss": (a_to_b + b_to_a) / 2, "loss_a_to_b": a_to_b.detach(), "loss_b_to_a": b_to_a.detach()}
