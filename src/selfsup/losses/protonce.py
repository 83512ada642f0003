"""Prototypical Contrastive Learning (PCL): the prototype part of ProtoNCE and the per-prototype
concentration estimate phi."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import SelfSupError
from selfsup.losses.infonce import _check_index, _check_matrix, _check_same_dim
from selfsup.losses.precision import fp32

__all__ = ["proto_nce_loss", "pcl_concentration"]


def _sample_negative_prototypes(
    positives: Tensor,
    num_prototypes: int,
    r: int,
    shared: bool,
    generator: torch.Generator | None,
) -> Tensor:
    """Indices of r negative prototypes: (r,) when shared by the batch, (B, r) per query."""
    device = generator.device if generator is not None else positives.device
    if shared:
        is_positive = torch.zeros(num_prototypes, dtype=torch.bool, device=positives.device)
        is_positive[positives] = True
        available = torch.nonzero(~is_positive).squeeze(1)
        if available.numel() < r:
            raise SelfSupError(
                f"only {available.numel()} prototypes are no query's positive in this batch, fewer than "
                f"num_negative_prototypes={r}; lower it, pass None (all prototypes), or use "
                "shared_negatives=False."
            )
        pick = torch.randperm(available.numel(), generator=generator, device=device)[:r]
        return available[pick.to(positives.device)]
    if num_prototypes - 1 < r:
        raise SelfSupError(
            f"num_negative_prototypes={r} exceeds the {num_prototypes - 1} prototypes other than the "
            "positive; lower it or pass None (all prototypes)."
        )
    weights = torch.ones(positives.shape[0], num_prototypes - 1, device=device)
    draw = torch.multinomial(weights, r, replacement=False, generator=generator).to(positives.device)
    # Draws index the K-1 non-positive prototypes; shifting those at or past the positive skips it.
    return draw + (draw >= positives[:, None]).long()


@fp32
def proto_nce_loss(
    query: Tensor,
    prototypes: Sequence[Tensor],
    assignments: Sequence[Tensor],
    concentrations: Sequence[Tensor],
    num_negative_prototypes: int | None,
    generator: torch.Generator | None = None,
    shared_negatives: bool = True,
) -> Tensor:
    r"""Prototype term of PCL's ProtoNCE, averaged over the M clusterings.

    Li, Zhou, Xiong & Hoi (2021), "Prototypical Contrastive Learning of Unsupervised
    Representations", arXiv:2005.04966, eq. (11) (second term). With :math:`v_i` the normalised
    query, :math:`c^m_j` the normalised prototypes of clustering m, :math:`\phi^m_j` their
    concentrations and :math:`s = ` ``assignments[m][i]`` the query's cluster:

    .. math::
        \mathcal{L}_{proto} = \frac{1}{M}\sum_{m=1}^{M}\frac{1}{B}\sum_{i=1}^{B}
            -\log\frac{\exp(v_i\cdot c^m_s/\phi^m_s)}
                      {\exp(v_i\cdot c^m_s/\phi^m_s) + \sum_{j=1}^{r}\exp(v_i\cdot c^m_{n_j}/\phi^m_{n_j})}

    computed as a cross-entropy whose column 0 is the positive prototype. The full ProtoNCE loss is
    ``info_nce(query, key, queue) + proto_nce_loss(...)``; the method adds the two.

    Negatives :math:`n_1..n_r` are drawn uniformly without replacement. With
    ``shared_negatives=True`` (the authors' released code) one set is drawn per clustering for the
    whole batch, from the prototypes that are no query's positive in this batch, so no query ever
    meets its own cluster as a negative. With ``shared_negatives=False`` each query draws its own r
    negatives from the K_m - 1 prototypes other than its positive; this works when the batch covers
    most clusters (few clusters, as on small data sets). ``num_negative_prototypes=None`` uses every
    other prototype (a full softmax over the K_m clusters) and draws nothing. The released code
    lays the logits out differently (every query against every batch positive plus the shared
    negatives); this function follows the paper's per-query formula.

    Args:
        query: (B, D) query features.
        prototypes: per clustering, (K_m, D) centroids.
        assignments: per clustering, (B,) long cluster index of each query.
        concentrations: per clustering, (K_m,) phi > 0 (see :func:`pcl_concentration`).
        num_negative_prototypes: r >= 1, or None for all other prototypes (paper's code: r = 16384).
        generator: random generator for the draws (None: torch's global one). It must live on
            ``query``'s device or on the CPU.
        shared_negatives: see above.
    """
    _check_matrix(query, "query")
    n_sets = len(prototypes)
    if n_sets < 1 or len(assignments) != n_sets or len(concentrations) != n_sets:
        raise SelfSupError(
            "prototypes, assignments and concentrations must be non-empty lists of the same length "
            f"(one entry per clustering), got {len(prototypes)}, {len(assignments)}, {len(concentrations)}."
        )
    r = num_negative_prototypes
    if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
        raise SelfSupError(f"num_negative_prototypes must be an int >= 1 or None, got {r!r}.")

    q = F.normalize(query, dim=1)
    total = q.new_zeros(())
    for m in range(n_sets):
        centroids = _check_matrix(prototypes[m], f"prototypes[{m}]")
        _check_same_dim(query, centroids, "query", f"prototypes[{m}]")
        k = centroids.shape[0]
        positives = _check_index(assignments[m], f"assignments[{m}]", q.shape[0], k)
        phi = concentrations[m]
        if not isinstance(phi, Tensor) or phi.shape != (k,):
            raise SelfSupError(f"concentrations[{m}] must be a ({k},) tensor, one phi per prototype.")
        c = F.normalize(centroids, dim=1)

        if r is None:
            logits = (q @ c.T) / phi
            total = total + F.cross_entropy(logits, positives)
            continue
        negatives = _sample_negative_prototypes(positives, k, r, shared_negatives, generator)
        pos_logit = (q * c[positives]).sum(dim=1, keepdim=True) / phi[positives][:, None]
        if shared_negatives:
            neg_logits = (q @ c[negatives].T) / phi[negatives]
        else:
            neg_logits = torch.einsum("bd,brd->br", q, c[negatives]) / phi[negatives]
        logits = torch.cat([pos_logit, neg_logits], dim=1)
        target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        total = total + F.cross_entropy(logits, target)
    return total / n_sets


@fp32
def pcl_concentration(
    features: Tensor,
    assignments: Tensor,
    centroids: Tensor,
    alpha: float = 10.0,
    clamp_percentiles: tuple[float, float] | None = (10.0, 90.0),
    temperature: float | None = 0.2,
) -> Tensor:
    r"""Per-prototype concentration :math:`\phi` of PCL.

    Li et al. (2021), arXiv:2005.04966, eq. (12), plus the post-processing of the authors' released
    code. For cluster c with :math:`Z` members :math:`v'_z` and centroid :math:`c`:

    .. math::
        \phi = \frac{\sum_{z=1}^{Z}\lVert v'_z - c\rVert_2}{Z\log(Z + \alpha)}

    What is done, in order:

    1. :math:`\phi` as above (Euclidean distances to the centroids as given, natural log,
       :math:`\alpha` = 10) for every cluster with at least 2 members.
    2. Clusters with 0 or 1 member get the largest :math:`\phi` of the others: one distance says
       nothing about spread, and the largest value is the conservative (smoothest) choice. This is
       the released code's rule.
    3. Clamp to the [10th, 90th] percentiles of the values (linear interpolation, as numpy's
       default), so that a few very tight or very loose clusters do not dominate the logits.
    4. Rescale so that the mean is ``temperature`` (0.2 in the released code): :math:`\phi` then
       plays the role of a per-prototype temperature of the usual size.

    ``clamp_percentiles=None`` skips step 3 and ``temperature=None`` skips step 4 (the raw eq. 12
    values). The centroids should be the ones the features were assigned to (the released code
    measures distances to the k-means means and only normalises the centroids afterwards). The
    result is a constant of the clustering step and is computed without gradient.

    Args:
        features: (N, D) features that were clustered.
        assignments: (N,) long cluster index of each feature.
        centroids: (K, D) cluster centroids.
        alpha: smoothing alpha > 0.
        clamp_percentiles: (low, high) percentiles in [0, 100], or None.
        temperature: target mean of phi (> 0), or None.

    Returns:
        (K,) tensor of phi.
    """
    _check_matrix(features, "features")
    _check_matrix(centroids, "centroids")
    _check_same_dim(features, centroids, "features", "centroids")
    n_clusters = centroids.shape[0]
    labels = _check_index(assignments, "assignments", features.shape[0], n_clusters)
    if not (isinstance(alpha, (int, float)) and alpha > 0):
        raise SelfSupError(f"alpha must be a number > 0, got {alpha!r}.")
    if clamp_percentiles is not None:
        low, high = clamp_percentiles
        if not 0.0 <= low <= high <= 100.0:
            raise SelfSupError(
                f"clamp_percentiles must satisfy 0 <= low <= high <= 100, got {clamp_percentiles}."
            )
    if temperature is not None and not (isinstance(temperature, (int, float)) and temperature > 0):
        raise SelfSupError(f"temperature must be a number > 0 or None, got {temperature!r}.")

    with torch.no_grad():
        dist = (features - centroids[labels]).norm(dim=1)
        counts = torch.bincount(labels, minlength=n_clusters).to(dist.dtype)
        sums = torch.zeros(n_clusters, dtype=dist.dtype, device=dist.device).index_add_(0, labels, dist)
        spread = counts > 1
        if not bool(spread.any()):
            raise SelfSupError("every cluster has fewer than 2 members; phi cannot be estimated.")
        phi = torch.zeros_like(sums)
        phi[spread] = sums[spread] / (counts[spread] * torch.log(counts[spread] + alpha))
        phi[~spread] = phi[spread].max()
        if clamp_percentiles is not None:
            levels = torch.tensor([low / 100.0, high / 100.0], dtype=phi.dtype, device=phi.device)
            bounds = torch.quantile(phi, levels)
            phi = phi.clamp(bounds[0], bounds[1])
        if temperature is not None:
            mean = phi.mean()
            if not bool(mean > 0) or not math.isfinite(float(mean)):
                raise SelfSupError("all cluster spreads are zero; phi cannot be rescaled to the temperature.")
            phi = temperature * phi / mean
    return phi
