r"""Instance discrimination with a memory bank (InstDisc): full non-parametric softmax, its NCE
approximation, the NCE normaliser estimate and the proximal regulariser.

Conventions shared by the functions here: ``features`` are the current network outputs
:math:`f_i = f_\theta(x_i)` and are L2-normalised inside (the paper constrains ``||v|| = 1`` with
an L2-normalisation layer, and normalising twice changes nothing). ``memory`` is the bank
:math:`V = \{v_j\}` and is used exactly as stored: keeping its rows unit-length is the bank's
update rule (``v_i <- normalize(m v_i + (1 - m) f_i)``), which lives with the caller, as does the
bank itself. The bank is not detached here; as a buffer it carries no gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import SelfSupError
from selfsup.losses.infonce import (
    _check_index,
    _check_matrix,
    _check_positive_scalar,
    _check_same_dim,
    _check_same_shape,
)
from selfsup.losses.precision import fp32

# instdisc_nce_loss scores against the whole bank (one product) while it has at most this many rows
# per noise draw; above ~70, gathering each sample's m rows is cheaper (benchmarks/nce_scores.py).
DENSE_BANK_FACTOR = 64


def nce_scores_dense(bank_rows: int, noise_samples: int) -> bool:
    """Whether :func:`instdisc_nce_loss` by default scores against the whole bank (its ``dense``)."""
    return bank_rows <= DENSE_BANK_FACTOR * noise_samples


__all__ = [
    "nce_scores_dense",
    "nonparametric_softmax_loss",
    "instdisc_nce_loss",
    "estimate_nce_normalizer",
    "proximal_term",
]


@fp32
def nonparametric_softmax_loss(
    features: Tensor,
    memory: Tensor,
    index: Tensor,
    temperature: float | Tensor = 0.07,
) -> Tensor:
    r"""Full non-parametric softmax over the memory bank.

    Wu, Xiong, Yu & Lin (2018), "Unsupervised Feature Learning via Non-Parametric Instance
    Discrimination", arXiv:1805.01978, eqs. (2)-(3) with the memory bank of Sec. 3.1:

    .. math::
        P(i \mid f_i) = \frac{\exp(v_i^\top f_i/\tau)}{\sum_{j=1}^{n}\exp(v_j^\top f_i/\tau)},
        \qquad
        \mathcal{L} = -\frac{1}{B}\sum_{b=1}^{B}\log P(\mathrm{index}_b \mid f_b)

    The rows used are all the bank's rows, and the positive is the bank's stored entry
    ``memory[index_b]`` (the sample's feature from its previous visit, :math:`v_i^{(t-1)}`), not
    the current feature: that is what the paper's memory bank substitutes for the classifier weights.

    Args:
        features: (B, D) current features of the batch.
        memory: (N, D) memory bank.
        index: (B,) long, dataset index of each batch sample.
        temperature: tau > 0 (paper: 0.07).
    """
    _check_matrix(features, "features")
    _check_matrix(memory, "memory")
    _check_same_dim(features, memory, "features", "memory")
    index = _check_index(index, "index", features.shape[0], memory.shape[0])
    t = _check_positive_scalar(temperature, "temperature")

    logits = (F.normalize(features, dim=1) @ memory.T) / t
    return F.cross_entropy(logits, index)


@fp32
def instdisc_nce_loss(
    features: Tensor,
    memory: Tensor,
    index: Tensor,
    noise_index: Tensor,
    temperature: float | Tensor = 0.07,
    *,
    normalization_constant: float | Tensor | None,
    dense: bool | None = None,
) -> Tensor:
    r"""NCE approximation of the non-parametric softmax, with uniform noise.

    Wu et al. (2018), arXiv:1805.01978, eqs. (4)-(6). With :math:`n` = ``memory.shape[0]``,
    :math:`m` = ``noise_index.shape[1]``, :math:`P_n = 1/n` and :math:`Z` the normalisation
    constant:

    .. math::
        P(i \mid v) = \frac{\exp(v^\top f_i/\tau)}{Z}, \qquad
        h(i, v) = \frac{P(i \mid v)}{P(i \mid v) + m P_n(i)}

    .. math::
        \mathcal{L} = \frac{1}{B}\sum_{b=1}^{B}\Bigl[-\log h(i_b, v_{i_b})
            - \sum_{k=1}^{m}\log\bigl(1 - h(i_b, v_{j_{bk}})\bigr)\Bigr]

    which is eq. (6), :math:`-E_{P_d}[\log h(i, v)] - m\,E_{P_n}[\log(1 - h(i, v'))]`, with
    :math:`m\,E_{P_n}` estimated by the sum over the m noise draws (m times their mean), as the
    authors' released code does. The data sample pairs the current feature :math:`f_{i}` with its
    own bank entry :math:`v_{i}` = ``memory[index]`` (the positive from the bank); each noise sample
    pairs :math:`f_{i}` with the bank entry ``memory[j]`` of a uniformly drawn index j. Draws equal
    to ``index`` are kept, as they are under uniform noise.

    Computed stably as a logistic loss on :math:`\log P - \log(m P_n)`:
    :math:`-\log h = \operatorname{softplus}(\log(m P_n) - \log P)` and
    :math:`-\log(1-h) = \operatorname{softplus}(\log P - \log(m P_n))`.

    Args:
        features: (B, D) current features.
        memory: (N, D) memory bank.
        index: (B,) long, dataset index of each sample (its positive bank row).
        noise_index: (B, m) long, indices drawn uniformly from [0, N) by the caller.
        temperature: tau > 0 (paper: 0.07).
        normalization_constant: Z > 0. The paper estimates it once, on the first iteration, and keeps
            it fixed (eq. 8); see :func:`estimate_nce_normalizer`. ``None``: each sample's own
            :math:`Z_i = \frac{n}{m}\sum_k \exp(v_{j_k}^\top f_i/\tau)` from its m noise draws, detached
            (eq. 8 before the paper replaces every Z_i by one constant). Then
            :math:`\log P(j \mid v) - \log(m P_n) = s_j - \log\sum_k e^{s_k}`: n drops out.
        dense: how the scores are computed; the loss is the same either way. ``True``: one (B, N)
            product with the whole bank, then the m noise scores of each row are picked out of it;
            ``False``: the m rows of each sample are gathered, (B, m, D), and scored, as the
            authors' code does. ``None`` (default): dense when N <= DENSE_BANK_FACTOR * m
            (:func:`nce_scores_dense`). The gathered copy is B m D floats (512 MB at B = 256, m =
            4,096, D = 128) and costs more than the product with a bank of up to ~70 m rows: 6.4x at
            N = 50,000, 1.8x at 200,000 and 0.9x at 400,000 (forward and backward,
            benchmarks/nce_scores.py, one core). The product's backward reads ``memory``: a caller
            that writes the bank in place before the backward passes a copy (as InstDisc does).
    """
    _check_matrix(features, "features")
    _check_matrix(memory, "memory")
    _check_same_dim(features, memory, "features", "memory")
    batch, n_data = features.shape[0], memory.shape[0]
    index = _check_index(index, "index", batch, n_data)
    if not isinstance(noise_index, Tensor) or noise_index.dim() != 2 or noise_index.shape[0] != batch:
        raise SelfSupError(
            f"noise_index must be a (B, m) = ({batch}, m) long tensor, got "
            f"{tuple(noise_index.shape) if isinstance(noise_index, Tensor) else type(noise_index).__name__}."
        )
    n_noise = noise_index.shape[1]
    if n_noise < 1:
        raise SelfSupError("noise_index must hold at least one noise sample per row (m >= 1).")
    _check_index(noise_index.reshape(-1), "noise_index", batch * n_noise, n_data)
    t = _check_positive_scalar(temperature, "temperature")
    z = None if normalization_constant is None else _check_positive_scalar(normalization_constant,
                                                                           "normalization_constant")

    f = F.normalize(features, dim=1)
    noise_index = noise_index.long()
    if dense is None:
        dense = nce_scores_dense(n_data, n_noise)
    if dense:
        scores = f @ memory.T
        s_data = scores.gather(1, index[:, None]).squeeze(1) / t
        s_noise = scores.gather(1, noise_index) / t
    else:
        s_data = (memory[index] * f).sum(dim=1) / t
        s_noise = torch.einsum("bmd,bd->bm", memory[noise_index], f) / t
    # log Z + log(m P_n), the threshold each score is classified against: per row, or one number.
    if z is None:
        shift = torch.logsumexp(s_noise.detach(), dim=1)
        data_logit, noise_logit = s_data - shift, s_noise - shift[:, None]
    else:
        shift = (torch.log(z) if isinstance(z, Tensor) else math.log(z)) + math.log(n_noise / n_data)
        data_logit, noise_logit = s_data - shift, s_noise - shift
    per_sample = F.softplus(-data_logit) + F.softplus(noise_logit).sum(dim=1)
    return per_sample.mean()


@fp32
def estimate_nce_normalizer(noise_logits: Tensor, num_data: int) -> Tensor:
    r"""Monte-Carlo estimate of InstDisc's NCE normalisation constant Z.

    Wu et al. (2018), arXiv:1805.01978, eq. (8):

    .. math::
        Z \simeq Z_i \simeq n\,E_j\bigl[\exp(v_j^\top f_i/\tau)\bigr]
          = \frac{n}{m}\sum_{k=1}^{m}\exp(v_{j_k}^\top f_i/\tau)

    averaged over the batch rows as well, so the result is one constant
    ``num_data * mean(exp(noise_logits))``. The paper computes it on the first iteration and keeps
    it fixed; storing it is the caller's. The authors' released code averages over the positive
    column too, which differs by O(1/m).

    Args:
        noise_logits: (B, m) (any shape works) scores :math:`v_j^\top f_i/\tau` of the noise
            samples, i.e. ``einsum("bmd,bd->bm", memory[noise_index], normalize(features)) / tau``.
        num_data: n, the number of entries in the memory bank.

    Returns:
        A detached scalar tensor.
    """
    if not isinstance(noise_logits, Tensor) or not noise_logits.is_floating_point():
        raise SelfSupError("noise_logits must be a floating-point tensor of noise scores v_j.f_i / tau.")
    if noise_logits.numel() == 0:
        raise SelfSupError("noise_logits is empty; it needs at least one noise score.")
    if isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 1:
        raise SelfSupError(f"num_data must be a positive int (the memory bank size), got {num_data!r}.")
    logits = noise_logits.detach()
    # exp(logsumexp - log count) is the mean of exp without overflowing at small temperatures.
    log_mean = torch.logsumexp(logits.reshape(-1), dim=0) - math.log(logits.numel())
    return num_data * torch.exp(log_mean)


@fp32
def proximal_term(features: Tensor, memory_rows: Tensor, lamb: float) -> Tensor:
    r"""Proximal regulariser of InstDisc, the second term of eq. (10).

    Wu et al. (2018), arXiv:1805.01978, eq. (10):

    .. math::
        \lambda\,\frac{1}{B}\sum_{b=1}^{B}\bigl\lVert v_{i_b}^{(t)} - v_{i_b}^{(t-1)}\bigr\rVert_2^2

    where :math:`v^{(t)}_{i}` is the current (L2-normalised) feature of sample i and
    :math:`v^{(t-1)}_i` its entry in the memory bank before this iteration's update, i.e.
    ``memory_rows = memory[index]`` read before the bank is written. The full eq. (10) objective is
    this term plus the NCE loss (:func:`instdisc_nce_loss`); the method adds them.

    Args:
        features: (B, D) current features.
        memory_rows: (B, D) the bank rows of the batch samples, before the update.
        lamb: lambda >= 0.
    """
    _check_matrix(features, "features")
    _check_matrix(memory_rows, "memory_rows")
    _check_same_shape(features, memory_rows, "features", "memory_rows")
    if isinstance(lamb, bool) or not isinstance(lamb, (int, float)) or lamb < 0:
        raise SelfSupError(f"lamb must be a number >= 0, got {lamb!r}.")
    diff = F.normalize(features, dim=1) - memory_rows
    return lamb * diff.pow(2).sum(dim=1).mean()
