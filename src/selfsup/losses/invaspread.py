"""Invariant and Spreading instance features (Ye, Zhang, Yuen, Chang 2019, "Unsupervised Embedding
Learning via Invariant and Spreading Instance Feature", arXiv 1904.03436): the batch-wise
instance classification loss of Sec. 3.1."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses.infonce import _check_matrix, _check_positive_scalar, _check_same_shape
from selfsup.losses.precision import fp32

__all__ = ["invaspread_loss"]


def _log1mexp(a: Tensor) -> Tensor:
    """log(1 - exp(a)) for a <= 0, accurate on both sides of -log 2 (Maechler 2012)."""
    return torch.where(a > -math.log(2.0), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


@fp32
def invaspread_loss(features: Tensor, augmented: Tensor, temperature: float | Tensor = 0.1) -> Tensor:
    r"""Negative log-likelihood that each augmented sample is recognized as its own instance and no
    other sample of the batch is.

    With :math:`f_i` and :math:`\hat f_i` the L2-normalized embeddings of image :math:`x_i` and of
    its augmentation :math:`\hat x_i` (m instances in the batch), the paper defines

    .. math::
        P(i \mid \hat x_i) = \frac{\exp(f_i^\top \hat f_i / \tau)}{\sum_{k=1}^{m} \exp(f_k^\top \hat f_i / \tau)},
        \qquad
        P(i \mid x_j) = \frac{\exp(f_i^\top f_j / \tau)}{\sum_{k=1}^{m} \exp(f_k^\top f_j / \tau)}, \ j \ne i

    and, treating the events as independent, minimizes over the batch

    .. math::
        J = -\sum_i \log P(i \mid \hat x_i) - \sum_i \sum_{j \ne i} \log\bigl(1 - P(i \mid x_j)\bigr)

    which we return divided by m (a mean over instances; the paper writes the sum). The instance
    features :math:`f_k` act as the classifier weights, so every gradient reaches the network
    directly (no memory bank). The sum over k includes k = j, so :math:`P(i \mid x_j) \le 1/2`
    and every log stays finite.

    The authors' released code computes a symmetric variant: both views play :math:`\hat x`,
    the softmax runs over the 2m - 1 other embeddings of the batch (no self term), and the
    "classifier" side is detached. We follow the paper's equations.

    Args:
        features: (m, D) embeddings of the images :math:`x_i` (normalized here).
        augmented: (m, D) embeddings of their augmentations :math:`\hat x_i`.
        temperature: tau > 0 (paper: 0.1).
    """
    _check_matrix(features, "features", min_rows=2)
    _check_matrix(augmented, "augmented", min_rows=2)
    _check_same_shape(features, augmented, "features", "augmented")
    t = _check_positive_scalar(temperature, "temperature")
    f = F.normalize(features.float(), dim=1)
    f_hat = F.normalize(augmented.float(), dim=1)
    m = f.shape[0]
    # Column j holds the scores of sample j against every instance k: softmax over dim 0.
    log_p_hat = torch.log_softmax(f @ f_hat.T / t, dim=0)
    log_p = torch.log_softmax(f @ f.T / t, dim=0)
    off_diagonal = ~torch.eye(m, dtype=torch.bool, device=f.device)
    # The diagonal is replaced before log1mexp so that no inf (and no NaN gradient) is ever formed.
    log_not_i = _log1mexp(torch.where(off_diagonal, log_p, torch.full_like(log_p, -1.0)))
    return -(log_p_hat.diagonal().sum() + log_not_i[off_diagonal].sum()) / m
