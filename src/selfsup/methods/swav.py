"""SwAV (Caron, Misra, Mairal, Goyal, Bojanowski, Joulin 2020, "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments", arXiv 2006.09882).

Online clustering with swapped prediction. Every view's projection z (L2-normalised) is scored
against K learnable prototypes C (also L2-normalised); the codes q of the two global views are
the equipartitioned soft assignments of Sinkhorn-Knopp over the batch (Sec. 3.1, epsilon 0.05,
3 iterations, ``selfsup.cluster.sinkhorn_knopp``), and every other view predicts them from its
own scores (Eq. 1-3, ``selfsup.losses.swav_loss``):

    L = sum_{s in global} sum_{v != s} -sum_k q_s,k log softmax(z_v^T C / tau)_k,  tau = 0.1.

Multi-crop (Sec. 3.2): 2 global views plus small local views (``views.recipe: multicrop``); only
global views give codes, all views predict. Codes receive no gradient. The prototypes are
renormalised before every step and kept fixed for the first ``freeze_prototypes_iters``
optimizer steps (the paper's code: 313, the first epoch at batch 4096). For small batches a queue
of the projections of the last batches (one queue per global view, from ``queue_start_epoch``
on; the paper: 3840 entries from epoch 15 at batch 256) adds rows to the Sinkhorn problem, so
that the equipartition is enforced over more samples than one batch; the queued projections are
re-scored with the current prototypes, and only the batch's rows of the codes are used.

Paper defaults (ImageNet, ResNet-50): projector 2048-2048-128 with BN, 3000 prototypes, 2x224 +
6x96 crops, LARS lr 4.8 at batch 4096 (0.6 at 256) with cosine decay to 0.001 of it, weight decay
1e-6, 800 epochs.

Where we deviate (CIFAR scale):

- 100 prototypes: ten times CIFAR-10's classes (ImageNet's 3000 is three times its classes; the
  paper finds the number matters little over a wide range), and no more than a batch of 256 can
  spread over.
- Multi-crop 2x32 + 4x16 (the ``multicrop`` recipe's default).
- ``freeze_prototypes_iters`` = 195, the first epoch of CIFAR-10 at batch 256, as 313 is at
  ImageNet's batch 4096.
- Freezing zeroes the prototypes' gradient instead of dropping it (the paper sets it to None).
  Under DDP every parameter must receive a gradient each step; with a zero gradient the only
  change an optimizer makes is the weight decay's shrinkage along the prototype itself, which
  the renormalisation before the next step undoes, so the prototypes stay where they were.
- The queue is global: every rank holds the same rows (gathered in rank order) and adds its own
  1/world_size share of them to the distributed Sinkhorn sums, which equals the paper's per-rank
  queues of length queue_length / world_size while keeping the checkpoint independent of the
  number of processes. It is used once it has been filled, as in the paper's code.

Logged every step: the batch's code assignments' cluster-size entropy, empty prototypes and the
largest share, and whether the queue was used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import dist
from selfsup.cluster import sinkhorn_knopp
from selfsup.errors import SelfSupError
from selfsup.losses import swav_loss
from selfsup.methods.base import Context, Method
from selfsup.models import MLP
from selfsup.negatives import Queue

NUM_GLOBAL_VIEWS = 2  # the views that give codes (the recipe lists them first)


class SwAV(Method):
    def __init__(self, backbone: nn.Module, projection_dim: int = 128, hidden_dim: int = 2048,
                 num_prototypes: int = 100, temperature: float = 0.1, epsilon: float = 0.05,
                 sinkhorn_iterations: int = 3, freeze_prototypes_iters: int = 195, queue_length: int = 3840,
                 queue_start_epoch: int = 15):
        super().__init__(backbone)
        if num_prototypes < 2:
            raise SelfSupError(f"SwAV num_prototypes must be at least 2, got {num_prototypes}")
        if queue_length < 0 or queue_start_epoch < 0 or freeze_prototypes_iters < 0:
            raise SelfSupError("SwAV queue_length, queue_start_epoch and freeze_prototypes_iters must be >= 0")
        self.projector = MLP(backbone.out_dim, hidden_dim, projection_dim, layers=2)
        self.prototypes = nn.Linear(projection_dim, num_prototypes, bias=False)
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        self.num_prototypes = num_prototypes
        self.temperature, self.epsilon, self.sinkhorn_iterations = temperature, epsilon, sinkhorn_iterations
        self.freeze_prototypes_iters, self.queue_start_epoch = freeze_prototypes_iters, queue_start_epoch
        self.queues = nn.ModuleList(Queue(queue_length, projection_dim, seed=i) for i in range(NUM_GLOBAL_VIEWS)) \
            if queue_length > 0 else nn.ModuleList()
        # Where training stands, kept in checkpoints: the freeze and the queue depend on it.
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))

    # A budgeted run caps both at 10% of its planned steps (selfsup.train.budget.startup_phases).
    startup_phases = (("queue_start_epoch", "epochs"), ("freeze_prototypes_iters", "steps"))

    def on_epoch_start(self, ctx: Context) -> None:
        self.epoch.fill_(ctx.epoch)
        self.steps_done.fill_(ctx.step)

    def on_step_end(self, ctx: Context) -> None:
        self.steps_done.fill_(ctx.step)

    @property
    def prototypes_frozen(self) -> bool:
        return int(self.steps_done) < self.freeze_prototypes_iters

    @property
    def queue_active(self) -> bool:
        """Queued rows join the Sinkhorn problem: past queue_start_epoch and once the queue is full."""
        return len(self.queues) > 0 and int(self.epoch) >= self.queue_start_epoch and self.queues[0].full

    def _project(self, views: list[Tensor]) -> Tensor:
        # One backbone pass per resolution (global, local), as the paper's code does; the projector
        # then sees all views together.
        feats, start = [], 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            feats.append(self.backbone(torch.cat(views[start:end])))
            start = end
        return F.normalize(self.projector(torch.cat(feats)), dim=1)

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        if len(views) < NUM_GLOBAL_VIEWS:
            raise SelfSupError(f"SwAV needs at least {NUM_GLOBAL_VIEWS} views (2 global + local ones); "
                               f"got {len(views)}: use views.recipe=multicrop")
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        weight = self.prototypes.weight
        if self.prototypes_frozen:
            weight = weight.detach() + 0.0 * weight
        b = views[0].shape[0]
        z = self._project(views)
        scores = list((z @ weight.T).split(b))
        use_queue = self.queue_active
        codes = []
        with torch.no_grad():
            for i in range(NUM_GLOBAL_VIEWS):
                rows = scores[i].detach()
                if use_queue:
                    # This rank's share of the global queue: together the ranks add each row once.
                    queued = self.queues[i].negatives()[dist.rank()::dist.world_size()]
                    rows = torch.cat([queued.to(rows.dtype) @ weight.detach().T.to(rows.dtype), rows])
                codes.append(sinkhorn_knopp(rows, self.epsilon, self.sinkhorn_iterations)[-b:])
            if len(self.queues) and int(self.epoch) >= self.queue_start_epoch:
                for i in range(NUM_GLOBAL_VIEWS):
                    self.queues[i].update(z[i * b:(i + 1) * b].detach())
        loss = swav_loss(scores, codes, self.temperature, assignment_views=tuple(range(NUM_GLOBAL_VIEWS)))
        return {"loss": loss, **self._code_health(codes), "queue_used": torch.tensor(float(use_queue))}

    @torch.no_grad()
    def _code_health(self, codes: list[Tensor]) -> dict[str, Tensor]:
        # In torch rather than selfsup.cluster.cluster_health: no host sync every step on a GPU.
        assign = torch.cat([q.argmax(dim=1) for q in codes])
        sizes = torch.bincount(assign, minlength=self.num_prototypes).float()
        p = sizes / sizes.sum()
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum() / math.log(self.num_prototypes)
        return {"cluster_entropy": entropy, "empty_clusters": (sizes == 0).sum().float(),
                "largest_cluster_fraction": p.max()}
