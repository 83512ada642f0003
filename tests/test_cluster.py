"""selfsup.cluster: k-means, Sinkhorn-Knopp (SwAV, SeLa) and clustering metrics.

Independent references: naive loop implementations written here, sklearn's metrics and PCA,
scipy's linear_sum_assignment; the multi-process tests compare 2 gloo ranks with 1 process.
"""

from __future__ import annotations

import importlib
import itertools
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from distributed import DistributedRunError, run_distributed
from hypothesis import given, settings
from hypothesis import strategies as st

from selfsup.cluster import (
    ari,
    cluster_accuracy,
    cluster_health,
    kmeans,
    nmi,
    pca_whiten,
    sinkhorn_knopp,
    sinkhorn_sela,
)
from selfsup.cluster.metrics import linear_assignment
from selfsup.errors import SelfSupError

# The package re-exports the function kmeans under the submodule's name.
kmeans_module = importlib.import_module("selfsup.cluster.kmeans")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny ops on a shared, loaded machine are ~100x slower with several OpenMP threads.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blobs(k: int, per: int, d: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k Gaussian blobs around scaled basis vectors (pairwise centre distance 10 * sqrt 2)."""
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.eye(d)[:k]
    x = centres.repeat_interleave(per, 0) + spread * torch.randn(k * per, d, generator=g)
    return x, torch.arange(k).repeat_interleave(per)


def _inertia(x: torch.Tensor, centroids: torch.Tensor, assign: torch.Tensor) -> float:
    return float(((x - centroids[assign]) ** 2).sum())


def _cosine_scores(b: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, 16, generator=g), dim=1)
    c = F.normalize(torch.randn(k, 16, generator=g), dim=1)
    return z @ c.T


def _naive_swav_codes(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp written entry by entry in float64, without any stabilisation."""
    s = scores.double().tolist()
    b, k = len(s), len(s[0])
    q = [[math.exp(s[i][j] / epsilon) for i in range(b)] for j in range(k)]
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        for j in range(k):
            row_sum = sum(q[j])
            q[j] = [v / row_sum / k for v in q[j]]
        for i in range(b):
            col_sum = sum(q[j][i] for j in range(k))
            for j in range(k):
                q[j][i] = q[j][i] / col_sum / b
    return torch.tensor([[q[j][i] * b for j in range(k)] for i in range(b)], dtype=torch.float64)


# --- two processes vs one ------------------------------------------------------------------------

_KM_SPLIT = 140  # rank 0 holds the first 140 of 240 rows: shards of unequal size


def _dist_inputs() -> dict[str, torch.Tensor]:
    x, _ = _blobs(4, 60, 8, 0.5, seed=3)
    g = torch.Generator().manual_seed(4)
    dup = torch.cat([torch.ones(30, 3), torch.randn(6, 3, generator=g)])
    return {
        "scores": _cosine_scores(32, 6, seed=5),
        "log_probs": torch.log_softmax(torch.randn(40, 5, generator=g), dim=1),
        "x": x[torch.randperm(240, generator=g)],
        "dup": dup,
    }


def _compute_all(inputs: dict[str, torch.Tensor], rows: dict[str, slice]) -> dict[str, object]:
    x = inputs["x"][rows["x"]]
    out = {
        "codes": sinkhorn_knopp(inputs["scores"][rows["scores"]], 0.05, 3),
        "sela": sinkhorn_sela(inputs["log_probs"][rows["log_probs"]], tol=1e-8, return_plan=True),
        "kmeans": kmeans(x, 4, iterations=10, seed=7),
        "kmeans_random_spherical": kmeans(x, 5, iterations=10, seed=8, init="random", spherical=True),
        "kmeans_dup": kmeans(inputs["dup"][rows["dup"]], 6, iterations=5, seed=9, init="random"),
        "pca": pca_whiten(x, 3),
    }
    return out


def _rank_rows(rank: int, world_size: int) -> dict[str, slice]:
    assert world_size == 2
    halves = {"scores": 16, "log_probs": 20, "dup": 18}
    rows = {name: slice(0, h) if rank == 0 else slice(h, None) for name, h in halves.items()}
    rows["x"] = slice(0, _KM_SPLIT) if rank == 0 else slice(_KM_SPLIT, None)
    return rows


def _dist_worker(rank: int, world_size: int) -> dict[str, object]:
    from selfsup import dist

    assert dist.is_distributed() and dist.world_size() == world_size
    return _compute_all(_dist_inputs(), _rank_rows(rank, world_size))


@pytest.fixture(scope="module")
def two_process_results():
    return run_distributed(_dist_worker, 2, timeout=120)


@pytest.fixture(scope="module")
def one_process_results():
    inputs = _dist_inputs()
    return _compute_all(inputs, {name: slice(None) for name in inputs})


def _ranks_cat(results: list[dict], key: str, index=None) -> torch.Tensor:
    parts = [r[key] if index is None else r[key][index] for r in results]
    return torch.cat(parts)


# --- SwAV Sinkhorn-Knopp ---------------------------------------------------------------------------


def test_sinkhorn_marginals_after_many_iterations():
    scores = _cosine_scores(48, 8, seed=0)
    codes = sinkhorn_knopp(scores, epsilon=0.05, iterations=50)
    b, k = scores.shape
    plan = codes.double() / b
    torch.testing.assert_close(plan.sum(0), torch.full((k,), 1 / k, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(plan.sum(1), torch.full((b,), 1 / b, dtype=torch.float64), atol=1e-7, rtol=0)
    torch.testing.assert_close(codes.sum(1), torch.ones(b), atol=1e-5, rtol=0)


def test_sinkhorn_three_iterations_match_naive_reference():
    scores = _cosine_scores(20, 7, seed=1)
    for iterations in (1, 3):
        codes = sinkhorn_knopp(scores, epsilon=0.05, iterations=iterations)
        expected = _naive_swav_codes(scores, 0.05, iterations)
        torch.testing.assert_close(codes.double(), expected, rtol=1e-4, atol=1e-7)


def test_sinkhorn_float32_no_grad_under_autocast():
    scores = _cosine_scores(12, 5, seed=2).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = sinkhorn_knopp(scores)
    assert codes.dtype == torch.float32 and not codes.requires_grad
    expected = _naive_swav_codes(scores.detach().float(), 0.05, 3)
    torch.testing.assert_close(codes.double(), expected, rtol=1e-4, atol=1e-7)


def test_sinkhorn_stable_when_a_prototype_scores_far_below():
    # exp(score / 0.05) overflows float32 for the raw scores, and after subtracting one global
    # maximum prototype 2's row would underflow to all zeros (exp(-140)) and turn into NaN.
    scores = _cosine_scores(16, 6, seed=3)
    scores[:, 2] -= 6
    scores += 10
    codes = sinkhorn_knopp(scores, epsilon=0.05, iterations=3)
    assert torch.isfinite(codes).all()
    torch.testing.assert_close(codes.sum(1), torch.ones(16), atol=1e-5, rtol=0)
    # Shifting all scores is a global scale of Q, which the algorithm cancels.
    expected = _naive_swav_codes(scores - 10, 0.05, 3)
    torch.testing.assert_close(codes.double(), expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("bad", [dict(epsilon=0.0), dict(iterations=0)])
def test_sinkhorn_rejects_bad_arguments(bad):
    with pytest.raises(SelfSupError):
        sinkhorn_knopp(torch.zeros(4, 3), **bad)
    with pytest.raises(SelfSupError, match="batch, prototypes"):
        sinkhorn_knopp(torch.zeros(4))


def test_sinkhorn_two_processes_match_one(two_process_results, one_process_results):
    full = one_process_results["codes"]
    for rank, result in enumerate(two_process_results):
        rows = _rank_rows(rank, 2)["scores"]
        torch.testing.assert_close(result["codes"], full[rows], rtol=1e-5, atol=1e-7)


# --- SeLa ----------------------------------------------------------------------------------------------


def test_sela_equipartitions_random_inputs():
    g = torch.Generator().manual_seed(0)
    n, k = 600, 6
    log_probs = torch.log_softmax(2 * torch.randn(n, k, generator=g), dim=1)
    # Unbalanced on purpose: plain argmax would favour prototype 0.
    log_probs = torch.log_softmax(log_probs + torch.tensor([1.0, 0, 0, 0, 0, 0]), dim=1)
    assert torch.bincount(log_probs.argmax(1), minlength=k).max() > 1.5 * n / k
    labels, plan = sinkhorn_sela(log_probs, tol=1e-6, return_plan=True)
    assert labels.dtype == torch.long and labels.shape == (n,)
    counts = torch.bincount(labels, minlength=k)
    assert counts.min() >= 0.85 * n / k and counts.max() <= 1.15 * n / k, counts
    assert plan.dtype == torch.float64
    torch.testing.assert_close(plan.sum(1), torch.full((n,), 1 / n, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(plan.sum(0), torch.full((k,), 1 / k, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.equal(labels, plan.argmax(1))
    assert torch.equal(labels, sinkhorn_sela(log_probs, tol=1e-6))


def test_sela_plan_is_the_unique_scaling_of_p_lambda():
    # For positive P the doubly-constrained scaling diag(c) P diag(r) is unique: compare with a
    # plain alternating normalisation run to convergence.
    g = torch.Generator().manual_seed(1)
    log_probs = torch.log_softmax(torch.randn(30, 4, generator=g), dim=1).double()
    _, plan = sinkhorn_sela(log_probs, lamb=5.0, tol=1e-12, return_plan=True)
    q = torch.exp(5.0 * log_probs)
    for _ in range(5000):
        q = q / q.sum(0, keepdim=True) / 4
        q = q / q.sum(1, keepdim=True) / 30
    torch.testing.assert_close(plan, q, rtol=1e-6, atol=1e-12)


def test_sela_rejects_bad_input():
    with pytest.raises(SelfSupError, match="log_softmax"):
        sinkhorn_sela(torch.full((3, 2), float("nan")))
    with pytest.raises(SelfSupError, match="lamb"):
        sinkhorn_sela(torch.zeros(3, 2), lamb=0)


def test_sela_two_processes_match_one(two_process_results, one_process_results):
    labels, plan = one_process_results["sela"]
    for rank, result in enumerate(two_process_results):
        rows = _rank_rows(rank, 2)["log_probs"]
        assert torch.equal(result["sela"][0], labels[rows])
        torch.testing.assert_close(result["sela"][1], plan[rows], rtol=1e-9, atol=1e-15)


# --- k-means ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("spherical", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeanspp_recovers_blobs(seed, spherical):
    x, y = _blobs(5, 40, 8, 0.3, seed=seed)
    centroids, assign = kmeans(x, 5, seed=seed, spherical=spherical)
    assert centroids.shape == (5, 8) and assign.shape == (200,) and assign.dtype == torch.long
    assert nmi(assign, y) > 0.95
    if spherical:
        torch.testing.assert_close(centroids.norm(dim=1), torch.ones(5))


@pytest.mark.parametrize("spherical", [False, True])
def test_random_init_recovers_blobs_with_restarts(spherical):
    # A single random init lands two centres in one blob with probability 1 - 3!/3^3; keeping the
    # lowest-inertia run over restarts is how random init is meant to be used.
    x, y = _blobs(3, 40, 6, 0.3, seed=0)
    xs = F.normalize(x, dim=1) if spherical else x
    runs = [kmeans(x, 3, seed=s, init="random", spherical=spherical) for s in range(20)]
    best = min(runs, key=lambda r: _inertia(xs, *r))
    assert nmi(best[1], y) > 0.95


def test_kmeans_centroids_are_cluster_means():
    x, _ = _blobs(4, 30, 5, 1.5, seed=4)
    centroids, assign = kmeans(x, 6, iterations=3, seed=0)
    for j in range(6):
        torch.testing.assert_close(centroids[j], x[assign == j].mean(0), rtol=1e-5, atol=1e-5)


def test_kmeans_is_deterministic_for_a_seed():
    x, _ = _blobs(4, 30, 5, 2.0, seed=5)
    for init in ("kmeans++", "random"):
        c1, a1 = kmeans(x, 7, seed=11, init=init)
        c2, a2 = kmeans(x, 7, seed=11, init=init)
        assert torch.equal(c1, c2) and torch.equal(a1, a2)


def test_kmeans_chunking_does_not_change_the_result(monkeypatch):
    x, _ = _blobs(4, 30, 5, 2.0, seed=6)
    expected = kmeans(x, 6, seed=3)
    # A 7-entry budget forces one row per chunk in every chunked loop.
    monkeypatch.setattr(kmeans_module, "_CHUNK_ELEMENTS", 7)
    got = kmeans(x, 6, seed=3)
    torch.testing.assert_close(got[0], expected[0])
    assert torch.equal(got[1], expected[1])


@pytest.mark.parametrize("spherical", [False, True])
def test_no_empty_cluster_when_all_points_coincide(spherical):
    x = torch.ones(12, 4)
    for init in ("kmeans++", "random"):
        centroids, assign = kmeans(x, 4, seed=0, init=init, spherical=spherical)
        health = cluster_health(assign, 4)
        assert health["empty_clusters"] == 0
        assert torch.isfinite(centroids).all()


@pytest.mark.parametrize("spherical", [False, True])
def test_no_empty_cluster_when_random_init_picks_duplicates(spherical):
    g = torch.Generator().manual_seed(0)
    # 90% copies of one point: random init almost surely starts several centroids on it, and all
    # but the first-indexed of those are empty after the first assignment.
    x = torch.cat([torch.full((90, 3), 2.0), torch.randn(10, 3, generator=g)])
    for seed in range(5):
        centroids, assign = kmeans(x, 8, iterations=4, seed=seed, init="random", spherical=spherical)
        assert cluster_health(assign, 8)["empty_clusters"] == 0
        xs = F.normalize(x, dim=1) if spherical else x
        means = torch.stack([xs[assign == j].mean(0) for j in range(8)])
        torch.testing.assert_close(centroids, F.normalize(means, dim=1) if spherical else means,
                                   rtol=1e-5, atol=1e-5)


def test_kmeans_k_equal_n_puts_each_point_alone():
    x = torch.randn(9, 3, generator=torch.Generator().manual_seed(0))
    centroids, assign = kmeans(x, 9, seed=0)
    assert sorted(assign.tolist()) == list(range(9))
    torch.testing.assert_close(centroids[assign], x)


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=0), "k <= N"),
    (dict(k=11), "k <= N"),
    (dict(k=2, init="greedy"), "init"),
    (dict(k=2, backend="sklearn"), "backend"),
    (dict(k=2, iterations=0), "iterations"),
])
def test_kmeans_rejects_bad_arguments(kwargs, match):
    with pytest.raises(SelfSupError, match=match):
        kmeans(torch.randn(10, 3), **kwargs)


def test_kmeans_rejects_bad_features():
    with pytest.raises(SelfSupError, match="flatten"):
        kmeans(torch.randn(10), 2)
    with pytest.raises(SelfSupError, match="NaN"):
        kmeans(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), 2)


def test_kmeans_faiss_backend_without_faiss_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(SelfSupError, match="pip install faiss-cpu"):
        kmeans(torch.randn(10, 3), 2, backend="faiss")


def test_kmeans_faiss_backend_plumbing_with_a_stand_in(monkeypatch):
    # faiss is optional and not installed here: a stand-in whose training keeps the initial
    # centroids must make backend="faiss" equal to one torch iteration from the same init.
    import types

    calls = {}

    class StandInKmeans:
        def __init__(self, d, k, **params):
            calls["init"] = (d, k, params)

        def train(self, data, init_centroids=None):
            calls["train"] = (data.dtype, data.shape)
            self.centroids = init_centroids.copy()

    monkeypatch.setitem(sys.modules, "faiss", types.SimpleNamespace(Kmeans=StandInKmeans))
    x, _ = _blobs(4, 30, 5, 2.0, seed=7)
    got = kmeans(x, 6, iterations=9, seed=2, backend="faiss")
    expected = kmeans(x, 6, iterations=1, seed=2)
    torch.testing.assert_close(got[0], expected[0])
    assert torch.equal(got[1], expected[1])
    assert calls["init"] == (5, 6, dict(niter=9, seed=2, spherical=False, max_points_per_centroid=10_000_000,
                                        verbose=False))
    assert calls["train"] == (np.float32, (120, 5))


@pytest.mark.parametrize("key", ["kmeans", "kmeans_random_spherical", "kmeans_dup"])
def test_kmeans_two_processes_match_one(two_process_results, one_process_results, key):
    centroids, assign = one_process_results[key]
    for result in two_process_results:
        torch.testing.assert_close(result[key][0], centroids, rtol=1e-5, atol=1e-6)
    assert torch.equal(_ranks_cat(two_process_results, key, 1), assign)
    if key == "kmeans_dup":
        assert cluster_health(assign, 6)["empty_clusters"] == 0


# --- PCA-whitening ---------------------------------------------------------------------------------


def test_pca_whiten_matches_sklearn_up_to_sign():
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g) @ torch.randn(6, 6, generator=g) + 5
    out = pca_whiten(x.double(), 3, eps=0.0)
    ref = torch.from_numpy(PCA(3, whiten=True, svd_solver="full").fit_transform(x.double().numpy()))
    signs = torch.sign((out * ref).sum(0))
    torch.testing.assert_close(out * signs, ref, rtol=1e-6, atol=1e-8)
    cov = torch.cov(pca_whiten(x, 4).T)
    torch.testing.assert_close(cov, torch.eye(4), rtol=0, atol=1e-3)


def test_pca_whiten_rejects_bad_dim():
    with pytest.raises(SelfSupError, match="dim"):
        pca_whiten(torch.randn(10, 3), 4)


def test_pca_whiten_two_processes_match_one(two_process_results, one_process_results):
    torch.testing.assert_close(_ranks_cat(two_process_results, "pca"), one_process_results["pca"],
                               rtol=1e-4, atol=1e-5)


def test_run_distributed_reports_a_failing_rank():
    with pytest.raises(DistributedRunError, match=r"rank 1 raised:[\s\S]*boom on rank 1"):
        run_distributed(_fail_on_rank_one, 2, timeout=60)


def _fail_on_rank_one(rank: int, world_size: int) -> int:
    if rank == 1:
        raise ValueError("boom on rank 1")
    return rank


# --- metrics ---------------------------------------------------------------------------------------

_labellings = st.lists(st.tuples(st.integers(-1, 4), st.integers(0, 3)), min_size=1, max_size=50)


@settings(max_examples=60, deadline=None)
@given(_labellings)
def test_nmi_and_ari_match_sklearn(pairs):
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b, average_method="geometric"),
                                      abs=1e-10)
    assert ari(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-10)


