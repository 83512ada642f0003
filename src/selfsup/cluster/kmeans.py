"""k-means and PCA-whitening, the clustering step of DeepCluster (Caron et al. 2018, "Deep
Clustering for Unsupervised Learning of Visual Features", arXiv 1807.05520, Sec. 3.2-3.3 and 4).

Both run in torch on the features' device and are multi-process aware: under torch.distributed
every rank passes its own shard of the features and gets the result of running on all shards
concatenated in rank order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup import dist
from selfsup.errors import SelfSupError

# At most this many entries in one (rows x k) score block, so 50k points x 1000 centroids is
# processed as ~16 MB blocks instead of one 200 MB matrix.
_CHUNK_ELEMENTS = 1 << 22

# Size of the offset between the two halves of a split centroid, relative to the data scale:
# small enough not to move either far from the split cluster, large enough to stay distinct in
# float32.
_SPLIT_SCALE = 1e-4

_INITS = ("kmeans++", "random")
_BACKENDS = ("torch", "faiss")


def _as_features(x: Tensor | object, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise SelfSupError(f"{what} needs an (N, D) tensor of features, got {type(x).__name__}") from e
    if x.ndim != 2:
        raise SelfSupError(f"{what} needs an (N, D) tensor of features, got shape {tuple(x.shape)}; "
                           "flatten or pool the features to one vector per sample first")
    if x.shape[1] < 1:
        raise SelfSupError(f"{what} needs at least one feature dimension, got shape {tuple(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise SelfSupError(f"{what} needs real-valued features, got dtype {x.dtype}")
    x = x.detach()
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise SelfSupError(f"{what} got features containing NaN or inf; check the model outputs "
                           "(e.g. a diverged run) before clustering")
    return x


def _row_slices(n: int, width: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, width))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _global_count(n: int, device: torch.device) -> int:
    return int(dist.all_reduce_sum(torch.tensor([n], dtype=torch.long, device=device)).item())


def _gather_varlen(x: Tensor) -> Tensor:
    """All ranks' rows concatenated in rank order; shards may differ in length."""
    if not dist.is_distributed():
        return x
    sizes = dist.gather_no_grad(torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)).tolist()
    # all_gather needs equal shapes, so pad every shard to the longest and cut the padding off.
    padded = x.new_zeros((max(sizes), x.shape[1]))
    padded[: x.shape[0]] = x
    gathered = dist.gather_no_grad(padded)
    longest = max(sizes)
    return torch.cat([gathered[i * longest : i * longest + s] for i, s in enumerate(sizes)])


def _assign(x: Tensor, centroids: Tensor, spherical: bool) -> Tensor:
    """Index of the nearest centroid per row (cosine for spherical, Euclidean otherwise)."""
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    # ||x||^2 is the same for every centroid, so it cannot change the argmin and is skipped.
    c_sq = (centroids * centroids).sum(1)
    ct = centroids.T
    # One block buffer reused by every chunk: no per-chunk allocations or temporaries.
    block = None
    for s in _row_slices(x.shape[0], centroids.shape[0]):
        rows = s.stop - s.start
        if block is None:
            block = x.new_empty((rows, centroids.shape[0]))
        score = block[:rows]
        if spherical:
            out[s] = torch.mm(x[s], ct, out=score).argmax(1)
        else:
            out[s] = torch.addmm(c_sq, x[s], ct, beta=1, alpha=-2, out=score).argmin(1)
    return out


def _sq_dist_to(x: Tensor, x_sq: Tensor, c: Tensor) -> Tensor:
    # Expanded form avoids an (N, D) temporary; clamped because cancellation can go below zero.
    return (x_sq - 2 * (x @ c).double() + float((c * c).sum())).clamp_min_(0)


