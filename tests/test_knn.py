import math

import pytest
import torch

from selfsup.errors import SelfSupError
from selfsup.eval import knn_eval, knn_predict
from selfsup.eval.knn import knn_scores


def brute_force_knn(train, labels, test, c, k, t):
    train = train / train.norm(dim=1, keepdim=True)
    test = test / test.norm(dim=1, keepdim=True)
    preds = []
    for q in test:
        sims = [(float(q @ x), int(y)) for x, y in zip(train, labels)]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * c
        for s, y in sims[:k]:
            votes[y] += math.exp(s / t)
        preds.append(max(range(c), key=lambda j: votes[j]))
    return torch.tensor(preds)


@pytest.mark.parametrize("k,t", [(1, 0.07), (5, 0.07), (20, 0.5), (60, 0.1)])
def test_knn_predict_matches_brute_force(k, t):
    g = torch.Generator().manual_seed(k)
    train, test = torch.randn(60, 8, generator=g).double(), torch.randn(25, 8, generator=g).double()
    labels = torch.randint(0, 4, (60,), generator=g)
    assert torch.equal(knn_predict(train, labels, test, 4, k, t), brute_force_knn(train, labels, test, 4, k, t))


def test_knn_chunking_does_not_change_scores():
    train, test, labels = torch.randn(300, 16), torch.randn(77, 16), torch.randint(0, 10, (300,))
    full = knn_scores(train, labels, test, 10, k=50)
    chunked = knn_scores(train, labels, test, 10, k=50, chunk_size=8)
    assert torch.allclose(full, chunked)


def test_knn_eval_separable_clusters_and_top5():
    centers = torch.randn(5, 32) * 5
    y_tr, y_te = torch.arange(5).repeat(40), torch.arange(5).repeat(10)
    r = knn_eval(centers[y_tr] + torch.randn(200, 32), y_tr, centers[y_te] + torch.randn(50, 32), y_te, k=10)
    assert r["top1"] == 100.0 and r["top5"] == 100.0


def test_knn_rejects_k_larger_than_train_set():
    with pytest.raises(SelfSupError, match="k=11"):
        knn_predict(torch.randn(10, 4), torch.zeros(10, dtype=torch.long), torch.randn(3, 4), 2, k=11)


def test_linear_probe_learns_a_linear_rule_and_picks_weight_decay_on_validation():
    from selfsup.eval import linear_probe

    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, 4, generator=g)
    x_tr, x_te = torch.randn(400, 20, generator=g), torch.randn(200, 20, generator=g)
    y_tr, y_te = (x_tr @ w).argmax(1), (x_te @ w).argmax(1)
    r = linear_probe(x_tr, y_tr, x_te, y_te)
    assert r["top1"] > 90.0 and r["top5"] == 100.0
    assert r["weight_decay"] in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2) and len(r["val_top1"]) == 5
    noisy = linear_probe(torch.randn(400, 20, generator=g), y_tr, x_te, y_te)
    assert noisy["top1"] < 45.0  # labels unrelated to the features: near chance (25%)


def test_leave_one_out_knn_of_the_learning_tests_matches_a_naive_loop():
    from conftest import leave_one_out_knn_top1

    g = torch.Generator().manual_seed(3)
    f, y = torch.randn(40, 6, generator=g), torch.randint(0, 4, (40,), generator=g)
    unit = torch.nn.functional.normalize(f, dim=1).tolist()
    correct = 0
    for i, q in enumerate(unit):
        sims = sorted(((sum(a * b for a, b in zip(q, unit[j])), j) for j in range(40) if j != i), reverse=True)[:5]
        votes = [0.0] * 4
        for s, j in sims:
            votes[int(y[j])] += math.exp(s / 0.1)
        correct += votes.index(max(votes)) == int(y[i])
    assert leave_one_out_knn_top1(f, y, k=5, temperature=0.1) == pytest.approx(100.0 * correct / 40, abs=1e-4)