def test_metrics_accept_tensors_and_arrays():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 5, (200,), generator=g), torch.randint(0, 4, (200,), generator=g)
    assert nmi(a, b) == nmi(a.numpy(), b.numpy().tolist())
    assert ari(a, b) == ari(a.numpy(), b.numpy())
    assert nmi(a, a) == pytest.approx(1.0) and ari(a, a) == pytest.approx(1.0)
    with pytest.raises(SelfSupError, match="same samples"):
        nmi(a, b[:-1])


@pytest.mark.parametrize("shape", [(1, 1), (5, 5), (12, 12), (4, 9), (9, 4), (30, 30)])
def test_linear_assignment_matches_scipy(shape):
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(sum(shape))
    for trial in range(5):
        cost = rng.normal(size=shape) if trial % 2 else rng.integers(0, 5, size=shape).astype(float)
        for maximize in (False, True):
            rows, cols = linear_assignment(cost, maximize=maximize)
            ref_rows, ref_cols = linear_sum_assignment(cost, maximize=maximize)
            assert len(set(rows.tolist())) == len(rows) == min(shape)
            assert len(set(cols.tolist())) == len(cols)
            assert np.all(np.diff(rows) > 0)
            assert cost[rows, cols].sum() == pytest.approx(cost[ref_rows, ref_cols].sum(), abs=1e-9)
            if trial % 2:  # continuous costs: the optimum is unique, so the pairs are too
                assert np.array_equal(rows, ref_rows) and np.array_equal(cols, ref_cols)


