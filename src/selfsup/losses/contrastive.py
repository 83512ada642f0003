"""NT-Xent, SimCLR's loss (Chen et al. 2020, "A Simple Framework for Contrastive Learning of
Visual Representations", arXiv 2002.05709, Eq. 1), and the generic contrastive loss that takes its
negatives from any source (the batch, a queue, a memory bank)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import SelfSupError
from selfsup.losses.precision import fp32


@fp32
def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """Normalized temperature-scaled cross-entropy over the 2N views of a batch.

    With u = z / ||z|| and s(i, j) = u_i . u_j / t over the 2N projections, the loss of anchor i
    whose positive is p(i) (the other view of the same image) is

        l(i) = -log exp(s(i, p(i))) / sum_{k != i} exp(s(i, k))

    and the result is the mean of l over all 2N anchors (the paper's L = 1/2N sum_k [l(2k-1, 2k)
    + l(2k, 2k-1)]). Negatives are the 2(N-1) other views in the batch. Symmetric in (z1, z2).
    ``z1``, ``z2``: (N, D) projections of the two views, not yet normalized.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise SelfSupError(
            f"nt_xent needs two (N, D) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if temperature <= 0:
        raise SelfSupError(f"temperature must be positive, got {temperature}")
    n = z1.shape[0]
    z = F.normalize(torch.cat((z1, z2)).float(), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat((torch.arange(n, 2 * n), torch.arange(n))).to(z.device)
    return F.cross_entropy(logits, target)


@fp32
def contrastive_loss(query: Tensor, key: Tensor, temperature: float | Tensor = 0.07, negatives: Tensor | None = None,
                     in_batch: bool = False, exclude: Tensor | None = None) -> Tensor:
    r"""InfoNCE of each query against its key and negatives from the batch and/or a stored set.

    With :math:`q_i, k_i, n_m` the L2-normalized rows of ``query``, ``key`` and ``negatives``, the
    logits of query i are

    .. math::
        \bigl[\, q_i\cdot k_i \;\big|\; q_i\cdot k_j \ (j \ne i) \;\big|\; q_i\cdot n_m \ (m \ne e_i) \,\bigr] / T

    where the middle block is present only with ``in_batch=True`` (the batch's other keys are
    negatives: end-to-end, SimCLR-style) and the last only when ``negatives`` is given (MoCo's
    queue, InstDisc's memory bank), and the loss is their cross-entropy with target 0 (the
    positive), averaged over queries. This is He et al. 2019 (arXiv 1911.05722) Eq. 1 with the
    dictionary being any union of the sources. ``exclude`` (N,) names, per query, one row of
    ``negatives`` left out: a memory bank holds the query's own image, which is no negative.

    Across processes, the caller gathers ``query`` and ``key`` (``selfsup.dist.gather_with_grad``)
    before an in-batch loss, so that every process's keys are negatives of every query; stored
    negatives are already global. Nothing is detached here: MoCo's keys come from the momentum
    encoder under ``no_grad``, SimCLR's carry gradients on purpose.
    """
    if query.ndim != 2 or query.shape != key.shape:
        raise SelfSupError(f"contrastive_loss needs query and key of one (N, D) shape, got {tuple(query.shape)} "
                           f"and {tuple(key.shape)}")
    if negatives is None and not in_batch:
        raise SelfSupError("contrastive_loss has no negatives: pass negatives (a queue or a memory bank) "
                           "and/or in_batch=True")
    if not isinstance(temperature, Tensor) and temperature <= 0:
        raise SelfSupError(f"temperature must be positive, got {temperature}")
    q, k = F.normalize(query.float(), dim=1), F.normalize(key.float(), dim=1)
    logits = [(q * k).sum(dim=1, keepdim=True)]
    if in_batch:
        others = q @ k.T
        logits.append(others.masked_fill(torch.eye(len(q), dtype=torch.bool, device=q.device), float("-inf")))
    if negatives is not None:
        if negatives.ndim != 2 or negatives.shape[1] != q.shape[1]:
            raise SelfSupError(f"negatives must be (K, {q.shape[1]}), got {tuple(negatives.shape)}")
        stored = q @ F.normalize(negatives.float(), dim=1).T
        if exclude is not None:
            if exclude.shape != (len(q),):
                raise SelfSupError(f"exclude must hold one row index per query, shape ({len(q)},), "
                                   f"got {tuple(exclude.shape)}")
            stored = stored.scatter(1, exclude.long().view(-1, 1), float("-inf"))
        logits.append(stored)
    target = torch.zeros(len(q), dtype=torch.long, device=q.device)
    return F.cross_entropy(torch.cat(logits, dim=1) / temperature, target)
