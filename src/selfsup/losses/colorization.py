"""Colorization as classification: class-rebalanced cross-entropy over quantized ab bins."""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.errors import SelfSupError
from selfsup.losses.precision import fp32

__all__ = ["colorization_loss"]


@fp32
def colorization_loss(logits: Tensor, target_index: Tensor, target_weight: Tensor,
                      class_weights: Tensor | None = None) -> Tensor:
    r"""Zhang, Isola & Efros (2016), "Colorful Image Colorization", arXiv:1603.08511, eq. 2:

    .. math::
        L_{cl}(\hat Z, Z) = -\frac{1}{BHW} \sum_{b,h,w} v(Z_{b,h,w}) \sum_q Z_{b,h,w,q} \log \hat Z_{b,h,w,q},
        \qquad v(Z_{b,h,w}) = w_{q^*},\; q^* = \arg\max_q Z_{b,h,w,q}

    with :math:`\hat Z` the softmax of ``logits`` over the Q bins, Z the soft-encoded ground truth
    and w the rebalancing weights (:func:`selfsup.data.color.rebalance_weights`). The paper sums
    over pixels; we average, so the scale does not depend on the resolution.

    Args:
        logits: ``(B, Q, H, W)`` network output.
        target_index, target_weight: the sparse target of
            :func:`selfsup.data.color.encode_ab` with ``dense=False``: ``(B, k, H, W)`` bin indices,
            nearest first, and their weights (summing to 1 per pixel).
        class_weights: ``(Q,)`` rebalancing weights w; None for plain cross-entropy.
    """
    if logits.ndim != 4:
        raise SelfSupError(f"colorization_loss: logits must be (B, Q, H, W), got {tuple(logits.shape)}")
    if target_index.shape != target_weight.shape or target_index.ndim != 4 or \
            target_index.shape[0] != logits.shape[0] or target_index.shape[2:] != logits.shape[2:]:
        raise SelfSupError(f"colorization_loss: the target must be (B, k, H, W) index and weight tensors matching "
                           f"logits {tuple(logits.shape)}, got {tuple(target_index.shape)} and "
                           f"{tuple(target_weight.shape)}; build them with encode_ab(ab, centers, dense=False)")
    q = logits.shape[1]
    if class_weights is not None and class_weights.shape != (q,):
        raise SelfSupError(f"colorization_loss: class_weights must have shape ({q},), got {tuple(class_weights.shape)}")
    log_p = torch.log_softmax(logits, dim=1)
    ce = -(log_p.gather(1, target_index) * target_weight).sum(1)  # (B, H, W)
    if class_weights is not None:
        ce = ce * class_weights.to(ce.dtype)[target_index[:, 0]]
    return ce.mean()
