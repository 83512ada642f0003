"""InfoNCE in its queue form (CPC / MoCo), its in-batch form (MoCo v3) and CLIP's symmetric form.

Also holds the small input checks shared by the other loss modules of this family, so that
every loss reports a bad input the same way (a ``SelfSupError`` naming the argument).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import SelfSupError
from selfsup.losses.precision import fp32

__all__ = ["info_nce", "info_nce_in_batch", "clip_loss"]


def _check_matrix(x: object, name: str, *, min_rows: int = 1) -> Tensor:
    if not isinstance(x, Tensor):
        raise SelfSupError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() != 2:
        raise SelfSupError(f"{name} must be 2-D (rows, dim), got shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise SelfSupError(f"{name} must be a floating-point tensor, got dtype {x.dtype}.")
    if x.shape[0] < min_rows or x.shape[1] < 1:
        raise SelfSupError(
            f"{name} needs at least {min_rows} row(s) and 1 column, got shape {tuple(x.shape)}."
        )
    return x


def _check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise SelfSupError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )


def _check_same_dim(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise SelfSupError(
            f"{name_a} and {name_b} must share the feature dimension, got {a.shape[-1]} and {b.shape[-1]}."
        )


def _check_positive_scalar(value: float | Tensor, name: str) -> float | Tensor:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise SelfSupError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}.")
        # A tensor value may live on an accelerator and be learnable; checking its sign would force a
        # device sync on every step, so only plain numbers are range-checked.
        return value.reshape(())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SelfSupError(f"{name} must be a number or a scalar tensor, got {type(value).__name__}.")
    if not (value > 0 and math.isfinite(value)):
        raise SelfSupError(f"{name} must be a finite number > 0, got {value}.")
    return float(value)


def _check_index(index: object, name: str, length: int, upper: int) -> Tensor:
    if not isinstance(index, Tensor) or index.dtype not in (torch.int64, torch.int32):
        raise SelfSupError(f"{name} must be an integer (long) tensor.")
    if index.dim() != 1 or index.shape[0] != length:
        raise SelfSupError(f"{name} must have shape ({length},), got {tuple(index.shape)}.")
    if length and (int(index.min()) < 0 or int(index.max()) >= upper):
        raise SelfSupError(f"{name} holds values outside [0, {upper}).")
    return index.long()


@fp32
def info_nce(
    query: Tensor,
    key: Tensor,
    negatives: Tensor,
    temperature: float | Tensor = 0.07,
) -> Tensor:
    r"""InfoNCE with one positive key per query and a set of negatives shared by all queries.

    Oord, Li & Vinyals (2018), "Representation Learning with Contrastive Predictive Coding",
    arXiv:1807.03748, in the form MoCo uses it: He, Fan, Wu, Xie & Girshick (2019),
    "Momentum Contrast for Unsupervised Visual Representation Learning", arXiv:1911.05722, eq. (1).

    With :math:`q_i, k_i, n_j` the L2-normalised rows of ``query``, ``key``, ``negatives``:

    .. math::
        \mathcal{L} = \frac{1}{N}\sum_{i=1}^{N}
            -\log \frac{\exp(q_i\cdot k_i/T)}{\exp(q_i\cdot k_i/T) + \sum_{j=1}^{K}\exp(q_i\cdot n_j/T)}

    i.e. the mean cross-entropy of the logits ``[q·k, q·negatives^T] / T`` with target 0: the positive
    logit is column 0.

    Args:
        query: (N, D) queries.
        key: (N, D) positive keys, row ``i`` is the positive of query ``i``.
        negatives: (K, D) negatives shared by every query (MoCo's queue), K >= 1.
        temperature: T > 0; a number or a scalar tensor.

    Nothing is detached here: gradients reach ``key`` and ``negatives`` if they require them.
    MoCo's keys and queue come from the momentum encoder and carry no gradient, so the caller
    detaches them (or produces them under ``torch.no_grad``).
    """
    _check_matrix(query, "query")
    _check_matrix(key, "key")
    _check_matrix(negatives, "negatives")
    _check_same_shape(query, key, "query", "key")
    _check_same_dim(query, negatives, "query", "negatives")
    t = _check_positive_scalar(temperature, "temperature")

    q = F.normalize(query, dim=1)
    k = F.normalize(key, dim=1)
    n = F.normalize(negatives, dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    logits = torch.cat([positive, q @ n.T], dim=1) / t
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target)


@fp32
def info_nce_in_batch(
    query: Tensor,
    key: Tensor,
    temperature: float | Tensor = 0.2,
    scale_by_temperature: bool = False,
) -> Tensor:
    r"""InfoNCE where the keys of the other rows of the batch are the negatives.

    Chen, Xie & He (2021), "An Empirical Study of Training Self-Supervised Vision Transformers"
    (MoCo v3), arXiv:2104.02057, Algorithm 1. With :math:`q_i, k_i` the L2-normalised rows:

    .. math::
        \mathcal{L} = c \cdot \frac{1}{N}\sum_{i=1}^{N}
            -\log \frac{\exp(q_i\cdot k_i/T)}{\sum_{j=1}^{N}\exp(q_i\cdot k_j/T)},
        \qquad c = 2T \text{ if scale\_by\_temperature else } 1

    i.e. cross-entropy of ``q k^T / T`` against targets ``arange(N)``. MoCo v3 multiplies by
    :math:`2T` so that the gradient scale does not depend on T; this is off by default so the
    plain InfoNCE value is returned. MoCo v3 sums this loss over both (query, key) view orders.
    The default T = 0.2 is MoCo v3's ViT setting.

    Nothing is detached: MoCo v3's keys come from the momentum encoder, so the caller detaches them.
    """
    _check_matrix(query, "query")
    _check_matrix(key, "key")
    _check_same_shape(query, key, "query", "key")
    t = _check_positive_scalar(temperature, "temperature")

    q = F.normalize(query, dim=1)
    k = F.normalize(key, dim=1)
    logits = (q @ k.T) / t
    target = torch.arange(q.shape[0], device=q.device)
    loss = F.cross_entropy(logits, target)
    if scale_by_temperature:
        loss = loss * (2.0 * t)
    return loss


@fp32
def clip_loss(a: Tensor, b: Tensor, temperature: float | Tensor = 0.07) -> Tensor:
    r"""CLIP's symmetric in-batch cross-entropy.

    Radford et al. (2021), "Learning Transferable Visual Models From Natural Language Supervision",
    arXiv:2103.00020, Figure 3. With :math:`a_i, b_i` the L2-normalised rows and
    :math:`S_{ij} = a_i\cdot b_j / T`:

    .. math::
        \mathcal{L} = \frac{1}{2}\left[
            \frac{1}{N}\sum_i -\log\frac{e^{S_{ii}}}{\sum_j e^{S_{ij}}}
          + \frac{1}{N}\sum_j -\log\frac{e^{S_{jj}}}{\sum_i e^{S_{ij}}}\right]

    (the a->b and b->a directions), so the value is symmetric in ``a`` and ``b``.

    ``temperature`` may be a scalar tensor so it can be learned; CLIP learns a log inverse
    temperature :math:`s` and uses :math:`T = e^{-s}` (initialised at T = 0.07, the default here),
    so pass ``temperature=torch.exp(-s)``.
    """
    _check_matrix(a, "a")
    _check_matrix(b, "b")
    _check_same_shape(a, b, "a", "b")
    t = _check_positive_scalar(temperature, "temperature")

    logits = (F.normalize(a, dim=1) @ F.normalize(b, dim=1).T) / t
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
