"""What the clustering methods (DeepCluster, SeLa, PCL) share around their E-steps.

An E-step looks at the whole training set: ``ctx.eval_batches()`` yields it unaugmented and in
order, and on every process the whole of it (it is not sharded). So each rank computes the same
features and runs the clustering alone (the cluster functions get ``distributed=False``: combining
the ranks' identical copies would count every image once per rank). The results are then
broadcast from rank 0, because the ranks' BatchNorm running statistics drift apart during an
epoch of local batches, and with them the last bits of the features; k-means could then break a
tie differently on one rank.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from selfsup import dist
from selfsup.cluster import cluster_health, nmi
from selfsup.errors import SelfSupError
from selfsup.methods.base import Context


@torch.no_grad()
def dataset_outputs(ctx: Context, forward: Callable[[Tensor], Tensor], modules: list[nn.Module],
                    expected_size: int, who: str) -> tuple[Tensor, Tensor]:
    """``forward`` of every training image in eval mode: ((N, D) float32 rows by data set index, labels (N,)).

    ``modules`` are put in eval mode for the pass (BatchNorm running statistics, as the papers'
    feature extraction does) and restored afterwards. ``expected_size`` is the N the method's
    buffers were built for.
    """
    if ctx.eval_batches is None:
        raise SelfSupError(f"{who} clusters the whole training set every E-step, and this data set cannot be "
                           "iterated without augmentation; use an in-memory data set (array data, or an image "
                           "folder with data.in_memory=true)")
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    outs, labels, indices = [], [], []
    try:
        with torch.autocast(ctx.device.type, enabled=False):
            for x, y, index in ctx.eval_batches():
                outs.append(forward(x).float())
                labels.append(y)
                indices.append(index)
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    index = torch.cat(indices).to(ctx.device)
    n = index.shape[0]
    if n != expected_size:
        raise SelfSupError(f"{who} was built for a data set of {expected_size} images (dataset_size) but the "
                           f"training set has {n}; build the method with dataset_size={n}")
    out = torch.empty((n, outs[0].shape[1]), dtype=torch.float32, device=ctx.device)
    out[index] = torch.cat(outs).to(ctx.device)
    lab = torch.empty(n, dtype=torch.long, device=ctx.device)
    lab[index] = torch.cat(labels).to(ctx.device).long()
    return out, lab


def broadcast_from_main(*tensors: Tensor) -> None:
    """Make every rank hold rank 0's values of these tensors (in place)."""
    for t in tensors:
        dist.broadcast(t, 0)


def assignment_log(assign: Tensor, previous: Tensor | None, labels: Tensor, k: int) -> dict[str, float]:
    """What shows a clustering's health: cluster-size entropy (1 = balanced), empty clusters,
    largest cluster's share, NMI with the previous assignment (DeepCluster's stability curve,
    Caron et al. 2018, Fig. 2) and NMI with the true labels when every image has one (logging only).

    NMI is DeepCluster's, I(A;B)/sqrt(H(A)H(B)).
    """
    health = cluster_health(assign, k)
    out = {"cluster_entropy": health["entropy"], "empty_clusters": float(health["empty_clusters"]),
           "largest_cluster_fraction": health["largest_fraction"]}
    if previous is not None and bool((previous >= 0).all()):
        out["nmi_prev"] = nmi(assign, previous)
    if labels.numel() and bool((labels >= 0).all()):
        out["nmi_labels"] = nmi(assign, labels)
    return out


def mean_logs(logs: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of several clusterings' logs (SeLa's heads)."""
    keys = [k for k in logs[0] if all(k in log for log in logs)]
    return {k: sum(log[k] for log in logs) / len(logs) for k in keys}
