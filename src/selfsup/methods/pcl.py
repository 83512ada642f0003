"""PCL, Prototypical Contrastive Learning (Li, Zhou, Xiong, Hoi 2021, "Prototypical Contrastive
Learning of Unsupervised Representations", arXiv 2005.04966).

An EM view of contrastive learning on top of MoCo v2. The M-step trains the query encoder
(ResNet + 2-layer MLP head, L2-normalised output) with ProtoNCE (Eq. 11):

    L = InfoNCE(q, k, queue; T = 0.2)
        + (1/M) sum_m -log exp(q.c^m_s / phi^m_s) / (exp(q.c^m_s / phi^m_s) + sum_j exp(q.c^m_j / phi^m_j)),

k the key of the other view from the momentum encoder (parameters xi <- m xi + (1 - m) theta),
the queue MoCo's FIFO of past keys, c^m_s the prototype of the query's cluster in clustering m,
c^m_j r sampled other prototypes, and phi their concentrations (Eq. 12). The E-step, once per
epoch after ``warmup_epochs`` epochs of InfoNCE alone, embeds the whole training set with the
momentum encoder (eval mode, normalised head outputs), runs k-means at M granularities
(``num_clusters``) and estimates each cluster's concentration
phi = sum_z ||v'_z - c|| / (Z log(Z + alpha)) with ``selfsup.losses.pcl_concentration``, which
also clamps phi to its 10th-90th percentiles and rescales it to mean T, as the authors' code
does. Centroids are L2-normalised after phi is measured, as in that code.

Paper defaults (ImageNet, ResNet-50): MoCo v2 (MLP head 2048-2048-128, queue 16384, m 0.999,
T 0.2, SGD lr 0.03 at batch 256, weight decay 1e-4, cosine schedule, 200 epochs), num_clusters
= [25000, 50000, 100000], warm-up 20 epochs, r = 16000 negative prototypes, alpha 10, k-means
by faiss.

Where we deviate (CIFAR scale):

- num_clusters = [250, 500, 1000]: the paper's 25, 50 and 100 clusters per ImageNet class, for
  CIFAR-10's ten classes.
- ``num_negative_prototypes`` = None (every other prototype, a full softmax over each
  clustering) by default: with at most a thousand clusters a sample of r = 16000 does not exist.
  Given an r, each query draws its own r negatives among the other prototypes (the paper's
  equation; the authors' code draws one set per batch, excluding every positive of the batch,
  which needs many more clusters than a batch covers).
- Queue of 4096 keys (the size usual for MoCo on CIFAR-10; 16384 is a third of CIFAR-10).
- k-means: torch, Euclidean on the normalised features as the authors' faiss call, seeded per
  epoch and granularity, one run (the authors' faiss call keeps the best of 5 and caps points
  per centroid).
- No shuffle-BN: the key encoder's BatchNorm sees the batch it encodes. MoCo shuffles keys
  across GPUs so that BatchNorm statistics cannot leak which key is the positive; with one
  process a shuffle would change nothing, and across processes we do not shuffle.

Logged at each E-step, per granularity (suffix ``_k<K>``) and as their mean: NMI with the
previous epoch's assignment and with the true labels when there are any (logging only),
cluster-size entropy, empty clusters and the largest share.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.cluster import kmeans
from selfsup.errors import SelfSupError
from selfsup.losses import info_nce, pcl_concentration, proto_nce_loss
from selfsup.methods.base import Context, Method
from selfsup.methods.estep import assignment_log, broadcast_from_main, dataset_outputs, mean_logs
from selfsup.models import MLP, ema_update, momentum_copy
from selfsup.negatives import Queue


class PCL(Method):
    def __init__(self, backbone: nn.Module, dataset_size: int = 0, num_clusters: list[int] | None = None,
                 projection_dim: int = 128, hidden_dim: int = 2048, queue_size: int = 4096,
                 temperature: float = 0.2, momentum: float = 0.999, warmup_epochs: int = 20,
                 num_negative_prototypes: int | None = None, kmeans_iterations: int = 20,
                 concentration_alpha: float = 10.0, seed: int = 0):
        super().__init__(backbone)
        num_clusters = list(num_clusters) if num_clusters is not None else [250, 500, 1000]
        if not num_clusters or any(k < 2 for k in num_clusters):
            raise SelfSupError(f"PCL num_clusters must be a non-empty list of cluster counts >= 2, got {num_clusters}")
        if dataset_size and max(num_clusters) > dataset_size:
            raise SelfSupError(f"PCL num_clusters={num_clusters} has more clusters than the {dataset_size} training "
                               "images; lower method.num_clusters")
        r = num_negative_prototypes
        if r is not None and not 1 <= r < min(num_clusters):
            raise SelfSupError(f"PCL num_negative_prototypes={r} must be at least 1 and below the smallest of "
                               f"num_clusters ({min(num_clusters)}); or null for every other prototype")
        self.num_clusters, self.temperature, self.momentum = num_clusters, temperature, momentum
        self.warmup_epochs, self.num_negative_prototypes = warmup_epochs, num_negative_prototypes
        self.kmeans_iterations, self.concentration_alpha, self.seed = kmeans_iterations, concentration_alpha, seed
        # MoCo v2's head: Linear-ReLU-Linear, no BatchNorm.
        self.projector = MLP(backbone.out_dim, hidden_dim, projection_dim, layers=2, bn=False)
        self.momentum_backbone = momentum_copy(backbone)
        self.momentum_projector = momentum_copy(self.projector)
        self.queue = Queue(queue_size, projection_dim, seed=seed)
        # E-step results, sized at construction so a checkpoint loads into a freshly built method.
        for m, k in enumerate(num_clusters):
            self.register_buffer(f"centroids_{m}", torch.zeros(k, projection_dim))
            self.register_buffer(f"concentrations_{m}", torch.ones(k))
        self.register_buffer("assignments", torch.full((len(num_clusters), dataset_size), -1, dtype=torch.long))
        self.register_buffer("clustered", torch.zeros((), dtype=torch.bool))

    def centroids(self, m: int) -> Tensor:
        return getattr(self, f"centroids_{m}")

    def concentrations(self, m: int) -> Tensor:
        return getattr(self, f"concentrations_{m}")

    def _momentum_embed(self, x: Tensor) -> Tensor:
        return F.normalize(self.momentum_projector(self.momentum_backbone(x)), dim=1)

    def estep_features(self, ctx: Context) -> tuple[Tensor, Tensor]:
        """The momentum encoder's normalised embeddings of the whole training set, and its labels."""
        return dataset_outputs(ctx, self._momentum_embed, [self.momentum_backbone, self.momentum_projector],
                               self.assignments.shape[1], "PCL")

    startup_phases = (("warmup_epochs", "epochs"),)  # a budgeted run caps it at 10% of its steps

    @property
    def hook_probe_epoch(self) -> int:
        return self.warmup_epochs  # the first epoch whose hook clusters

    def hook_runs(self, epochs: int, total_steps: int, steps_per_epoch: int) -> int:
        return max(0, epochs - self.warmup_epochs)

    @torch.no_grad()
    def on_epoch_start(self, ctx: Context) -> None:
        if ctx.epoch < self.warmup_epochs:
            return
        feats, labels = self.estep_features(ctx)
        previous = self.assignments.clone()
        logs = {}
        for m, k in enumerate(self.num_clusters):
            centroids, assign = kmeans(feats, k, self.kmeans_iterations, seed=self.seed + 1000 * ctx.epoch + m,
                                       distributed=False)
            phi = pcl_concentration(feats, assign, centroids, self.concentration_alpha, temperature=self.temperature)
            self.centroids(m).copy_(F.normalize(centroids, dim=1))
            self.concentrations(m).copy_(phi)
            self.assignments[m] = assign
            logs[k] = assignment_log(assign, previous[m], labels, k)
        broadcast_from_main(self.assignments, *(t for m in range(len(self.num_clusters))
                                                for t in (self.centroids(m), self.concentrations(m))))
        self.clustered.fill_(True)
        for k, log in logs.items():
            ctx.log.update({f"{name}_k{k}": v for name, v in log.items()})
        ctx.log.update(mean_logs(list(logs.values())))

    def on_step_end(self, ctx: Context) -> None:
        ema_update(self.momentum_backbone, self.backbone, self.momentum)
        ema_update(self.momentum_projector, self.projector, self.momentum)

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        if len(views) < 2:
            raise SelfSupError(f"PCL needs two views (query and key), got {len(views)}: use views.recipe=simclr")
        q = F.normalize(self.projector(self.backbone(views[0])), dim=1)
        with torch.no_grad():
            k = self._momentum_embed(views[1])
        negatives = self.queue.negatives()
        nce = info_nce(q, k, negatives, self.temperature)
        out = {"info_nce": nce.detach()}
        loss = nce
        if bool(self.clustered):
            proto = proto_nce_loss(q, [self.centroids(m) for m in range(len(self.num_clusters))],
                                   [self.assignments[m, index] for m in range(len(self.num_clusters))],
                                   [self.concentrations(m) for m in range(len(self.num_clusters))],
                                   self.num_negative_prototypes, shared_negatives=False)
            loss = loss + proto
            out["proto_nce"] = proto.detach()
        self.queue.update(k)
        return {"loss": loss, **out}