def test_cluster_accuracy_permuted_and_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    perm = rng.permutation(5) + 10
    assert cluster_accuracy(perm[labels], labels) == 1.0
    assert cluster_accuracy(torch.from_numpy(perm[labels]), torch.from_numpy(labels)) == 1.0
    pred = rng.integers(0, 4, 40)
    truth = rng.integers(0, 4, 40)
    best = max(np.mean(np.array(p)[pred] == truth) for p in itertools.permutations(range(4)))
    assert cluster_accuracy(pred, truth) == pytest.approx(best)
    # More clusters than classes: an unmatched cluster's points are errors.
    assert cluster_accuracy([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 1, 1]) == pytest.approx(4 / 6)


def test_cluster_health():
    health = cluster_health(torch.tensor([0, 0, 0, 1, 1, 3]), 4)
    sizes = np.array([3, 2, 1]) / 6
    assert health["entropy"] == pytest.approx(-(sizes * np.log(sizes)).sum() / np.log(4))
    assert health["empty_clusters"] == 1
    assert health["largest_fraction"] == pytest.approx(0.5)
    assert cluster_health(np.arange(8) % 4, 4)["entropy"] == pytest.approx(1.0)
    assert cluster_health(np.zeros(5, dtype=int), 3)["entropy"] == pytest.approx(0.0)
    with pytest.raises(SelfSupError, match="pass the k"):
        cluster_health([0, 5], 3)
