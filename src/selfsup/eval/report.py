"""What the run report shows, computed from a trained method and its data: collapse indicators
over the kept checkpoints, a t-SNE map and nearest neighbours of test embeddings, images per
cluster for methods that keep cluster assignments. ``selfsup.viz.report`` draws it.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data.datasets import ArrayDataset
from selfsup.data.views import ViewRecipe
from selfsup.eval.collapse import effective_rank, embedding_std
from selfsup.eval.features import extract_features
from selfsup.eval.summary import standard_metrics
from selfsup.viz.report import ReportData


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file; a line cut short by an interrupted run is skipped."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def cluster_assignments(method: nn.Module, num_images: int) -> tuple[str, Tensor] | None:
    """A registered integer buffer of one entry per training image whose name mentions assignments
    or labels (DeepCluster's or SeLa's pseudo-labels), if the method keeps one with any set entry."""
    for name, buf in method.named_buffers():
        leaf = name.rsplit(".", 1)[-1].lower()
        if (buf.ndim == 1 and len(buf) == num_images and not buf.is_floating_point() and buf.dtype != torch.bool
                and ("assign" in leaf or "label" in leaf) and bool((buf >= 0).any())):
            return name, buf.detach().cpu().long()
    return None


def tsne_2d(features: Tensor, seed: int = 0) -> np.ndarray:
    """A 2-D t-SNE map (scikit-learn) of L2-normalized features."""
    from sklearn.manifold import TSNE

    x = F.normalize(features.float(), dim=1).numpy()
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def _collapse_entry(epoch: int, label: str, feats: Tensor) -> dict[str, Any]:
    finite = bool(torch.isfinite(feats).all())
    return {"epoch": epoch, "label": label, "embedding_std": embedding_std(feats, center=True) if finite else math.nan,
            "effective_rank": effective_rank(feats) if finite else math.nan, "dim": int(feats.shape[1])}


def collect_report(run_dir: str | Path, title: str, method: nn.Module, train_set: ArrayDataset,
                   test_set: ArrayDataset | None, mean, std, size: int, *, epoch: int,
                   checkpoints: list[tuple[int, Callable[[], dict]]] = (), random_init: nn.Module | None = None,
                   recipe: ViewRecipe | None = None, config: dict | None = None, max_points: int = 2000,
                   queries: int = 8, neighbours: int = 6, seed: int = 0, batch_size: int = 512,
                   device: torch.device | str = "cpu") -> ReportData:
    """Compute every section of the report.

    ``checkpoints``: ``(epoch, load)`` pairs, ``load()`` returning a checkpoint dict whose
    ``"method"`` state holds the backbone under ``backbone.``; the one at ``epoch`` is the
    ``method`` itself and is not loaded again. ``random_init`` (the same backbone, freshly
    initialised) adds an epoch-0 point to the collapse curve.
    """
    run_dir = Path(run_dir)
    data = ReportData(title=title, records=read_metrics(run_dir / "metrics.jsonl"), config=config or {},
                      metrics_table=standard_metrics(run_dir), cluster_source="")
    backbone = method.backbone
    probe = test_set if test_set is not None else train_set
    g = torch.Generator().manual_seed(seed)
    n = min(max_points, len(probe))
    pick = torch.randperm(len(probe), generator=g)[:n].sort().values
    probe = probe.subset(pick)
    args = (mean, std, size, batch_size, device)

    feats, labels = extract_features(backbone, probe, *args)
    data.collapse.append(_collapse_entry(epoch, f"epoch {epoch} (final)", feats))
    for ep, load in sorted(checkpoints, key=lambda c: c[0]):
        if ep == epoch:
            continue
        state = load()["method"]
        other = copy.deepcopy(backbone)
        other.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
        data.collapse.append(_collapse_entry(ep, f"epoch {ep}", extract_features(other, probe, *args)[0]))
    if random_init is not None:
        data.collapse.append(_collapse_entry(0, "random init", extract_features(random_init.to(device), probe,
                                                                                   *args)[0]))
    if not bool(torch.isfinite(feats).all()):
        data.notes.append("The final encoder gives NaN or inf features (a diverged run): no map, neighbours "
                          "or collapse indicators for it.")
        return data

    if len(feats) >= 5:
        data.embedding_2d = tsne_2d(feats, seed)
        data.embedding_labels = labels.numpy()
        data.class_names = list(probe.classes)

    bank, bank_labels = extract_features(backbone, train_set, *args)
    q = torch.linspace(0, len(probe) - 1, min(queries, len(probe))).round().long().unique()
    k = min(neighbours, len(bank))
    sim = F.normalize(feats[q], dim=1) @ F.normalize(bank, dim=1).T
    if test_set is None:  # queries come from the bank itself: skip the exact match
        sim[torch.arange(len(q)), pick[q]] = -math.inf
    nn_idx = sim.topk(k, dim=1).indices
    data.retrieval = (probe.images[q], probe.labels[q], train_set.images[nn_idx], bank_labels[nn_idx])

    if recipe is not None:
        shown = torch.linspace(0, len(train_set) - 1, min(6, len(train_set))).round().long()
        data.preview = (train_set.images[shown], recipe)

    found = cluster_assignments(method, len(train_set))
    if found is not None:
        name, assign = found
        data.cluster_source = name
        valid = assign >= 0
        sizes = torch.bincount(assign[valid])
        for cid in sizes.argsort(descending=True)[:8].tolist():
            members = (assign == cid).nonzero().flatten()
            chosen = members[torch.randperm(len(members), generator=g)[:8]]
            data.clusters.append((cid, int(sizes[cid]), train_set.images[chosen]))
    return data
