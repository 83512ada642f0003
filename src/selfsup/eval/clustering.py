"""Clustering evaluation: k-means on frozen features, scored against the labels.

K = the number of classes, k-means (``selfsup.cluster.kmeans``, k-means++ seeding, Lloyd
iterations, DeepCluster's empty-cluster rule) on L2-normalized features, the best of a few
restarts by k-means objective. Scores:

- NMI as DeepCluster defines it (Caron et al. 2018, arXiv 1807.05520, Sec. 5.1):
  I(A; B) / sqrt(H(A) H(B)), the geometric normalization (not sklearn's default arithmetic one);
- ARI, the adjusted Rand index (Hubert & Arabie 1985);
- cluster accuracy: the best one-to-one map of clusters to classes (Hungarian method).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from selfsup.cluster import ari, cluster_accuracy, kmeans, nmi
from selfsup.errors import SelfSupError

NMI_DEFINITION = "I(A;B)/sqrt(H(A)H(B)) (DeepCluster, geometric mean of the entropies)"


def clustering_scores(assignments, labels) -> dict[str, float]:
    """NMI (DeepCluster's definition), ARI and Hungarian accuracy (as fractions in [0, 1])."""
    return {"nmi": nmi(assignments, labels), "ari": ari(assignments, labels),
            "accuracy": cluster_accuracy(assignments, labels)}


def cluster_eval(features: Tensor, labels: Tensor, k: int | None = None, iterations: int = 50,
                 restarts: int = 3, seed: int = 0) -> dict:
    """k-means with ``k`` clusters (default: the number of classes) on L2-normalized features, scored."""
    if (labels < 0).any():
        raise SelfSupError("clustering evaluation needs a label for every image")
    k = k or int(labels.unique().numel())
    x = F.normalize(features.float(), dim=1)
    best = None
    for r in range(restarts):
        centroids, assign = kmeans(x, k, iterations=iterations, seed=seed + r)
        objective = float(((x - centroids[assign]) ** 2).sum(1).mean())
        if best is None or objective < best[0]:
            best = (objective, assign)
    objective, assign = best
    return {**clustering_scores(assign.cpu(), labels.cpu()), "k": k, "kmeans_objective": objective,
            "samples": int(len(labels)), "nmi_definition": NMI_DEFINITION}
