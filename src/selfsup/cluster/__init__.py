"""Clustering for self-supervision: k-means (DeepCluster), Sinkhorn-Knopp equipartition (SwAV,
SeLa), mutual nearest-neighbour groups (Transitive Invariance) and clustering metrics."""

from selfsup.cluster.kmeans import kmeans, pca_whiten
from selfsup.cluster.metrics import ari, cluster_accuracy, cluster_health, nmi
from selfsup.cluster.neighbors import mutual_knn_groups
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
    "mutual_knn_groups",
]