def _init_kmeanspp(x: Tensor, k: int, g: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre is drawn with probability
    proportional to its squared distance to the nearest centre chosen so far."""
    n = x.shape[0]
    x_sq = (x * x).sum(1).double()
    idx = [int(torch.randint(n, (1,), generator=g))]
    d2 = _sq_dist_to(x, x_sq, x[idx[0]])
    for _ in range(1, k):
        cum = torch.cumsum(d2, 0)
        total = float(cum[-1])
        u = float(torch.rand((), generator=g, dtype=torch.float64))
        if total > 0:
            # Inverse-CDF sampling instead of torch.multinomial, which caps N at 2^24.
            j = int(torch.searchsorted(cum, torch.tensor([u * total], dtype=cum.dtype, device=cum.device),
                                       right=True).clamp_max_(n - 1))
        else:
            # Every point coincides with a chosen centre (fewer distinct points than k): the
            # duplicate centres are separated later by the empty-cluster rule.
            j = min(n - 1, int(u * n))
        idx.append(j)
        torch.minimum(d2, _sq_dist_to(x, x_sq, x[j]), out=d2)
    return x[torch.tensor(idx, device=x.device)].clone()


def _init_centroids(x: Tensor, k: int, init: str, seed: int, spherical: bool) -> Tensor:
    """Identical initial centroids on every rank, equal to those of one process holding all rows."""
    allx = _gather_varlen(x)
    centroids = torch.empty((k, x.shape[1]), dtype=x.dtype, device=x.device)
    if dist.is_main():
        g = torch.Generator().manual_seed(seed)
        if init == "random":
            pick = torch.randperm(allx.shape[0], generator=g)[:k].to(x.device)
            centroids = allx[pick].clone()
        else:
            centroids = _init_kmeanspp(allx, k, g)
    del allx
    centroids = dist.broadcast(centroids.contiguous(), 0)
    return F.normalize(centroids, dim=1) if spherical else centroids


def _counts(assign: Tensor, k: int) -> Tensor:
    return dist.all_reduce_sum(torch.bincount(assign, minlength=k))


def _update(x: Tensor, assign: Tensor, counts: Tensor, spherical: bool) -> Tensor:
    """Cluster means from the global per-cluster sums and counts (Lloyd's M-step)."""
    k = counts.shape[0]
    # float64 sums make the result independent (to rounding) of how the rows are split over ranks.
    sums = torch.zeros((k, x.shape[1]), dtype=torch.float64, device=x.device)
    for s in _row_slices(x.shape[0], x.shape[1]):
        sums.index_add_(0, assign[s], x[s].double())
    dist.all_reduce_sum(sums)
    centroids = sums / counts.clamp_min(1).double()[:, None]
    if spherical:
        centroids = F.normalize(centroids, dim=1)
    return centroids.to(x.dtype)


def _split_side(x: Tensor, members: Tensor, origin: Tensor, direction: Tensor) -> Tensor:
    """For the rows ``members`` of x: True where (x - origin) . direction > 0."""
    side = torch.empty(members.shape[0], dtype=torch.bool, device=x.device)
    for s in _row_slices(members.shape[0], x.shape[1]):
        side[s] = (x[members[s]] - origin) @ direction > 0
    return side


def _fix_empty(x: Tensor, assign: Tensor, centroids: Tensor, counts: Tensor, spherical: bool,
               g: torch.Generator, data_scale: float) -> int:
    """DeepCluster's empty-cluster rule (Caron et al. 2018, Sec. 3.3, "Empty clusters"), in place.

    An empty cluster j takes the centroid of a non-empty cluster m, drawn at random with
    probability proportional to |m| - 1, with a small perturbation +delta for j and -delta for m,
    and the points of m go to whichever of the two is closer. Returns how many clusters were
    filled. Every rank makes the same draws (``counts`` are global, ``g`` has the same state).
    """
    empties = (counts == 0).nonzero().flatten().tolist()
    for j in empties:
        # |m| - 1 rather than |m|: a singleton cannot be split into two non-empty clusters. Since
        # k <= N, an empty cluster implies some cluster has at least two points.
        weights = (counts - 1).clamp_min(0).double().cpu()
        m = int(torch.multinomial(weights, 1, generator=g))
        direction = torch.randn(x.shape[1], generator=g, dtype=torch.float64).to(x.device, x.dtype)
        cm = centroids[m].clone()
        if spherical:
            # Orthogonal to the unit centroid, so both halves keep equal norm and the split is
            # the hyperplane through cm, as in the Euclidean case.
            direction = direction - (direction @ cm) * cm
        norm = float(direction.norm())
        delta = direction * (_SPLIT_SCALE * (float(cm.norm()) + data_scale) / norm) if norm > 0 else direction
        centroids[j] = cm + delta
        centroids[m] = cm - delta
        if spherical:
            centroids[[j, m]] = F.normalize(centroids[[j, m]], dim=1)

        members = (assign == m).nonzero().flatten()
        # Nearer to cm + delta than to cm - delta  <=>  (p - cm) . delta > 0 (for spherical, with
        # delta orthogonal to cm, the same test on the cosine).
        to_j = _split_side(x, members, torch.zeros_like(cm) if spherical else cm, direction)
        moved = int(dist.all_reduce_sum(to_j.sum().reshape(1)).item())
        total = int(counts[m])
        if moved == 0 or moved == total:
            # All of m's points lie on one side (e.g. identical points): alternate them by their
            # position in the global row order instead, so both halves get points on every
            # world size in the same way.
            per_rank = torch.zeros(dist.world_size(), dtype=torch.long, device=x.device)
            per_rank[dist.rank()] = members.shape[0]
            dist.all_reduce_sum(per_rank)
            start = int(per_rank[: dist.rank()].sum())
            ordinal = torch.arange(start, start + members.shape[0], device=x.device)
            to_j = ordinal % 2 == 1
            moved = total // 2
        assign[members[to_j]] = j
        counts[j] = moved
        counts[m] = total - moved
    return len(empties)


def _import_faiss():
    try:
        import faiss
    except ImportError as e:
        raise SelfSupError("kmeans(backend='faiss') needs the faiss package: `pip install faiss-cpu` "
                           "(or faiss-gpu), or use backend='torch'") from e
    return faiss


@torch.no_grad()
def kmeans(x: Tensor, k: int, iterations: int = 20, seed: int = 0, init: str = "kmeans++",
           spherical: bool = False, backend: str = "torch", distributed: bool = True) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with DeepCluster's empty-cluster handling.

    Minimises DeepCluster's objective (Caron et al. 2018, arXiv 1807.05520, Eq. 2)

        min_C (1/N) sum_n min_y || x_n - C y ||^2,  y a one-hot assignment,

    alternating nearest-centroid assignment and centroid = mean of its points. After each
    assignment, every empty cluster is re-seeded from a non-empty one as in Sec. 3.3 (see
    ``_fix_empty``), so no cluster is empty in the result. Stops early once the assignment no
    longer changes.

    ``x``: (N, D) features; on several processes, this rank's shard (shards may differ in size).
    ``init``: "kmeans++" (Arthur & Vassilvitskii 2007) or "random" (k distinct rows), drawn from
    a ``torch.Generator`` seeded with ``seed``, so the result is deterministic.
    ``spherical``: cluster the L2-normalised rows by cosine similarity; centroids are unit norm.
    ``backend``: "torch", or "faiss" (DeepCluster's library, needs ``pip install faiss-cpu``)
    which trains on rank 0 over all shards, then one torch assignment/update step applies the
    empty-cluster rule.

    Returns ``(centroids (k, D), assignments (N,) long)`` on x's device, centroids in float32
    (float64 for float64 input); ``assignments`` are this rank's rows, and ``centroids`` are the
    means of the points assigned to them (L2-normalised if spherical). Under
    torch.distributed every rank gets the centroids of k-means over all ranks' rows.

    ``distributed=False``: ``x`` is the whole data set on every rank (as in an E-step over the
    full training set); each rank clusters it alone, with no collective, so no row is counted
    once per rank, and every rank gets the result of one process on ``x``.
    """
    if not distributed:
        with dist.local():
            return kmeans(x, k, iterations, seed, init, spherical, backend)
    x = _as_features(x, "kmeans")
    if init not in _INITS:
        raise SelfSupError(f"kmeans init must be one of {_INITS}, got {init!r}")
    if backend not in _BACKENDS:
        raise SelfSupError(f"kmeans backend must be one of {_BACKENDS}, got {backend!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise SelfSupError(f"kmeans iterations must be a positive integer, got {iterations!r}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise SelfSupError(f"kmeans k must be an integer number of clusters, got {k!r}")
    n_total = _global_count(x.shape[0], x.device)
    if k < 1 or k > n_total:
        raise SelfSupError(f"kmeans needs 1 <= k <= N (number of samples), got k={k} for N={n_total}; "
                           "lower k or cluster more samples")
    faiss = _import_faiss() if backend == "faiss" else None
    if spherical:
        x = F.normalize(x, dim=1)

    centroids = _init_centroids(x, k, init, seed, spherical)
    # Scale of the split perturbation: the RMS norm of the data over all ranks.
    sq = torch.zeros(1, dtype=torch.float64, device=x.device)
    for s in _row_slices(x.shape[0], x.shape[1]):
        sq += x[s].double().pow(2).sum()
    data_scale = math.sqrt(float(dist.all_reduce_sum(sq)) / n_total)
    # Separate stream from the init's, so ranks other than 0 (which skip the init draws) stay in step.
    g = torch.Generator().manual_seed(seed + 1)

    if faiss is not None:
        centroids = _faiss_train(faiss, x, centroids, k, iterations, seed, spherical)
        iterations = 1

    previous = None
    assign = None
    for _ in range(iterations):
        assign = _assign(x, centroids, spherical)
        counts = _counts(assign, k)
        if previous is not None:
            changed = int(dist.all_reduce_sum((assign != previous).sum().reshape(1)).item())
            if changed == 0 and bool((counts > 0).all()):
                # Centroids are already the means of exactly this assignment.
                break
        _fix_empty(x, assign, centroids, counts, spherical, g, data_scale)
        centroids = _update(x, assign, counts, spherical)
        previous = assign
    return centroids, assign


def _faiss_train(faiss, x: Tensor, init: Tensor, k: int, iterations: int, seed: int,
                 spherical: bool) -> Tensor:
    import numpy as np

    allx = _gather_varlen(x)
    centroids = torch.empty_like(init)
    if dist.is_main():
        data = np.ascontiguousarray(allx.cpu().numpy(), dtype=np.float32)
        # DeepCluster lets faiss use every point rather than its default subsample of 256 per centroid.
        km = faiss.Kmeans(data.shape[1], k, niter=iterations, seed=seed, spherical=spherical,
                          max_points_per_centroid=10_000_000, verbose=False)
        km.train(data, init_centroids=np.ascontiguousarray(init.cpu().numpy(), dtype=np.float32))
        centroids = torch.from_numpy(np.asarray(km.centroids)).to(init.device, init.dtype)
    del allx
    return dist.broadcast(centroids.contiguous(), 0)


@torch.no_grad()
def pca_whiten(x: Tensor, dim: int, eps: float = 1e-5, distributed: bool = True) -> Tensor:
    """PCA-reduce to ``dim`` dimensions and whiten, DeepCluster's preprocessing before k-means
    (Caron et al. 2018, arXiv 1807.05520, Sec. 4: features are PCA-reduced to 256 dimensions,
    whitened and L2-normalised before clustering).

    With mean mu, covariance S = U diag(lambda) U^T (eigenvalues descending, unbiased estimate),
    returns (x - mu) U_dim diag(lambda_dim + eps)^(-1/2), whose covariance is ~identity.
    DeepCluster then L2-normalises each row; do that with ``F.normalize`` or ``kmeans(...,
    spherical=True)``. Eigenvector signs are fixed (largest entry positive) so the output is
    reproducible. Under torch.distributed, mean and covariance are over all ranks' rows and each
    rank gets its own rows transformed; with ``distributed=False`` each rank treats its ``x`` as
    the whole data set, as :func:`kmeans` does.
    """
    if not distributed:
        with dist.local():
            return pca_whiten(x, dim, eps)
    x = _as_features(x, "pca_whiten")
    d = x.shape[1]
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= d:
        raise SelfSupError(f"pca_whiten dim must be an integer in [1, {d}] (the feature dimension), "
                           f"got {dim!r}")
    if not eps >= 0:
        raise SelfSupError(f"pca_whiten eps must be >= 0, got {eps}")
    n = _global_count(x.shape[0], x.device)
    if n < 2:
        raise SelfSupError(f"pca_whiten needs at least 2 samples to estimate a covariance, got {n}")
    # Two passes (mean, then centred scatter) in float64: the one-pass E[xx^T] - mu mu^T form
    # cancels catastrophically when the mean is large compared with the spread.
    total = torch.zeros(d, dtype=torch.float64, device=x.device)
    for s in _row_slices(x.shape[0], d):
        total += x[s].double().sum(0)
    mean = dist.all_reduce_sum(total) / n
    scatter = torch.zeros((d, d), dtype=torch.float64, device=x.device)
    for s in _row_slices(x.shape[0], d):
        centred = x[s].double() - mean
        scatter += centred.T @ centred
    cov = dist.all_reduce_sum(scatter) / (n - 1)
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.flip(0)[:dim].clamp_min(0)
    evecs = evecs.flip(1)[:, :dim]
    pivot = evecs.abs().argmax(0)
    evecs = evecs * torch.sign(evecs[pivot, torch.arange(dim, device=x.device)])
    w = evecs / torch.sqrt(evals + eps)
    return (x.double() - mean) @ w if x.dtype == torch.float64 else (x - mean.float()) @ w.float()
