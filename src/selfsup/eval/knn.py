"""Weighted k-nearest-neighbour classification on frozen features.

As Wu et al. 2018 (InstDisc, arXiv 1805.01978, Sec. 3.4) define it: cosine similarity s_i between
the query and each training feature, the top k neighbours vote for their class with weight
exp(s_i / T); defaults k=200, T=0.07. Queries are processed in chunks so that a 50k x 10k problem
never materializes one dense similarity matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import SelfSupError


def knn_scores(train_features: Tensor, train_labels: Tensor, test_features: Tensor, num_classes: int,
               k: int = 200, temperature: float = 0.07, chunk_size: int | None = None) -> Tensor:
    """Class scores (M, num_classes): the sum of exp(s/T) over the top-k neighbours of each class."""
    n = train_features.shape[0]
    if not 1 <= k <= n:
        raise SelfSupError(f"kNN: k={k} but the training set has {n} samples; use 1 <= k <= {n}")
    if temperature <= 0:
        raise SelfSupError(f"kNN temperature must be positive, got {temperature}")
    if train_features.shape[1] != test_features.shape[1]:
        raise SelfSupError(f"kNN: feature sizes differ ({train_features.shape[1]} vs {test_features.shape[1]})")
    if (train_labels < 0).any():
        raise SelfSupError("kNN needs labels for every training sample; this data set has unlabelled images")
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.long().to(bank.device)
    # About 64M similarities per chunk (256 MB in float32).
    chunk = chunk_size or max(1, (1 << 26) // max(1, n))
    out = []
    for s in range(0, test_features.shape[0], chunk):
        q = F.normalize(test_features[s : s + chunk].float().to(bank.device), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        w = (sim / temperature).exp()
        scores = torch.zeros(q.shape[0], num_classes, device=bank.device, dtype=w.dtype)
        out.append(scores.scatter_add_(1, labels[idx], w))
    return torch.cat(out)


def knn_predict(train_features: Tensor, train_labels: Tensor, test_features: Tensor, num_classes: int,
                k: int = 200, temperature: float = 0.07) -> Tensor:
    """Predicted labels (M,) by weighted kNN; features need not be normalized."""
    return knn_scores(train_features, train_labels, test_features, num_classes, k, temperature).argmax(1)


def knn_eval(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
             k: int = 200, temperature: float = 0.07, num_classes: int | None = None) -> dict[str, float]:
    """Top-1 and top-5 accuracy (in %) of weighted kNN."""
    c = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, train_features.shape[0])
    scores = knn_scores(train_features, train_labels, test_features, c, k, temperature)
    top = scores.topk(min(5, c), dim=1).indices.cpu()
    y = test_labels.long().cpu()[:, None]
    return {"top1": 100.0 * (top[:, :1] == y).any(1).float().mean().item(),
            "top5": 100.0 * (top == y).any(1).float().mean().item(), "k": k, "temperature": temperature}
