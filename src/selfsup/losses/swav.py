"""SwAV's swapped-prediction loss between prototype scores and (given) Sinkhorn codes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import SelfSupError
from selfsup.losses.infonce import _check_matrix, _check_positive_scalar, _check_same_shape
from selfsup.losses.precision import fp32

__all__ = ["swav_loss"]


@fp32
def swav_loss(
    scores: Sequence[Tensor],
    codes: Sequence[Tensor] | Mapping[int, Tensor],
    temperature: float | Tensor = 0.1,
    assignment_views: Sequence[int] = (0, 1),
) -> Tensor:
    r"""Swapped prediction: every other view predicts the code computed from an assignment view.

    Caron, Misra, Mairal, Goyal, Bojanowski & Joulin (2020), "Unsupervised Learning of Visual
    Features by Contrasting Cluster Assignments", arXiv:2006.09882, eqs. (1)-(2), averaged over
    views as in the authors' released training loop. With V views, scores :math:`z_v^\top C`
    (``scores[v]``, (B, K)), assignment views :math:`\mathcal{S}` and codes :math:`q_s` (rows sum to 1):

    .. math::
        \ell(z_v, q_s) = -\frac{1}{B}\sum_{b=1}^{B}\sum_{k=1}^{K}
            q_{s,bk}\,\log\operatorname{softmax}_k\!\bigl(z_{v,b}^\top C / T\bigr)

    .. math::
        \mathcal{L} = \frac{1}{|\mathcal{S}|}\sum_{s\in\mathcal{S}}
            \frac{1}{V-1}\sum_{v\ne s}\ell(z_v, q_s)

    i.e. for each assignment view the cross-entropies of all the other views (large and small crops
    alike) are summed and divided by V - 1, then the result is averaged over the assignment views.
    The codes come from the Sinkhorn-Knopp step outside this function and are detached here: SwAV
    does not backpropagate through the assignments.

    Args:
        scores: per view, (B, K) prototype scores (normalised features times normalised prototypes),
            at least 2 views.
        codes: the (B, K) codes of the assignment views, either a sequence aligned with
            ``assignment_views`` (``codes[k]`` belongs to view ``assignment_views[k]``) or a mapping
            from view index to codes.
        temperature: T > 0 (paper: 0.1).
        assignment_views: indices of the views whose codes are used (paper: the two large crops).
    """
    if isinstance(scores, Tensor) or not isinstance(scores, Sequence) or len(scores) < 2:
        raise SelfSupError("scores must be a list of at least 2 per-view (B, K) score tensors.")
    for v, s in enumerate(scores):
        _check_matrix(s, f"scores[{v}]")
        _check_same_shape(s, scores[0], f"scores[{v}]", "scores[0]")
    n_views = len(scores)

    views = list(assignment_views)
    if not views or len(set(views)) != len(views) or any(
        isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < n_views for s in views
    ):
        raise SelfSupError(
            f"assignment_views must be distinct view indices in [0, {n_views}), "
            f"got {tuple(assignment_views)}."
        )

    if isinstance(codes, Mapping):
        missing = [s for s in views if s not in codes]
        if missing:
            raise SelfSupError(f"codes has no entry for assignment view(s) {missing}.")
        code_list = [codes[s] for s in views]
    elif isinstance(codes, Sequence) and not isinstance(codes, Tensor):
        if len(codes) != len(views):
            raise SelfSupError(
                f"codes must hold one (B, K) tensor per assignment view ({len(views)}), got {len(codes)}."
            )
        code_list = list(codes)
    else:
        raise SelfSupError("codes must be a list aligned with assignment_views or a {view: codes} mapping.")
    for s, q in zip(views, code_list):
        _check_matrix(q, f"codes for view {s}")
        _check_same_shape(q, scores[0], f"codes for view {s}", "scores[0]")
        q = q.detach()
        # Logits or unnormalised Sinkhorn output would silently give a meaningless loss.
        if bool((q < 0).any()) or not torch.allclose(q.sum(dim=1), torch.ones_like(q[:, 0]), atol=1e-3):
            raise SelfSupError(f"codes for view {s} must be non-negative with rows summing to 1.")
    t = _check_positive_scalar(temperature, "temperature")

    log_p = [F.log_softmax(s / t, dim=1) for s in scores]
    total = scores[0].new_zeros(())
    for s, q in zip(views, code_list):
        q = q.detach()
        sub = sum(-(q * log_p[v]).sum(dim=1).mean() for v in range(n_views) if v != s)
        total = total + sub / (n_views - 1)
    return total / len(views)
