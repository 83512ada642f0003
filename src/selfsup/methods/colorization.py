"""Colorization (Zhang, Isola, Efros 2016, "Colorful Image Colorization", arXiv 1603.08511).

The network sees only the lightness L of an image and predicts its colour, the CIE Lab a and b
channels. Colour is multi-modal (a shirt may be red or blue), so the paper predicts, per pixel, a
distribution over Q quantized ab bins (grid 10) and trains it with a cross-entropy against the
ground truth soft-encoded onto its 5 nearest bins (Gaussian, sigma 5), each pixel weighted by the
class-rebalancing weight of its nearest bin (``lamb`` 0.5 mix with uniform, eq. 3-4) so that
rare, saturated colours are not drowned by the greyish majority (eq. 2, ``loss: classification``).
``loss: regression`` is the paper's L2 baseline (eq. 1): regress ab directly, here in units of
110 (about the ab range) so the loss has a sane scale.

Data: the ``colorization`` view recipe gives, for one crop, the grey image of equal L (all three
channels equal, normalized like every view: the backbone keeps its 3-channel input and sees the
same kind of tensor as in evaluation) and the crop's colours in [0, 1] sRGB, from which the ab
targets are computed (``data.color``). The prediction is dense: ``backbone.forward_features``
feeds a small upsampling decoder (``models.decoder``) that outputs at 1/``output_stride`` of
the input side, 1/4 as in the paper; the ab targets are area-downsampled to that size.

Rebalancing needs the empirical ab distribution of the training data. It is estimated online:
``ab_distribution`` (a buffer) is the running mean of every training batch's nearest-bin
histogram (summed over processes), and ``class_weights`` (a buffer) is recomputed from it after
each batch with Gaussian smoothing (sigma 5). Early weights rest on few pixels; with ``lamb``
0.5 they stay within a factor Q + 1 of each other whatever the estimate, and the estimate
settles within the first epoch. The paper computes it once on ImageNet beforehand.

Paper defaults: Q = 313 bins (ours: 262, see ``data.color.ab_bins``), sigma 5, 5 neighbours,
lamb 0.5, output at 1/4 resolution; Adam (lr 3e-5, betas 0.9/0.99, weight decay 1e-3) on a VGG
at 256 px. Evaluation: like every method we evaluate ``backbone(x)`` on ordinary colour images
(the standard protocol); the paper reports its ImageNet linear classification on grayscale input
too, where colour features cannot help. Our backbone saw only grey images during training, so on
colour data evaluation meets a shift of input statistics, which the grayscale protocol avoids.

On grayscale data the task is empty: the embedded digits are grey, every ab is 0 and all pixels
fall in one bin, which the decoder learns to predict within an epoch; the encoder gets no useful
signal, and on the digits colorization does not beat random init (16 px, 4 epochs, SGD lr 0.4:
kNN top-1 68.5 at random init, 67.4 after). The tests train it on the digits coloured by stroke
orientation instead, where it does. ``loss: regression`` learned much less there (-2 to +4 kNN
points at lr 0.1 / 0.025; it diverged at lr 0.4), in line with the paper's preference for the
classification loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import dist
from selfsup.data.color import ab_bins, encode_ab, rebalance_weights, rgb_to_lab
from selfsup.errors import SelfSupError
from selfsup.losses import colorization_loss
from selfsup.methods.base import Method
from selfsup.models import UpsampleDecoder, feature_geometry, upsampling_stages

AB_SCALE = 110.0  # regression targets are ab / AB_SCALE


class Colorization(Method):
    def __init__(self, backbone: nn.Module, loss: str = "classification", grid: float = 10.0, sigma: float = 5.0,
                 neighbors: int = 5, lamb: float = 0.5, output_stride: int = 4):
        super().__init__(backbone)
        if loss not in ("classification", "regression"):
            raise ValueError(f"loss must be 'classification' or 'regression', got {loss!r}")
        if output_stride < 1:
            raise ValueError(f"output_stride must be >= 1, got {output_stride}")
        self.loss, self.sigma, self.neighbors, self.lamb = loss, sigma, neighbors, lamb
        self.output_stride = output_stride
        centers = ab_bins(grid)
        q = centers.shape[0]
        self.register_buffer("ab_centers", centers)
        self.register_buffer("ab_distribution", torch.zeros(q))
        self.register_buffer("class_weights", torch.ones(q))
        self.register_buffer("batches_counted", torch.zeros((), dtype=torch.long))
        channels, stride = feature_geometry(backbone)
        out = q if loss == "classification" else 2
        self.decoder = UpsampleDecoder(channels, out, upsampling_stages(stride, output_stride))

    def targets(self, colour: Tensor, size: tuple[int, int]) -> Tensor:
        """ab (B, 2, h, w) of a [0, 1] sRGB batch, area-downsampled to ``size``."""
        with torch.no_grad(), torch.autocast(colour.device.type, enabled=False):
            ab = rgb_to_lab(colour.float())[:, 1:]
            return ab if tuple(ab.shape[-2:]) == size else F.interpolate(ab, size=size, mode="area")

    def _count(self, nearest: Tensor) -> None:
        """Fold one batch's nearest-bin histogram into the running estimate; refresh the weights."""
        with torch.no_grad(), torch.autocast(nearest.device.type, enabled=False):
            counts = torch.bincount(nearest.flatten(), minlength=len(self.ab_distribution)).float()
            counts = dist.all_reduce_sum(counts)
            self.batches_counted += 1
            self.ab_distribution += (counts / counts.sum() - self.ab_distribution) / self.batches_counted
            self.class_weights.copy_(rebalance_weights(self.ab_distribution, self.lamb, self.sigma, self.ab_centers))

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        if len(views) < 2:
            raise SelfSupError("colorization needs the grey input and the colour view of one crop; "
                               "set views.recipe=colorization")
        gray, colour = views[0], views[1]
        h, w = gray.shape[-2:]
        size = (max(1, h // self.output_stride), max(1, w // self.output_stride))
        ab = self.targets(colour, size)
        out = self.decoder(self.backbone.forward_features(gray), size).float()
        if self.loss == "regression":
            return {"loss": (out - ab / AB_SCALE).pow(2).sum(1).mean()}
        index_q, weight_q = encode_ab(ab, self.ab_centers, self.sigma, self.neighbors, dense=False)
        if self.training:
            self._count(index_q[:, 0])
        loss = colorization_loss(out, index_q, weight_q, self.class_weights)
        with torch.no_grad():
            accuracy = (out.argmax(1) == index_q[:, 0]).float().mean() * 100
        return {"loss": loss, "bin_acc": accuracy}
