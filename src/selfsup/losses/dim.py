"""Deep InfoMax's local objective (JSD and InfoNCE estimators) and AMDIM's across-view NCE.

Both take local features either as a feature map (B, D, H, W) or as a set of M = H*W location
vectors (B, M, D), and score a pair (global g, local l) by the dot product g.l: the scores in
these papers come from small encoders applied to each side before an inner product, and those
encoders belong to the model, not to the loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import SelfSupError
from selfsup.losses.infonce import _check_matrix
from selfsup.losses.precision import fp32

__all__ = ["dim_local_loss", "amdim_loss"]


def _locals_as_sets(local_features: object, name: str) -> Tensor:
    if not isinstance(local_features, Tensor) or not local_features.is_floating_point():
        raise SelfSupError(f"{name} must be a floating-point tensor.")
    if local_features.dim() == 4:
        b, d, h, w = local_features.shape
        return local_features.permute(0, 2, 3, 1).reshape(b, h * w, d)
    if local_features.dim() == 3:
        return local_features
    raise SelfSupError(
        f"{name} must be (B, D, H, W) or (B, M, D), got shape {tuple(local_features.shape)}."
    )


def _check_global_local(global_features: Tensor, local_sets: Tensor, g_name: str, l_name: str) -> None:
    _check_matrix(global_features, g_name, min_rows=2)
    b, m, d = local_sets.shape
    if b != global_features.shape[0]:
        raise SelfSupError(
            f"{g_name} and {l_name} must have the same batch size, got {global_features.shape[0]} and {b}."
        )
    if d != global_features.shape[1]:
        raise SelfSupError(
            f"{g_name} and {l_name} must share the feature dimension, got {global_features.shape[1]} "
            f"and {d} (local maps are (B, D, H, W) or (B, M, D))."
        )
    if m < 1:
        raise SelfSupError(f"{l_name} has no locations.")


@fp32
def dim_local_loss(local_features: Tensor, global_features: Tensor, estimator: str = "jsd") -> Tensor:
    r"""Local Deep InfoMax: mutual information between a global feature and every local feature.

    Hjelm, Fedorov, Lavoie-Marchildon, Grewal, Bachman, Trischler & Bengio (2019), "Learning deep
    representations by mutual information estimation and maximization", arXiv:1808.06670,
    eqs. (2), (5) and the local objective (6). Scores :math:`T_{ijm} = g_i\cdot l_{j,m}` for global
    feature :math:`g_i` of image i and local feature :math:`l_{j,m}` of image j at location m.
    Positive pairs are :math:`(g_i, l_{i,m})` for every location; negative pairs are
    :math:`(g_i, l_{j,m})`, :math:`j \ne i`.

    ``estimator="jsd"`` (eq. 2, without its constant :math:`2\log 2` offset, which has no gradient):

    .. math::
        \hat I = \frac{1}{BM}\sum_{i,m} -\operatorname{sp}(-T_{iim})
               - \frac{1}{B(B-1)M}\sum_{i\ne j,\,m} \operatorname{sp}(T_{ijm}),
        \qquad \mathcal{L} = -\hat I

    ``estimator="infonce"`` (eq. 5 applied at each location as in eq. 6: for every location the
    softmax runs over the images of the batch):

    .. math::
        \mathcal{L} = \frac{1}{BM}\sum_{i,m} -\log\frac{e^{T_{iim}}}{\sum_{j=1}^{B} e^{T_{ijm}}}

    The authors' released InfoNCE code instead contrasts each positive with every location of
    every other image; :func:`amdim_loss` has that form.

    Args:
        local_features: (B, D, H, W) feature map or (B, M, D) local vectors, B >= 2.
        global_features: (B, D) global features.
        estimator: ``"jsd"`` or ``"infonce"``.
    """
    local_sets = _locals_as_sets(local_features, "local_features")
    _check_global_local(global_features, local_sets, "global_features", "local_features")
    if estimator not in ("jsd", "infonce"):
        raise SelfSupError(f"estimator must be 'jsd' or 'infonce', got {estimator!r}.")

    scores = torch.einsum("id,jmd->ijm", global_features, local_sets)
    if estimator == "infonce":
        log_p = F.log_softmax(scores, dim=1)
        return -torch.diagonal(log_p, dim1=0, dim2=1).mean()

    batch = scores.shape[0]
    is_pos = torch.eye(batch, dtype=torch.bool, device=scores.device)
    e_pos = -F.softplus(-scores[is_pos]).mean()
    e_neg = F.softplus(scores[~is_pos]).mean()
    return e_neg - e_pos


@fp32
def amdim_loss(
    global_a: Tensor,
    local_b: Tensor,
    clip: float | None = 20.0,
    score_penalty: float = 0.04,
) -> Tensor:
    r"""AMDIM's global-to-local NCE across two views, with tanh soft clipping of the scores.

    Bachman, Hjelm & Buchwalter (2019), "Learning Representations by Maximizing Mutual Information
    Across Views", arXiv:1906.00910, Sec. 3 (the across-view NCE objective and its stabilisation).
    For global feature :math:`g_i` of view a and local features :math:`l_{j,m}` of view b
    (D features, M locations):

    .. math::
        s_{ijm} = \frac{g_i\cdot l_{j,m}}{\sqrt{D}}, \qquad
        \tilde s_{ijm} = c\,\tanh(s_{ijm}/c)

    .. math::
        \mathcal{L} = \frac{1}{BM}\sum_{i,m} -\log
            \frac{e^{\tilde s_{iim}}}{e^{\tilde s_{iim}} + \sum_{j\ne i}\sum_{m'} e^{\tilde s_{ijm'}}}
          \;+\; \lambda\,\frac{1}{B^2 M}\sum_{i,j,m} s_{ijm}^2

    Each location of image i in view b is a positive for image i's global feature in view a; the
    negatives are every location of every other image, shared by the M positives of image i. The
    soft clip :math:`c\tanh(s/c)` (c = 20) bounds the scores so that the softmax cannot saturate,
    and the small penalty :math:`\lambda` on the squared unclipped scores keeps them from
    drifting; c = 20, :math:`\lambda` = 0.04 and the :math:`1/\sqrt{D}` scaling are the values in
    the authors' released code. ``clip=None`` disables clipping and ``score_penalty=0`` the penalty.
    AMDIM sums this loss over both view directions and over several (global, local) layer pairs;
    the caller does that.

    Args:
        global_a: (B, D) global features of view a, B >= 2.
        local_b: (B, D, H, W) or (B, M, D) local features of view b.
        clip: c > 0, or None for no clipping.
        score_penalty: lambda >= 0.
    """
    local_sets = _locals_as_sets(local_b, "local_b")
    _check_global_local(global_a, local_sets, "global_a", "local_b")
    if clip is not None and not (isinstance(clip, (int, float)) and clip > 0):
        raise SelfSupError(f"clip must be a number > 0 or None, got {clip!r}.")
    if isinstance(score_penalty, bool) or not isinstance(score_penalty, (int, float)) or score_penalty < 0:
        raise SelfSupError(f"score_penalty must be a number >= 0, got {score_penalty!r}.")

    batch, n_loc, dim = local_sets.shape
    raw = torch.einsum("id,jmd->ijm", global_a, local_sets) / math.sqrt(dim)
    penalty = score_penalty * raw.pow(2).mean()
    scores = clip * torch.tanh(raw / clip) if clip is not None else raw

    is_pos = torch.eye(batch, dtype=torch.bool, device=scores.device)
    pos = torch.diagonal(scores, dim1=0, dim2=1).T
    neg = scores.masked_fill(is_pos[:, :, None], float("-inf")).reshape(batch, batch * n_loc)
    neg_lse = torch.logsumexp(neg, dim=1, keepdim=True)
    log_p = pos - torch.logaddexp(pos, neg_lse)
    return -log_p.mean() + penalty
