"""Semi-supervised evaluation: fine-tune the whole network on 1% or 10% of the labels.

The protocol of SwAV's ``eval_semisup`` (Caron et al. 2020, arXiv 2006.09882, Sec. 4.1 and
App. A), itself SimCLR's (Chen et al. 2020, arXiv 2002.05709, Sec. B.5): a class-balanced subset
of the training labels; backbone + a new linear head, all trained (BatchNorm in train mode) with
random resized crop and flip; SGD, momentum 0.9, no weight decay, batch 256, 20 epochs, the lr
multiplied by 0.2 after 60% and 80% of the epochs (12 and 16 of 20); separate lrs for the trunk
and the head: 0.02 / 5 with 1% of the labels and 0.01 / 0.2 with 10% (the command line gives
other fractions the 10% lrs). Top-1/top-5 on the test split.

Subsets: ``balanced_subset`` takes the same number of images from every class (a fraction f of
N images over C classes gives round(f N / C) per class, at least one, at most the class size),
drawn with a NumPy generator seeded by ``seed``. SimCLR's ImageNet subsets are fixed lists of
files; here the list is a function of (labels, fraction, seed) and is also saved as an index
file in the run folder (``subsets/<data>-<pct>-seed<seed>.npy``) and reused from there, so a
result can always be traced to the exact images.

Where we deviate: the lrs are those of batch 256, scaled linearly to the batch actually used (the
whole subset when it is smaller than ``batch_size``: SwAV's head lr 5 on a batch of 100
diverges); the reported accuracy is the one after the last epoch, not the best over epochs on the
test split; on small data sets the 1% subset has only a few images per class, so 20 epochs are
only a few dozen steps (``epochs`` can be raised).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.datasets import ArrayDataset
from selfsup.errors import SelfSupError
from selfsup.eval.features import augmented_batches, eval_batches, topk_accuracy

# Trunk and head lrs at batch 256 (SwAV's README for ImageNet 1% and 10%).
SWAV_LRS = {0.01: (0.02, 5.0), 0.1: (0.01, 0.2)}


def balanced_subset(labels, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a class-balanced subset with about ``fraction`` of the samples."""
    y = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels).reshape(-1)
    if not 0 < fraction <= 1:
        raise SelfSupError(f"label fraction must be in (0, 1], got {fraction}")
    if len(y) == 0 or (y < 0).any():
        raise SelfSupError("a labelled subset needs every training image to have a label")
    classes = np.unique(y)
    per_class = max(1, round(fraction * len(y) / len(classes)))
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in classes]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def fraction_name(fraction: float) -> str:
    """0.01 -> '1pct', 0.1 -> '10pct', 0.005 -> '0.5pct'."""
    return f"{100 * fraction:g}pct"


def subset_file(run_dir: str | Path, dataset_name: str, fraction: float, seed: int) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset_name).strip("-") or "data"
    return Path(run_dir) / "subsets" / f"{slug}-{fraction_name(fraction)}-seed{seed}.npy"


def load_or_make_subset(path: str | Path, labels, fraction: float, seed: int = 0) -> np.ndarray:
    """The subset saved at ``path``; made with :func:`balanced_subset` and saved there if absent."""
    path = Path(path)
    n = len(labels)
    if path.exists():
        idx = np.load(path, allow_pickle=False)
        if idx.ndim != 1 or len(idx) == 0 or idx.min() < 0 or idx.max() >= n:
            raise SelfSupError(f"{path} is not an index file for this data set ({n} images); delete it to redraw")
        return idx.astype(np.int64)
    idx = balanced_subset(labels, fraction, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, idx)
    return idx


class _Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        return self.head(self.backbone(x))


def finetune(backbone: nn.Module, train_set: ArrayDataset, test_set: ArrayDataset, train_index, mean, std,
             size: int, *, trunk_lr: float, head_lr: float, epochs: int = 20, batch_size: int = 256,
             momentum: float = 0.9, weight_decay: float = 0.0, decay_at: tuple[float, ...] = (0.6, 0.8),
             gamma: float = 0.2, seed: int = 0, device: torch.device | str = "cpu",
             eval_batch_size: int = 512) -> dict:
    """Fine-tune a copy of ``backbone`` plus a linear head on ``train_set[train_index]``; test top-1/top-5 (%)."""
    if epochs < 1 or batch_size < 2:
        raise SelfSupError(f"fine-tuning needs epochs >= 1 and batch_size >= 2, got {epochs} and {batch_size}")
    if not train_set.has_labels or not test_set.has_labels:
        raise SelfSupError("fine-tuning needs labels on the train and test splits")
    index = torch.as_tensor(np.asarray(train_index), dtype=torch.long)
    num_classes = int(max(train_set.labels.max(), test_set.labels.max())) + 1
    g = torch.Generator().manual_seed(seed)
    trunk = copy.deepcopy(backbone).to(device)
    with torch.no_grad():
        trunk.eval()
        dim = int(trunk(torch.zeros(2, 3, size, size, device=device)).shape[1])
    head = nn.Linear(dim, num_classes)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=g)
        head.bias.zero_()
    model = _Classifier(trunk, head.to(device))
    scale = min(batch_size, len(index)) / 256  # the batch actually seen: a subset can be smaller than one batch
    opt = torch.optim.SGD([{"params": trunk.parameters(), "lr": trunk_lr * scale},
                           {"params": model.head.parameters(), "lr": head_lr * scale}],
                          lr=trunk_lr * scale, momentum=momentum, weight_decay=weight_decay)
    base = [group["lr"] for group in opt.param_groups]
    milestones = sorted(round(f * epochs) for f in decay_at)
    step = 0
    model.train()
    for epoch in range(epochs):
        factor = gamma ** sum(epoch >= m for m in milestones)
        for group, lr in zip(opt.param_groups, base):
            group["lr"] = lr * factor
        for x, y in augmented_batches(train_set, index, mean, std, size, batch_size, g, device):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for x, y, _ in eval_batches(test_set, mean, std, size, eval_batch_size, device):
            logits.append(model(x).float().cpu())
            labels.append(y.cpu())
    logits_t, labels_t = torch.cat(logits), torch.cat(labels)
    return {"top1": topk_accuracy(logits_t, labels_t, 1), "top5": topk_accuracy(logits_t, labels_t, 5),
            "labelled_images": len(index), "epochs": epochs, "steps": step, "batch_size": batch_size,
            "trunk_lr": trunk_lr, "head_lr": head_lr}
