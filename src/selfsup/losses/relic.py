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

    :math:`p^a_i` (row i) is the anchor view of image i, as the online network f sees it, scoring
    the positive-view candidates as the target network g sees them:
    :math:`p^a_i(j) \propto \exp(\phi(f(x_i^{a}), g(x_j^{b}))/\tau)`, ReLIC's
    :math:`p^{do(a_{lk})}(Y^R = j \mid f(x_i))` and the likelihood whose diagonal ReLICv2's
    contrastive term maximises. :math:`p^z_i` (column i) swaps which side is scored against which: the
    *target* network's output for the positive view of image i scores the *online* network's
    outputs for the anchor view, :math:`p^z_i(j) \propto \exp(\phi(g(x_i^{b}), f(x_j^{a}))/\tau)`.
    It is not the online network's view b scoring target-network candidates of view a
    (:math:`\exp(\phi(f(x_i^{b}), g(x_j^{a}))/\tau)`); the two coincide only when f = g, as in
    ReLIC v1 here (``positive`` and ``anchor`` from one network), where :math:`p^z_i` is exactly
    ReLIC's :math:`p^{do(a_{qt})}` with the two augmentations swapped.

    Why the column, for ReLICv2 (two networks): ReLICv2's invariance term is a KL between the two
    likelihoods a pair of views gives, one per direction of the pair, the second under a
    stop-gradient. Its pseudo-code (arXiv 2201.05119) computes each pair's loss
    from two tensors only, the online output of one crop and the target output of another
    (``loss_relicv2(online_i, target_j, n_e)``), and passes the small crops through the online
    network only, so the target output of the anchor crop, which the swapped-network likelihood
    would need, does not exist for most pairs. From one (online, target) pair of output batches
    the invariance term can only compare the two normalisations of their one score matrix: image
    i's identity inferred from its online view among the target views (the row) and from its
    target view among the online views (the column). That is what this function computes:
    :math:`p^a_i` first, the stop-gradient on :math:`p^z_i`. The loss is

    .. math::
        \mathcal{L} = \frac{1}{N}\sum_{i=1}^{N}\Bigl[
            -\alpha \log p^{a}_{i}(i)
            + \beta\, \mathrm{KL}\bigl(p^{a}_{i} \,\Vert\, \operatorname{sg}[p^{z}_{i}]\bigr)\Bigr],
        \qquad \mathrm{KL}(p\Vert q) = \sum_j p(j)\,(\log p(j) - \log q(j))

    ``alpha`` multiplies the contrastive (instance-discrimination NLL) term and ``beta`` the
    invariance (KL) term, ReLICv2's naming. ReLIC (v1) writes the contrastive weight as 1 and calls
    the invariance weight :math:`\alpha`: v1's alpha is ``beta`` here. The KL runs from the anchor
    (online) likelihood :math:`p^a` to the column likelihood :math:`p^z`, and :math:`p^z`
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
    # Row i of the transposed score matrix: the positive (target) output of image i scoring every
    # anchor (online) output, i.e. column i of the scores.
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
    (column i: the positive, target-side output of image i scoring the anchor-side outputs).
    ``alpha`` multiplies the contrastive NLL, ``beta`` the invariance KL; the KL runs from the
    anchor's likelihood to the column likelihood, which is detached (stop-gradient).

    Mitrovic et al. (2021), arXiv:2010.07922; Tomasev et al. (2022), arXiv:2201.05119. Definitions,
    conventions and the correspondence with the papers' notation: :func:`relic_loss_terms`, which
    also returns the two terms for logging.
    """
    return relic_loss_terms(anchor, positive, temperature, alpha, beta).loss
