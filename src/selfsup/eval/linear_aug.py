"""Linear evaluation as the papers run it: a linear classifier trained on a frozen backbone with
train-time augmentation.

The protocol of SwAV's ``eval_linear`` (Caron et al. 2020, arXiv 2006.09882, App. A), which is
also MoCo's and SimCLR's up to the optimizer details: the backbone stays in eval mode (its
BatchNorm statistics frozen, no gradient); every step, a batch of training images gets a random
resized crop (scale 0.08-1) and a horizontal flip, goes through the backbone, and a single
``nn.Linear`` (weights N(0, 0.01), bias 0, no BatchNorm in front of it) is trained with cross
entropy. SGD, momentum 0.9, weight decay 1e-6, lr 0.3 at batch 256 (scaled linearly with the
batch size) following a cosine schedule to 0, 100 epochs. Test images are the whole image
resized to the view size. Top-1/top-5 on the test split after the last epoch.

Where we deviate: the cosine schedule is applied per step rather than per epoch; the accuracy is
the one after the last epoch, not the best over epochs on the test split (which selects on the
test set); the crop is taken from the data set's image size (32 px for CIFAR) rather than from a
full-resolution photograph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.datasets import ArrayDataset
from selfsup.errors import SelfSupError
from selfsup.eval.features import augmented_batches, extract_features, topk_accuracy


def _check_labels(train_set: ArrayDataset, test_set: ArrayDataset, what: str) -> int:
    if not train_set.has_labels or not test_set.has_labels:
        raise SelfSupError(f"{what} needs labels on the train and test splits; pass --data with a labelled data set")
    return int(max(train_set.labels.max(), test_set.labels.max())) + 1


@torch.no_grad()
def _feature_dim(backbone: nn.Module, size: int, device) -> int:
    x = torch.zeros(2, 3, size, size, device=device)
    return int(backbone(x).shape[1])


def linear_eval_augmented(backbone: nn.Module, train_set: ArrayDataset, test_set: ArrayDataset, mean, std,
                          size: int, *, epochs: int = 100, batch_size: int = 256, lr: float = 0.3,
                          weight_decay: float = 1e-6, momentum: float = 0.9, seed: int = 0,
                          device: torch.device | str = "cpu", eval_batch_size: int = 512) -> dict:
    """Top-1/top-5 (%) of a linear layer trained on augmented images through the frozen ``backbone``."""
    if epochs < 1 or batch_size < 2:
        raise SelfSupError(f"linear evaluation needs epochs >= 1 and batch_size >= 2, got {epochs} and {batch_size}")
    num_classes = _check_labels(train_set, test_set, "linear evaluation")
    was_training = backbone.training
    backbone.eval()
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(_feature_dim(backbone, size, device), num_classes)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=g)
        head.bias.zero_()
    head = head.to(device)
    peak = lr * batch_size / 256
    opt = torch.optim.SGD(head.parameters(), lr=peak, momentum=momentum, weight_decay=weight_decay)
    per_epoch = sum(1 for s in range(0, len(train_set), batch_size) if len(train_set) - s >= 2)
    total = epochs * per_epoch
    index = torch.arange(len(train_set))
    step = 0
    for _ in range(epochs):
        loss_sum, seen = 0.0, 0
        for x, y in augmented_batches(train_set, index, mean, std, size, batch_size, g, device):
            for group in opt.param_groups:
                group["lr"] = 0.5 * peak * (1 + math.cos(math.pi * step / total))
            with torch.no_grad():
                f = backbone(x)
            loss = F.cross_entropy(head(f.float()), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum, seen = loss_sum + float(loss.detach()) * len(y), seen + len(y)
    f_te, y_te = extract_features(backbone, test_set, mean, std, size, eval_batch_size, device)
    backbone.train(was_training)
    with torch.no_grad():
        logits = head(f_te.to(device)).cpu()
    return {"top1": topk_accuracy(logits, y_te, 1), "top5": topk_accuracy(logits, y_te, 5), "epochs": epochs,
            "steps": step, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
            "last_epoch_train_loss": loss_sum / max(1, seen)}
