"""BYOL's regression loss between the online prediction and the target projection."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from selfsup.losses.infonce import _check_matrix, _check_same_shape
from selfsup.losses.precision import fp32

__all__ = ["byol_loss"]


@fp32
def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    r"""Normalised mean squared error between online predictions and target projections.

    Grill et al. (2020), "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
    arXiv:2006.07733, eq. (2):

    .. math::
        \mathcal{L} = \frac{1}{N}\sum_{i=1}^{N}
            \left\lVert \frac{p_i}{\lVert p_i\rVert} - \frac{z_i}{\lVert z_i\rVert}\right\rVert_2^2
          = \frac{1}{N}\sum_{i=1}^{N} \bigl(2 - 2\cos(p_i, \operatorname{sg}(z_i))\bigr)

    ``z`` is detached here: the target branch is updated only by the moving average, never by this
    loss, and that stop-gradient is part of the method rather than a caller's choice.
    BYOL symmetrises by adding the loss with the two views swapped; the caller does that.

    Args:
        p: (N, D) online predictions q_theta(z_theta).
        z: (N, D) target projections z'_xi.
    """
    _check_matrix(p, "p")
    _check_matrix(z, "z")
    _check_same_shape(p, z, "p", "z")
    cos = (F.normalize(p, dim=1) * F.normalize(z.detach(), dim=1)).sum(dim=1)
    return (2.0 - 2.0 * cos).mean()
