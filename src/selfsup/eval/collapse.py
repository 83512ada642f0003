"""Collapse indicators of a batch of embeddings: cheap numbers that fall when a representation
collapses, whatever the method.

- ``embedding_std``: the indicator of Chen & He 2021 (SimSiam, arXiv 2011.10566, Sec. 4.1 and
  Fig. 2): L2-normalize each embedding, take the standard deviation of every dimension over the
  samples, average over dimensions. A complete collapse (every sample the same vector) gives 0;
  embeddings spread like an isotropic zero-mean Gaussian give about 1/sqrt(d).
- ``effective_rank``: Roy & Vetterli 2007 ("The effective rank: a measure of effective
  dimensionality", EUSIPCO): exp of the Shannon entropy of the singular values normalized to sum
  to one. It lies in [1, min(N, d)]; dimensional collapse (embeddings confined to a few
  directions) shows as a small value even when ``embedding_std`` looks healthy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import SelfSupError


def _check(z: Tensor, what: str, min_rows: int) -> Tensor:
    if not isinstance(z, Tensor) or z.ndim != 2:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise SelfSupError(f"{what} needs an (N, D) tensor of embeddings, got {shape}")
    if z.shape[0] < min_rows or z.shape[1] < 1:
        raise SelfSupError(f"{what} needs at least {min_rows} embeddings of at least one dimension, "
                           f"got shape {tuple(z.shape)}")
    z = z.detach().double()
    if not bool(torch.isfinite(z).all()):
        raise SelfSupError(f"{what} got NaN or inf embeddings; the run has diverged")
    return z


def embedding_std(z: Tensor, center: bool = False) -> float:
    """Mean over dimensions of the (population) std over samples of the L2-normalized rows of z.

    ``center`` subtracts the mean embedding first. SimSiam measures zero-mean projector outputs;
    backbone features after a ReLU all lie in the positive orthant, so without centring a healthy
    representation reads well below 1/sqrt(d) and the reference value does not apply.
    """
    z = _check(z, "embedding_std", 2)
    if center:
        z = z - z.mean(0, keepdim=True)
    z = F.normalize(z, dim=1)
    return float(z.std(dim=0, correction=0).mean())


def effective_rank(z: Tensor, eps: float = 1e-12) -> float:
    """exp(-sum_k p_k log p_k) with p_k = sigma_k / sum_j sigma_j, the singular values of z (N, D).

    The matrix is used as given (not centred), as Roy & Vetterli define it; rows that are all
    the same vector give 1. An all-zero matrix has no spectrum to measure and gives 0.
    """
    z = _check(z, "effective_rank", 1)
    s = torch.linalg.svdvals(z)
    total = float(s.sum())
    if total <= eps:
        return 0.0
    p = s[s > eps * total] / total
    return math.exp(float(-(p * p.log()).sum()))
