"""Groups of mutual nearest neighbours inside clusters: the inter-instance edges of Transitive
Invariance (Wang, He & Gupta 2017, "Transitive Invariance for Self-supervised Visual
Representation Learning", arXiv 1708.02901), where features are first split into coarse
k-means clusters and groups of 4 samples that are all nearest neighbours of each other inside a
cluster are taken as different instances of one kind of object."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import SelfSupError

_CHUNK_ELEMENTS = 1 << 22  # similarity entries per block of the within-cluster kNN


def _knn_lists(f: Tensor, k: int) -> list[list[int]]:
    """For unit rows ``f`` (m, D): each row's k most cosine-similar other rows, closest first."""
    m = f.shape[0]
    step = max(1, _CHUNK_ELEMENTS // m)
    out: list[list[int]] = []
    for s in range(0, m, step):
        sim = f[s : s + step] @ f.T
        rows = torch.arange(sim.shape[0], device=f.device)
        sim[rows, rows + s] = float("-inf")
        out.extend(sim.topk(k, dim=1).indices.tolist())
    return out


@torch.no_grad()
def mutual_knn_groups(features: Tensor, clusters: Tensor, k: int = 10, group_size: int = 4) -> Tensor:
    """Disjoint groups of ``group_size`` samples of one cluster that are pairwise mutual k-nearest
    neighbours (cosine similarity, neighbours searched only inside the cluster).

    Greedy and deterministic: samples are visited in index order; a sample not yet grouped starts
    a group and adds its neighbours, closest first, that are not yet grouped and mutual k-nearest
    neighbours of every member so far; a group that reaches ``group_size`` is kept, otherwise its
    start is left ungrouped. Every pair (a, b) of a returned group satisfies: b is among the k
    nearest neighbours of a in their cluster, and a among those of b.

    ``features``: (N, D); ``clusters``: (N,) integer cluster ids (e.g. from ``kmeans``).
    Returns ``(G, group_size)`` long tensor of sample indices on the features' device; rows sorted
    by their first member.
    """
    if features.ndim != 2 or clusters.shape != (features.shape[0],):
        raise SelfSupError(f"mutual_knn_groups needs (N, D) features and (N,) cluster ids, got "
                           f"{tuple(features.shape)} and {tuple(clusters.shape)}")
    if group_size < 2 or k < group_size - 1:
        raise SelfSupError(f"mutual_knn_groups needs group_size >= 2 and k >= group_size - 1 (a member must have "
                           f"the other group_size - 1 among its k neighbours), got k={k}, group_size={group_size}")
    f = F.normalize(features.detach().float(), dim=1)
    clusters = clusters.to(f.device)
    groups: list[list[int]] = []
    for c in torch.unique(clusters).tolist():
        members = (clusters == c).nonzero().flatten()
        m = members.shape[0]
        if m < group_size:
            continue
        knn = _knn_lists(f[members], min(k, m - 1))
        near = [set(row) for row in knn]
        used = [False] * m
        ids = members.tolist()
        for i in range(m):
            if used[i]:
                continue
            group = [i]
            for j in knn[i]:
                if not used[j] and all(j in near[g] and g in near[j] for g in group):
                    group.append(j)
                    if len(group) == group_size:
                        break
            if len(group) == group_size:
                for g in group:
                    used[g] = True
                groups.append([ids[g] for g in group])
    groups.sort(key=lambda g: g[0])
    return torch.tensor(groups, dtype=torch.long, device=f.device).reshape(-1, group_size)
