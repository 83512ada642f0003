"""NT-Xent, SimCLR's loss (Chen et al. 2020, "A Simple Framework for Contrastive Learning of
Visual Representations", arXiv 2002.05709, Eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import SelfSupError


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
