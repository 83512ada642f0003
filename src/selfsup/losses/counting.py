"""Counting visual primitives: the whole image's counts equal the sum of its tiles' counts."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from selfsup.errors import SelfSupError
from selfsup.losses.precision import fp32

__all__ = ["CountingTerms", "counting_loss", "counting_loss_terms"]


class CountingTerms(NamedTuple):
    """The counting objective and its two parts, for logging."""

    loss: Tensor
    """equivariance + contrastive, averaged over the batch: the value to minimise."""
    equivariance: Tensor
    """Mean ||phi(D(x)) - sum_j phi(T_j(x))||^2 (per count: its mean over the counts)."""
    contrastive: Tensor
    """Mean max(0, M - ||phi(D(y)) - sum_j phi(T_j(x))||^2) (per count: the hinge on each count)."""


@fp32
def counting_loss_terms(down: Tensor, tiles: Tensor, other_down: Tensor, margin: float = 10.0,
                        per_count: bool = False) -> CountingTerms:
    r"""Noroozi, Pirsiavash & Favaro (2017), "Representation Learning by Learning to Count",
    arXiv:1708.06734, the contrastive counting loss: with :math:`\phi` the counting features, D
    downsampling, T_j the 2x2 tiling and y another image,

    .. math::
        \ell(x, y) = \bigl\|\phi(D\circ x) - \textstyle\sum_j \phi(T_j\circ x)\bigr\|^2
        + \max\Bigl\{0,\; M - \bigl\|\phi(D\circ y) - \textstyle\sum_j \phi(T_j\circ x)\bigr\|^2\Bigr\}

    averaged over the batch. The contrastive term rules out the trivial solution phi = 0.

    ``per_count=True`` is not the paper's equation but the form of a public TensorFlow
    reimplementation (clvrai/Representation-Learning-by-Learning-to-Count: VGG-19, Adam at 1e-4):
    both terms are taken per count k and averaged over the counts and the batch, the hinge included,

    .. math::
        \ell(x, y) = \frac{1}{K}\sum_k \Bigl[\bigl(\phi_k(D\circ x) - \textstyle\sum_j \phi_k(T_j\circ x)\bigr)^2
        + \max\bigl\{0,\; M - \bigl(\phi_k(D\circ y) - \textstyle\sum_j \phi_k(T_j\circ x)\bigr)^2\bigr\}\Bigr]

    so every count, not only the vector as a whole, must tell x from y.

    Args:
        down: ``(B, D)`` features of the downsampled images ``phi(D(x))``.
        tiles: ``(B, T, D)`` features of each image's tiles ``phi(T_j(x))``.
        other_down: ``(B, D)`` features of the downsampled other images ``phi(D(y))``.
        margin: M (paper: 10).
        per_count: the hinge on each count and means over the counts (see above) instead of the
            paper's hinge on the squared norm.
    """
    if down.ndim != 2 or other_down.shape != down.shape:
        raise SelfSupError(f"counting loss: down and other_down must both be (B, D), got {tuple(down.shape)} and "
                           f"{tuple(other_down.shape)}")
    if tiles.ndim != 3 or tiles.shape[0] != down.shape[0] or tiles.shape[2] != down.shape[1]:
        raise SelfSupError(f"counting loss: tiles must be (B, T, D) = ({down.shape[0]}, T, {down.shape[1]}), "
                           f"got {tuple(tiles.shape)}")
    if margin < 0:
        raise SelfSupError(f"counting loss: margin must be >= 0, got {margin}; the paper uses 10")
    total = tiles.sum(1)
    if per_count:
        equivariance = (down - total).pow(2).mean(1)
        contrastive = (margin - (other_down - total).pow(2)).clamp_min(0).mean(1)
    else:
        equivariance = (down - total).pow(2).sum(1)
        contrastive = (margin - (other_down - total).pow(2).sum(1)).clamp_min(0)
    return CountingTerms((equivariance + contrastive).mean(), equivariance.mean(), contrastive.mean())


@fp32
def counting_loss(down: Tensor, tiles: Tensor, other_down: Tensor, margin: float = 10.0,
                  per_count: bool = False) -> Tensor:
    """The counting loss (see :func:`counting_loss_terms`)."""
    return counting_loss_terms(down, tiles, other_down, margin, per_count).loss
