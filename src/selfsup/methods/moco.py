"""MoCo v1 and v2: Momentum Contrast (He, Fan, Wu, Xie, Girshick 2019, arXiv 1911.05722; Chen,
Fan, Girshick, He 2020, "Improved Baselines with Momentum Contrastive Learning", arXiv 2003.04297).

A query q = g(f(x_q)) is contrasted with the key k of another view of the same image, encoded by
a momentum copy of f and g (theta_k <- m theta_k + (1 - m) theta_q after every optimizer step,
Eq. 2), and with a FIFO queue of the keys of earlier batches: InfoNCE over [q.k | q.queue] / T
(Eq. 1). Shuffle-BN: the key encoder sees each key's batch statistics computed over a random
subset of the batch, so the positive cannot be found through BatchNorm's intra-batch leak.

Paper defaults. v1: linear 128-d head, queue 65536, m 0.999, T 0.07, SGD lr 0.03 x B/256,
weight decay 1e-4, 200 epochs with step decay. v2: an MLP head (hidden 2048, the ResNet-50 width,
no BatchNorm), T 0.2, blur in the augmentation, cosine lr.

Our deviations. At CIFAR scale the queue defaults to 4096 keys (the MoCo authors' CIFAR-10 demo
finds gains saturate there; 4096 keys are 8% of CIFAR-10, near the 5% of ImageNet that 65536
are). The trainer's lr schedule is cosine for v1 too. On one process, shuffle-BN splits the key
batch into ``shuffle_bn_groups`` chunks (8, as that demo's split BatchNorm simulates 8 GPUs), and
the query encoder sees as many groups in the original order, as each GPU sees its own shard in
the paper (and both encoders in that demo): queries normalized over the whole batch would share
their statistics with every key's group. On several processes the key inputs are shuffled across
ranks as the authors' code does, and each rank's shard is again split into ``shuffle_bn_groups``
chunks (set 1 to match the paper exactly); BatchNorm must then be per process, since a global
(synchronized) BatchNorm would bring the leak back.

``negatives`` swaps the queue for in-batch keys or a memory bank (He et al. 2019, Sec. 3.2, Fig. 3).
``symmetric=True`` (not in the papers; an option of the authors' CIFAR-10 demo) adds the loss with
the views swapped and enqueues both views' keys: twice the signal per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import dist
from selfsup.errors import SelfSupError
from selfsup.methods.base import Context, Method
from selfsup.methods.contrastive import contrast, store_keys
from selfsup.models import MLP, ema_update, momentum_at, momentum_copy
from selfsup.negatives import build_source


def grouped_forward(encoder: nn.Module, x: Tensor, groups: int = 1) -> Tensor:
    """``encoder`` applied to ``groups`` consecutive chunks of ``x`` separately (BatchNorm per chunk)."""
    if groups <= 1:
        return encoder(x)
    if encoder.training and x.shape[0] < 2 * groups:
        raise SelfSupError(f"shuffle-BN: a batch of {x.shape[0]} per process cannot be split into {groups} BatchNorm "
                           f"groups of at least 2 images; lower method.shuffle_bn_groups to {max(1, x.shape[0] // 2)}")
    return torch.cat([encoder(chunk) for chunk in x.tensor_split(groups)])


@torch.no_grad()
def shuffle_bn_forward(encoder: nn.Module, x: Tensor, groups: int = 1) -> Tensor:
    """``encoder(x)`` with BatchNorm statistics from a random split of the global batch.

    The batches of all processes are gathered and permuted (rank 0's permutation, broadcast);
    each process encodes its shard of the permuted batch in ``groups`` separate forward passes,
    and the outputs are gathered and put back in the original order. Each row is still a function
    of its own input only, up to the statistics of the group it landed in.
    """
    world, rank, n = dist.world_size(), dist.rank(), x.shape[0]
    if world == 1 and groups <= 1:
        return encoder(x)  # one group over the whole batch: shuffling changes nothing
    everything = dist.gather_no_grad(x)
    perm = dist.broadcast(torch.randperm(everything.shape[0]).to(x.device), src=0)
    encoded = grouped_forward(encoder, everything[perm[rank * n : (rank + 1) * n]], groups)
    restored = dist.gather_no_grad(encoded)[torch.argsort(perm)]
    return restored[rank * n : (rank + 1) * n]


class _MoCo(Method):
    """The shared body of v1 and v2; subclasses pick the head and the defaults."""

    global_bn = False  # shuffle-BN needs per-process statistics: a global BN would leak the positive

    def __init__(self, backbone: nn.Module, projector: nn.Module, projection_dim: int, temperature: float,
                 momentum: float, momentum_schedule: str, negatives: str, queue_size: int, bank_momentum: float,
                 shuffle_bn_groups: int, symmetric: bool, dataset_size: int):
        super().__init__(backbone)
        if shuffle_bn_groups < 1:
            raise SelfSupError(f"shuffle_bn_groups must be >= 1 (1 = no split on one process), got {shuffle_bn_groups}")
        momentum_at(0, 1, momentum, schedule=momentum_schedule)  # a bad schedule name fails here, not mid-run
        self.projector = projector
        self.key_encoder = momentum_copy(nn.Sequential(backbone, projector))
        self.source = build_source(negatives, projection_dim, queue_size=queue_size, dataset_size=dataset_size,
                                   bank_momentum=bank_momentum)
        self.temperature, self.momentum, self.momentum_schedule = temperature, momentum, momentum_schedule
        self.shuffle_bn_groups, self.symmetric = shuffle_bn_groups, symmetric

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        pairs = [(views[0], views[1])] + ([(views[1], views[0])] if self.symmetric else [])
        losses, keys, similarity = [], [], []
        for x_q, x_k in pairs:
            q = grouped_forward(nn.Sequential(self.backbone, self.projector), x_q, self.shuffle_bn_groups)
            k = shuffle_bn_forward(self.key_encoder, x_k, self.shuffle_bn_groups)
            losses.append(contrast(self.source, q, k, self.temperature, index))
            keys.append(k)
            similarity.append(F.cosine_similarity(q.detach(), k, dim=1).mean())
        for k in keys:  # after every loss of the step: a key never meets its own query among the negatives
            store_keys(self.source, k, index)
        return {"loss": sum(losses), "positive_similarity": sum(similarity) / len(similarity)}

    def on_step_end(self, ctx: Context) -> None:
        m = momentum_at(ctx.step, ctx.total_steps, self.momentum, schedule=self.momentum_schedule)
        ema_update(self.key_encoder, nn.Sequential(self.backbone, self.projector), m)
        ctx.log["momentum"] = m


class MoCoV1(_MoCo):
    def __init__(self, backbone: nn.Module, projection_dim: int = 128, temperature: float = 0.07,
                 momentum: float = 0.999, momentum_schedule: str = "constant", negatives: str = "queue",
                 queue_size: int = 4096, bank_momentum: float = 0.5, shuffle_bn_groups: int = 8,
                 symmetric: bool = False, dataset_size: int = 0):
        super().__init__(backbone, nn.Linear(backbone.out_dim, projection_dim), projection_dim, temperature, momentum,
                         momentum_schedule, negatives, queue_size, bank_momentum, shuffle_bn_groups, symmetric,
                         dataset_size)


class MoCoV2(_MoCo):
    def __init__(self, backbone: nn.Module, projection_dim: int = 128, hidden_dim: int = 2048,
                 temperature: float = 0.2, momentum: float = 0.999, momentum_schedule: str = "constant",
                 negatives: str = "queue", queue_size: int = 4096, bank_momentum: float = 0.5,
                 shuffle_bn_groups: int = 8, symmetric: bool = False, dataset_size: int = 0):
        head = MLP(backbone.out_dim, hidden_dim, projection_dim, layers=2, bn=False)
        super().__init__(backbone, head, projection_dim, temperature, momentum, momentum_schedule, negatives,
                         queue_size, bank_momentum, shuffle_bn_groups, symmetric, dataset_size)
