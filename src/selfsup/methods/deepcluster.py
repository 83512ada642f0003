"""DeepCluster (Caron, Bojanowski, Joulin, Douze 2018, "Deep Clustering for Unsupervised Learning of
Visual Features", arXiv 1807.05520).

Alternate clustering and classification. At the start of every epoch (the E-step): features of
the whole unaugmented training set (backbone in eval mode) are PCA-reduced, whitened and
L2-normalised, then clustered by k-means; the cluster index of each image becomes its
pseudo-label for the epoch, and the classifier on top (the paper's "top layer") is re-initialised,
since cluster indices carry no meaning from one clustering to the next. The network is then trained
with the cross-entropy of the classifier against the pseudo-labels (Eq. 1, with Eq. 2's k-means):

    min_{theta, W} (1/N) sum_n  -log softmax(W f_theta(x_n))[y_n].

Paper defaults (AlexNet/VGG on ImageNet): Sobel filtering of the grayscale input, PCA to 256
dimensions, k = 10,000 (ten times the classes: over-segmentation helps), k-means re-run every
epoch (faiss, 20 iterations, empty clusters re-seeded as in Sec. 3.3), classifier re-initialised
N(0, 0.01) each epoch with a fresh optimizer state, SGD lr 0.05, momentum 0.9, weight decay 1e-5,
batch 256, one view per image (random resized crop + flip), images sampled uniformly over the
clusters.

Where we deviate (CIFAR scale, shared trainer):

- k = 100 by default: ten times the classes of CIFAR-10, as k = 10,000 is for ImageNet, and
  500 images per cluster on CIFAR-10's 50,000.
- ``pca_dim`` = 128 by default (ResNet-18 gives 512 features where AlexNet gave 4096; 256 of 4096
  is the paper's ratio); it must not exceed the backbone's feature dimension. At width 0.25 the
  features are 128-d, so PCA then only rotates and whitens. Measured on the E-step's own terms
  (k-means, k = 100, 20 iterations, on 10,000 CIFAR-10 training images, NMI with the labels) with a
  SimCLR encoder of 10 epochs: whitening to 8, 16, 32, 64, 96 or 128 dimensions gives 0.208,
  0.211, 0.206, 0.207, 0.208, 0.204, against 0.232 for L2-normalised features without PCA. The
  dimension hardly matters; whitening itself costs 0.02-0.03, which we keep as the paper's step.
- Sobel is an option (``sobel=True`` is the paper's setting), off by default: at 32 px the edge
  maps of a 3x3 Sobel keep little of the image, and the colour shortcut Sobel removes is also
  weakened by the colour jitter and random grayscale of our view recipe. With ``sobel=True`` the
  backbone's first convolution takes the two Sobel channels and the fixed filter becomes part of
  ``backbone``, so evaluation sees the same network.
- Balancing (``balance``): ``"sample"`` (default) is the paper's and the authors' sampler: each
  epoch's N images are drawn uniformly over the clusters (N/k per cluster, small clusters
  repeated), through ``epoch_order``. ``"reweight"`` keeps the loader's order and weights each
  image's loss by N / (k |c|): the same expectation, but uncapped, so an image of a 5-image
  cluster weighs 100 when k = 100 and N = 50,000 and can carry a large share of its batch's
  gradient. ``"none"``: neither.
- Every view the recipe gives is classified into its image's pseudo-label (the mean loss over
  views); with the ``single`` recipe this is the paper's one view per image.
- k-means runs in torch (``backend`` picks faiss if installed), seeded with ``seed + epoch``.
- The classifier sits directly on the pooled ResNet features (a ResNet has no fc6/fc7 MLP).
- The classifier's optimizer state is dropped at each re-initialisation through ``ctx.optimizer``
  (the paper builds a new optimizer for it); the shared trainer's lr schedule (cosine) replaces
  the paper's constant lr.

Logged at each E-step: NMI with the previous epoch's assignment (``nmi_prev``, the paper's
stability curve), NMI with the true labels when there are any (``nmi_labels``, logging only),
cluster-size entropy, empty clusters and the largest cluster's share.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.cluster import kmeans, pca_whiten
from selfsup.errors import SelfSupError
from selfsup.methods.base import Context, Method
from selfsup.methods.estep import assignment_log, broadcast_from_main, dataset_outputs


class Sobel(nn.Module):
    """DeepCluster's fixed input transform: grayscale (channel mean), then the horizontal and
    vertical 3x3 Sobel filters; (B, 3, H, W) -> (B, 2, H, W)."""

    def __init__(self):
        super().__init__()
        gx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        self.register_buffer("filters", torch.stack([gx, gx.T])[:, None])

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x.mean(dim=1, keepdim=True), self.filters.to(x.dtype), padding=1)


class SobelEncoder(nn.Module):
    """``encoder`` fed with the Sobel channels; its first convolution is rebuilt for 2 inputs."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        conv = getattr(encoder, "conv1", None)
        if not isinstance(conv, nn.Conv2d):
            raise SelfSupError("DeepCluster sobel=True needs a backbone whose first layer is `conv1` (the "
                               "ResNets of selfsup.models); use sobel=false with this backbone")
        encoder.conv1 = nn.Conv2d(2, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                  bias=conv.bias is not None)
        nn.init.kaiming_normal_(encoder.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.sobel = Sobel()
        self.encoder = encoder
        self.out_dim = encoder.out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(self.sobel(x))


class DeepCluster(Method):
    def __init__(self, backbone: nn.Module, dataset_size: int = 0, num_clusters: int = 100, pca_dim: int = 128,
                 kmeans_iterations: int = 20, sobel: bool = False, balance: str = "sample", seed: int = 0,
                 backend: str = "torch"):
        if sobel:
            backbone = SobelEncoder(backbone)
        super().__init__(backbone)
        if num_clusters < 2:
            raise SelfSupError(f"DeepCluster num_clusters must be at least 2, got {num_clusters}")
        if balance not in ("sample", "reweight", "none"):
            raise SelfSupError(f"DeepCluster balance must be 'sample' (the paper: uniform over clusters), 'reweight' "
                               f"(loss weight N/(k|c|)) or 'none', got {balance!r}")
        if not 1 <= pca_dim <= backbone.out_dim:
            raise SelfSupError(f"DeepCluster pca_dim={pca_dim} must be between 1 and the backbone's feature "
                               f"dimension {backbone.out_dim}; set method.pca_dim <= {backbone.out_dim}")
        if dataset_size and num_clusters > dataset_size:
            raise SelfSupError(f"DeepCluster num_clusters={num_clusters} exceeds the {dataset_size} training "
                               "images; lower method.num_clusters")
        self.num_clusters, self.pca_dim, self.kmeans_iterations = num_clusters, pca_dim, kmeans_iterations
        self.balance, self.seed, self.backend = balance, seed, backend
        self.classifier = nn.Linear(backbone.out_dim, num_clusters)
        self._init_classifier(0)
        # -1: no clustering yet. One pseudo-label per data set index, and the loss weight of each cluster.
        self.register_buffer("assignments", torch.full((dataset_size,), -1, dtype=torch.long))
        self.register_buffer("cluster_weights", torch.ones(num_clusters))

    def _init_classifier(self, epoch: int) -> None:
        # Seeded by the epoch so every rank (and a resumed run) draws the same weights.
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        w = torch.randn(self.classifier.weight.shape, generator=g) * 0.01
        with torch.no_grad():
            self.classifier.weight.copy_(w)
            self.classifier.bias.zero_()

    @torch.no_grad()
    def cluster_features(self, ctx: Context) -> tuple[Tensor, Tensor]:
        """The E-step's input: PCA-whitened, L2-normalised backbone features of the whole training
        set (N, pca_dim), and the data set's labels (-1 where unlabelled)."""
        feats, labels = dataset_outputs(ctx, self.backbone, [self.backbone], self.assignments.shape[0],
                                        "DeepCluster")
        x = pca_whiten(feats, self.pca_dim, distributed=False)
        return F.normalize(x, dim=1), labels

    @torch.no_grad()
    def on_epoch_start(self, ctx: Context) -> None:
        x, labels = self.cluster_features(ctx)
        _, assign = kmeans(x, self.num_clusters, self.kmeans_iterations, seed=self.seed + ctx.epoch,
                           backend=self.backend, distributed=False)
        previous = self.assignments.clone()
        self.assignments.copy_(assign)
        sizes = torch.bincount(assign, minlength=self.num_clusters).float()
        # N / (k |c|): a mean of 1 over the data set; clusters are never empty after kmeans.
        self.cluster_weights.copy_(assign.shape[0] / (self.num_clusters * sizes.clamp_min(1)))
        broadcast_from_main(self.assignments, self.cluster_weights)
        self._init_classifier(ctx.epoch)
        if ctx.optimizer is not None:
            # The paper builds a new optimizer for the top layer each epoch: no momentum from old clusters.
            for p in self.classifier.parameters():
                ctx.optimizer.state.pop(p, None)
        ctx.log.update(assignment_log(self.assignments, previous, labels, self.num_clusters))

    def epoch_order(self, order: Tensor) -> Tensor:
        """With ``balance="sample"``: the epoch's N images drawn uniformly over the non-empty
        clusters, as the authors' sampler does: each cluster gets N/k' slots (k' non-empty
        clusters; the first N mod k' one more), filled with its members in the shuffled order
        ``order``, cycling through them again when the cluster is smaller; the N picks are then
        shuffled by ``order``."""
        if self.balance != "sample" or bool((self.assignments < 0).any()):
            return order
        n = order.numel()
        labels = self.assignments.to(order.device)[order]  # the loader's order lives on the CPU
        by_cluster = torch.argsort(labels, stable=True)
        members = order[by_cluster]  # each cluster's images, in the shuffled order
        counts = torch.bincount(labels, minlength=self.num_clusters)
        starts = torch.cumsum(counts, 0) - counts
        nonempty = torch.nonzero(counts).squeeze(1)
        slot = torch.arange(n)
        cluster = nonempty[slot % len(nonempty)]
        picks = members[starts[cluster] + (slot // len(nonempty)) % counts[cluster]]
        return picks[order]

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        targets = self.assignments[index]
        if bool((targets < 0).any()):
            raise SelfSupError("DeepCluster has no pseudo-labels for these images yet: its E-step runs in "
                               "on_epoch_start (the trainer calls it before every epoch)")
        weights = self.cluster_weights[targets] if self.balance == "reweight" else None
        losses = []
        for v in views:
            ce = F.cross_entropy(self.classifier(self.backbone(v)), targets, reduction="none")
            losses.append((ce * weights).mean() if weights is not None else ce.mean())
        return {"loss": torch.stack(losses).mean()}
