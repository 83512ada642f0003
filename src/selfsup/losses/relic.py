"""ReLIC / ReLICv2: instance discrimination plus an explicit invariance (KL) penalty."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import SelfSupError
from selfsup.losses.infonce import _check_matrix, _check_positive_scalar, _check_same_shape
from selfsup.losses.precision import fp32

__all__ = ["ReLICTerms", "relic_loss", "relic_loss_terms"]


class ReLICTerms(NamedTuple):
    """The ReLIC objective and its two unweighted parts, for logging."""

    loss: Tensor
    """alpha * contrastive + beta * kl: the value to minimise."""
    contrastive: Tensor
    """Mean instance-discrimination NLL (unweighted)."""
    kl: Tensor
    """Mean invariance KL (unweighted)."""


@fp32
def relic_loss_terms(
    anchor: Tensor,
    positive: Tensor,
    temperature: float | Tensor = 0.1,
    alpha: float = 1.0,
    beta: float = 1.0,
) -> ReLICTerms:
    r"""ReLIC objective, returning the total and its two terms separately.

    Mitrovic, McWilliams, Walker, Buesing & Blundell (2021), "Representation Learning via Invariant
    Causal Mechanisms", arXiv:2010.07922, and its refinement ReLICv2: Tomasev, Bica, McWilliams,
    Buesing, Pascanu, Blundell & Mitrovic (2022), "Pushing the limits of self-supervised ResNets: Can
    we outperform supervised learning without labels on ImageNet?", arXiv:2201.05119.

    ``anchor`` holds the online network's outputs for one view of N images, ``positive`` the
    (target) network's outputs for another view of the same N images, row i for image i. Let
    :math:`a_i`, :math:`z_i` be the L2-normalised rows, :math:`\phi(u, v) = u\cdot v` and
    :math:`S_{ij} = \phi(a_i, z_j)/\tau`. The candidates for the identity :math:`Y^R` of image i
    are the N images of the batch, and there are two likelihoods over them, the rows and the
    columns of S:

    .. math::
        p^{a}_{i}(j) = \frac{e^{S_{ij}}}{\sum_{m=1}^{N} e^{S_{im}}}, \qquad
        p^{z}_{i}(j) = \frac{e^{S_{ji}}}{\sum_{m=1}^{N} e^{S_{mi}}}

    :math:`p^a_i` is the anchor view of image i scoring the positive-view candidates :math:`z_j`
    (ReLIC's :math:`p^{do(a_{lk})}(Y^R = j \mid f(x_i)) \propto \exp(\phi(f(x_i^{a_l}), h(x_j^{a_k}))/\tau)`);
    :math:`p^z_i` is the positive view of image i scoring the anchor-view candidates :math:`a_j`,
    the same proxy task with the two views swapped (ReLIC's :math:`p^{do(a_{qt})}` when the two
    networks are one, h = f). The loss is

    .. math::
        \mathcal{L} = \frac{1}{N}\sum_{i=1}^{N}\Bigl[
            -\alpha \log p^{a}_{i}(i)
            + \beta\, \mathrm{KL}\bigl(p^{a}_{i} \,\Vert\, \operatorname{sg}[p^{z}_{i}]\bigr)\Bigr],
        \qquad \mathrm{KL}(p\Vert q) = \sum_j p(j)\,(\log p(j) - \log q(j))

    ``alpha`` multiplies the contrastive (instance-discrimination NLL) term and ``beta`` the
    invariance (KL) term, ReLICv2's naming. ReLIC (v1) writes the contrastive weight as 1 and calls
    the invariance weight :math:`\alpha`: v1's alpha is ``beta`` here. The KL runs from the anchor
    (online) likelihood :math:`p^a` to the positive-side likelihood :math:`p^z`, and :math:`p^z`
    is under a stop-gradient (:math:`\operatorname{sg}`, ``detach``): the invariance term moves the
    anchor's likelihood only. Nothing else is detached; ``positive`` normally comes from the EMA
    target network and carries no gradient anyway. v1 sums the KL over both orders of every pair
    of augmentations, so its direction is immaterial there; callers get that by summing over both
    orders of the views.

    With ``beta = 0`` and ``alpha = 1`` the loss is exactly the in-batch contrastive NLL
    (``info_nce_in_batch(anchor, positive, temperature)``). The KL is 0 when ``anchor`` and
    ``positive`` are equal (S is then symmetric, so :math:`p^a_i = p^z_i`), and positive whenever
    the two likelihoods differ. ReLICv2's multi-crop loop (every online crop against every target
    large crop, averaged over the (L + S) x L pairs, as its pseudo-code does) is the caller's.

    Defaults: tau = 0.1 and alpha = beta = 1.
    """
    _check_matrix(anchor, "anchor")
    _check_matrix(positive, "positive")
    _check_same_shape(anchor, positive, "anchor", "positive")
    t = _check_positive_scalar(temperature, "temperature")
    for name, weight in (("alpha", alpha), ("beta", beta)):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise SelfSupError(f"{name} must be a number >= 0, got {weight!r}.")

    a = F.normalize(anchor, dim=1)
    z = F.normalize(positive, dim=1)
    scores = (a @ z.T) / t
    log_p_anchor = F.log_softmax(scores, dim=1)
    # Row i of the transposed score matrix is the positive view of image i scoring every anchor view.
    log_p_positive = F.log_softmax(scores.T, dim=1).detach()

    contrastive = -torch.diagonal(log_p_anchor).mean()
    kl = (log_p_anchor.exp() * (log_p_anchor - log_p_positive)).sum(dim=1).mean()
    return ReLICTerms(loss=alpha * contrastive + beta * kl, contrastive=contrastive, kl=kl)


@fp32
def relic_loss(
    anchor: Tensor,
    positive: Tensor,
    temperature: float | Tensor = 0.1,
    alpha: float = 1.0,
    beta: float = 1.0,
) -> Tensor:
    r"""ReLIC / ReLICv2 loss of one (anchor, positive) pair of view batches, batch-averaged:

    .. math::
        \mathcal{L} = \frac{1}{N}\sum_{i=1}^{N}\Bigl[-\alpha \log p^{a}_{i}(i)
            + \beta\, \mathrm{KL}\bigl(p^{a}_{i} \,\Vert\, \operatorname{sg}[p^{z}_{i}]\bigr)\Bigr]

    with :math:`S_{ij} = \hat a_i \cdot \hat z_j / \tau` on L2-normalised rows,
    :math:`p^a_i = \mathrm{softmax}_j(S_{ij})` (row i) and :math:`p^z_i = \mathrm{softmax}_j(S_{ji})`
    (column i). ``alpha`` multiplies the contrastive NLL, ``beta`` the invariance KL; the KL runs
    from the anchor's likelihood to the positive side's, which is detached (stop-gradient).

    Mitrovic et al. (2021), arXiv:2010.07922; Tomasev et al. (2022), arXiv:2201.05119. Definitions,
    conventions and the correspondence with the papers' notation: :func:`relic_loss_terms`, which
    also returns the two terms for logging.
    """
    return relic_loss_terms(anchor, positive, temperature, alpha, beta).loss
