"""Clustering for self-supervision: k-means (DeepCluster), Sinkhorn-Knopp equipartition (SwAV,
SeLa) and clustering metrics."""

from selfsup.cluster.kmeans import kmeans, pca_whiten
from selfsup.cluster.metrics import ari, cluster_accuracy, cluster_health, nmi
from selfsup.cluster.sinkhorn import sinkhorn_knopp, sinkhorn_sela

__all__ = [
    "kmeans",
    "pca_whiten",
    "sinkhorn_knopp",
    "sinkhorn_sela",
    "nmi",
    "ari",
    "cluster_accuracy",
    "cluster_health",
]
