"""Clustering quality: agreement with labels (NMI, ARI, Hungarian accuracy) and cluster health.

Every function takes torch tensors or numpy arrays (or lists). Label values are arbitrary
(negative, non-contiguous, strings); only which samples share a value matters. The optimal
assignment is solved here in numpy, so scipy is not needed at run time.
"""

from __future__ import annotations

import math

import numpy as np

from selfsup.errors import SelfSupError


def _labels(x: object, what: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1:
        raise SelfSupError(f"{what} must be a 1-D sequence of labels, got shape {a.shape}; flatten it first")
    return a


def _pair(a: object, b: object, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = _labels(a, f"{what}: first labelling"), _labels(b, f"{what}: second labelling")
    if a.shape[0] != b.shape[0]:
        raise SelfSupError(f"{what} needs two labellings of the same samples, "
                           f"got lengths {a.shape[0]} and {b.shape[0]}")
    if a.shape[0] == 0:
        raise SelfSupError(f"{what} needs at least one sample, got empty labellings")
    return a, b


def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(distinct a, distinct b) counts of samples with each pair of labels."""
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    na, nb = int(ia.max()) + 1, int(ib.max()) + 1
    return np.bincount(ia.ravel() * nb + ib.ravel(), minlength=na * nb).reshape(na, nb)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(a: object, b: object) -> float:
    """Normalised mutual information with DeepCluster's normalisation (Caron et al. 2018, arXiv
    1807.05520, Sec. 5.1): NMI(A; B) = I(A; B) / sqrt(H(A) H(B)).

    The geometric mean of the entropies (sklearn's ``average_method="geometric"``), natural log;
    symmetric in a and b. Two single-cluster labellings give 1.0; if only one labelling has a
    single cluster the information is 0 and so is the result.
    """
    a, b = _pair(a, b, "nmi")
    table = _contingency(a, b)
    if table.shape[0] == table.shape[1] == 1:
        return 1.0
    n = table.sum()
    rows, cols = table.sum(1), table.sum(0)
    nz = table > 0
    joint = table[nz] / n
    outer = np.outer(rows, cols)[nz] / (n * n)
    mi = float((joint * (np.log(joint) - np.log(outer))).sum())
    denom = math.sqrt(_entropy(rows) * _entropy(cols))
    if denom == 0:
        return 0.0
    # Rounding can push I slightly outside [0, sqrt(H(A)H(B))].
    return min(1.0, max(0.0, mi / denom))


def ari(a: object, b: object) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985, "Comparing partitions"): the Rand index
    corrected for chance,

        (sum_ij C(n_ij, 2) - E) / ((sum_i C(a_i, 2) + sum_j C(b_j, 2)) / 2 - E),
        E = sum_i C(a_i, 2) sum_j C(b_j, 2) / C(n, 2),

    over the contingency counts n_ij and marginals a_i, b_j. 1 for identical partitions, ~0 for
    independent ones, can be negative.
    """
    a, b = _pair(a, b, "ari")
    table = _contingency(a, b).astype(np.float64)
    n = float(table.sum())

    def pairs(v: np.ndarray) -> float:
        return float((v * (v - 1) / 2).sum())

    index = pairs(table)
    sum_a, sum_b = pairs(table.sum(1)), pairs(table.sum(0))
    total = n * (n - 1) / 2
    expected = sum_a * sum_b / total if total > 0 else 0.0
    denom = (sum_a + sum_b) / 2 - expected
    # The denominator vanishes only when both are one cluster or both all singletons, i.e. the
    # partitions are identical.
    if denom == 0:
        return 1.0
    return (index - expected) / denom


def linear_assignment(cost: object, maximize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Optimal assignment of rows to columns of a (possibly rectangular) cost matrix.

    The O(n^2 m) shortest-augmenting-path form of the Hungarian method (Kuhn 1955; Jonker &
    Volgenant 1987) with row and column potentials u, v: each row is added by a Dijkstra-like
    search over reduced costs c_ij - u_i - v_j >= 0, then the path is flipped. Returns
    ``(row_ind, col_ind)`` with row_ind ascending, min(n, m) pairs minimising (or, with
    ``maximize``, maximising) sum cost[row_ind, col_ind], the same contract as
    scipy.optimize.linear_sum_assignment.
    """
    c = np.array(cost, dtype=np.float64)
    if c.ndim != 2:
        raise SelfSupError(f"linear_assignment needs a 2-D cost matrix, got shape {c.shape}")
    if not np.isfinite(c).all():
        raise SelfSupError("linear_assignment needs finite costs; replace inf/NaN by a large finite cost")
    if maximize:
        c = -c
    transposed = c.shape[0] > c.shape[1]
    if transposed:
        c = c.T
    n, m = c.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    # Index 0 of the column arrays is a virtual column where each new row's search starts; rows
    # are 1-based in ``owner`` so that 0 means "unassigned".
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    owner = np.zeros(m + 1, dtype=np.int64)
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        owner[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = owner[j0]
            reduced = c[i0 - 1] - u[i0] - v[1:]
            better = ~used[1:] & (reduced < minv[1:])
            minv[1:][better] = reduced[better]
            way[1:][better] = j0
            candidates = np.where(used, np.inf, minv)
            j1 = int(np.argmin(candidates))
            delta = candidates[j1]
            # Keep reduced costs of the tree's edges at zero and shrink the others' slack.
            u[owner[used]] += delta
            v[used] -= delta
            minv[~used] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    cols = np.nonzero(owner[1:])[0]
    rows = owner[1:][cols] - 1
    if transposed:
        rows, cols = cols, rows
    order = np.argsort(rows)
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


def cluster_accuracy(pred: object, labels: object) -> float:
    """Unsupervised clustering accuracy: the fraction of samples correctly labelled under the best
    one-to-one mapping of clusters to classes, found with the Hungarian method on the
    cluster/class contingency table (as in e.g. Xie et al. 2016, "Unsupervised Deep Embedding for
    Clustering Analysis", arXiv 1511.06335, the ACC metric). With more clusters than classes, the points
    of unmatched clusters count as errors.
    """
    pred, labels = _pair(pred, labels, "cluster_accuracy")
    table = _contingency(pred, labels)
    rows, cols = linear_assignment(table, maximize=True)
    return float(table[rows, cols].sum()) / pred.shape[0]


def cluster_health(assignments: object, k: int) -> dict[str, float | int]:
    """Signs of collapse in a k-way clustering: ``entropy`` of the cluster sizes divided by log k
    (1 = perfectly balanced, 0 = everything in one cluster; 1 when k = 1), ``empty_clusters``
    (count of clusters with no sample) and ``largest_fraction`` (share of the largest cluster).
    """
    a = _labels(assignments, "cluster_health assignments")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SelfSupError(f"cluster_health k must be a positive integer number of clusters, got {k!r}")
    if a.shape[0] == 0:
        raise SelfSupError("cluster_health needs at least one assignment, got none")
    if not np.issubdtype(a.dtype, np.integer):
        raise SelfSupError(f"cluster_health assignments must be integer cluster indices, got dtype {a.dtype}")
    if a.min() < 0 or a.max() >= k:
        raise SelfSupError(f"cluster_health assignments must lie in [0, {k}), got values in "
                           f"[{a.min()}, {a.max()}]; pass the k used for clustering")
    sizes = np.bincount(a.astype(np.int64), minlength=k)
    entropy = _entropy(sizes) / math.log(k) if k > 1 else 1.0
    return {
        "entropy": float(entropy),
        "empty_clusters": int((sizes == 0).sum()),
        "largest_fraction": float(sizes.max() / a.shape[0]),
    }
