"""Linear probe on frozen, cached features: multinomial logistic regression in torch.

Features are standardized with the training statistics; the L2 weight decay is chosen on a
held-out 10% of the training set from a small grid, then the probe is refit on all training
features and scored on the test split. Full-batch L-BFGS makes the result deterministic and
independent of a learning rate. This is the fast protocol; the papers' protocol (augmented
training of a linear layer) lives beside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import SelfSupError

WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


def _fit(x: Tensor, y: Tensor, num_classes: int, weight_decay: float, max_iter: int) -> tuple[Tensor, Tensor]:
    w = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _topk(logits: Tensor, y: Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    return 100.0 * (logits.topk(k, 1).indices == y[:, None]).any(1).float().mean().item()


def linear_probe(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                 weight_decays: tuple[float, ...] = WEIGHT_DECAYS, max_iter: int = 300,
                 seed: int = 0) -> dict:
    """Top-1/top-5 (%) of the best-on-validation logistic regression, plus the sweep."""
    if (train_labels < 0).any() or (test_labels < 0).any():
        raise SelfSupError("the linear probe needs labels on the train and test splits")
    c = int(max(train_labels.max(), test_labels.max())) + 1
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    xtr = ((train_features - mean) / std).double()
    xte = ((test_features - mean) / std).double()
    ytr, yte = train_labels.long(), test_labels.long()
    perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed))
    nval = max(1, len(xtr) // 10)
    val, fit = perm[:nval], perm[nval:]
    sweep = {}
    for wd in weight_decays:
        w, b = _fit(xtr[fit], ytr[fit], c, wd, max_iter)
        sweep[wd] = _topk(xtr[val] @ w + b, ytr[val], 1)
    best = max(sweep, key=lambda k: (sweep[k], k))
    w, b = _fit(xtr, ytr, c, best, max_iter)
    logits = xte @ w + b
    return {"top1": _topk(logits, yte, 1), "top5": _topk(logits, yte, 5), "weight_decay": best,
            "val_top1": {str(k): v for k, v in sweep.items()}}
