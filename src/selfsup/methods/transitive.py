"""Transitive Invariance (Wang, He & Gupta 2017, "Transitive Invariance for Self-supervised Visual
Representation Learning", arXiv 1708.02901), adapted to image collections.

The paper builds a graph over millions of image patches with two kinds of edges. Inter-instance
edges join different objects of one kind: features of a pre-trained network are split into 5000
coarse k-means clusters, and inside a cluster groups of 4 samples that are mutual nearest
neighbours are connected. Intra-instance edges join two views of one object (a patch tracked
through a video). Transitivity across the two kinds gives the training pairs: A -inter- B -intra-
B' makes (A, B') positive, a different instance under another viewpoint. A siamese-triplet network
(shared weights) is trained with the ranking loss max(0, D(a, p) - D(a, n) + m), cosine distance
D = 1 - cos, margin m = 0.5, negatives drawn at random.

Here, for a collection of images:

* intra-instance edges are the augmented views of one image (the recipe's first two views) and,
  when the data set is a folder of consecutive video frames (``frames_per_video`` > 0: samples
  i and j are frames of one video when ``i // frames_per_video == j // frames_per_video``, in
  the data set's index order, i.e. sorted file names for an image folder), frames at most
  ``frame_window`` apart in one video. Videos must all have that many frames: data sets with
  videos of different lengths (which would need a per-image video id) are not supported;
* inter-instance edges are rebuilt every ``rebuild_every`` epochs in ``on_epoch_start``: backbone
  features of the whole unaugmented training set (``ctx.eval_batches``), spherical k-means into
  ``num_clusters`` clusters, and disjoint groups of ``group_size`` mutual ``neighbors``-nearest
  neighbours inside each cluster (``selfsup.cluster.mutual_knn_groups``);
* the positives of image i (the ``positives`` buffer, one row per image) are the samples reached
  by at most one inter-instance and at most one intra-instance edge, in either order: its group,
  its neighbouring frames, the frames of its group members and the group members of its frames
  (``transitive_positives``). Every positive is seen under a fresh augmentation, which is the
  instance-view edge of the chain. Longer chains are not followed: they would join groups and
  videos into ever larger components.

Loss: for each image i of the batch with embeddings z1, z2 of its two views and a negative n (the
second view of another random image of the batch), triplet(z1_i, z2_i, n) averaged over the batch
plus triplet(z1_i, bank[j], n) averaged over the images that have a graph positive j, drawn
uniformly from their row of ``positives``.

Deviations: the graph comes from the network being trained (at first its random initialization)
and is rebuilt periodically, instead of once from a separately pre-trained network. A graph
positive is rarely in the same batch (the trainer draws batches uniformly), so its embedding is
read from a memory bank, as in InstDisc: one unit embedding per image, refreshed from the whole
data set at every rebuild and overwritten with each batch's first-view embeddings. The graph
triplets thus send no gradient into their positive (anchor and negative get it). The triplet loss
acts on a projection head (an MLP to ``embedding_dim``) over the backbone; augmented views stand in
for tracked patches. Requires an in-memory data set (``ctx.eval_batches``); under several
processes every rank builds the same graph from rank 0's features, which has not been tested.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import dist
from selfsup.cluster import kmeans, mutual_knn_groups
from selfsup.errors import SelfSupError
from selfsup.losses import triplet_loss
from selfsup.methods.base import Context, Method
from selfsup.models import MLP


def positives_width(group_size: int, frames_per_video: int, frame_window: int) -> int:
    """Most positives one image can have: its group, its frames, and the two-edge chains."""
    frames = 2 * frame_window if frames_per_video > 1 else 0
    return (group_size - 1) + frames + 2 * (group_size - 1) * frames


def transitive_positives(groups: Tensor, n: int, frames_per_video: int = 0, frame_window: int = 1,
                         width: int | None = None) -> Tensor:
    """Each sample's positives through at most one inter- and one intra-instance edge.

    With E(i) the other members of i's group (rows of ``groups``) and I(i) the frames of i's video
    at most ``frame_window`` apart (none when ``frames_per_video`` <= 1), the positives of i are
    E(i) | I(i) | I(E(i)) | E(I(i)), without i itself.

    Returns an ``(n, width)`` long tensor on the groups' device: row i lists i's positives in
    ascending order, padded with -1. ``width`` defaults to the longest row; it must be at least that.
    """
    inter: list[set[int]] = [set() for _ in range(n)]
    for group in groups.tolist():
        for a in group:
            inter[a].update(b for b in group if b != a)

    def intra(i: int) -> set[int]:
        if frames_per_video <= 1:
            return set()
        video = i // frames_per_video
        return {j for j in range(max(0, i - frame_window), min(n, i + frame_window + 1))
                if j != i and j // frames_per_video == video}

    rows = []
    for i in range(n):
        frames = intra(i)
        pos = inter[i] | frames
        for j in inter[i]:
            pos |= intra(j)
        for j in frames:
            pos |= inter[j]
        pos.discard(i)
        rows.append(sorted(pos))
    longest = max((len(r) for r in rows), default=0)
    width = longest if width is None else width
    if width < longest:
        raise SelfSupError(f"transitive_positives: a sample has {longest} positives, more than width={width}")
    table = torch.full((n, width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        table[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return table.to(groups.device)


class Transitive(Method):
    def __init__(self, backbone: nn.Module, dataset_size: int = 0, embedding_dim: int = 128, hidden_dim: int = 2048,
                 margin: float = 0.5, num_clusters: int = 100, neighbors: int = 10, group_size: int = 4,
                 rebuild_every: int = 10, kmeans_iterations: int = 20, frames_per_video: int = 0,
                 frame_window: int = 1, graph_seed: int = 0):
        super().__init__(backbone)
        if dataset_size < 1:
            raise SelfSupError("transitive keeps one graph row per training image and needs dataset_size "
                               "(the trainer passes it; in Python give dataset_size=len(train_set))")
        if not 1 <= num_clusters <= dataset_size:
            raise SelfSupError(f"transitive num_clusters={num_clusters} must lie in [1, {dataset_size}] "
                               "(the number of training images)")
        if group_size < 2 or neighbors < group_size - 1:
            raise SelfSupError(f"transitive needs group_size >= 2 and neighbors >= group_size - 1 (every member has "
                               f"the others among its neighbours), got group_size={group_size}, neighbors={neighbors}")
        if rebuild_every < 1 or frame_window < 1:
            raise SelfSupError(f"transitive rebuild_every and frame_window must be >= 1, got {rebuild_every} "
                               f"and {frame_window}")
        self.margin, self.num_clusters, self.neighbors, self.group_size = margin, num_clusters, neighbors, group_size
        self.rebuild_every, self.kmeans_iterations, self.graph_seed = rebuild_every, kmeans_iterations, graph_seed
        self.frames_per_video, self.frame_window = frames_per_video, frame_window
        self.head = MLP(backbone.out_dim, hidden_dim, embedding_dim, layers=2)
        width = positives_width(group_size, frames_per_video, frame_window)
        self.register_buffer("positives", torch.full((dataset_size, width), -1, dtype=torch.long))
        self.register_buffer("bank", torch.zeros(dataset_size, embedding_dim))

    def embed(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    @torch.no_grad()
    def build_graph(self, features: Tensor, seed: int = 0) -> Tensor:
        """Groups of mutual neighbours inside coarse clusters of ``features`` (N, D); sets ``positives``."""
        features = dist.broadcast(features.contiguous(), 0)  # one graph on every rank
        shard = features.tensor_split(dist.world_size())[dist.rank()]
        centroids, _ = kmeans(shard, self.num_clusters, self.kmeans_iterations, seed=seed, spherical=True)
        clusters = (F.normalize(features, dim=1) @ centroids.T).argmax(1)
        groups = mutual_knn_groups(features, clusters, self.neighbors, self.group_size)
        self.positives.copy_(transitive_positives(groups, features.shape[0], self.frames_per_video,
                                                  self.frame_window, self.positives.shape[1]))
        return groups

    def hook_runs(self, epochs: int, total_steps: int, steps_per_epoch: int) -> int:
        return len(range(0, epochs, self.rebuild_every))

    @torch.no_grad()
    def on_epoch_start(self, ctx: Context) -> None:
        if ctx.epoch % self.rebuild_every:
            return
        if ctx.eval_batches is None:
            raise SelfSupError("transitive builds its graph from the whole training set and needs an in-memory "
                               "data set: set data.in_memory=true (streamed image folders are not supported)")
        was_training = self.training
        self.eval()
        n = self.bank.shape[0]
        features = None
        for x, _, index in ctx.eval_batches():
            h = self.backbone(x).float()
            if features is None:
                features = h.new_zeros(n, h.shape[1])
            features[index] = h
            self.bank[index] = F.normalize(self.head(h).float(), dim=1)
        self.train(was_training)
        self.build_graph(features, seed=self.graph_seed + ctx.epoch)

    def sample_positives(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """One graph positive per sample, uniform over its row of ``positives``, and whether it has
        any (samples without one get their own index and False)."""
        row = self.positives[index]
        count = (row >= 0).sum(1)
        u = dist.shard(torch.rand(row.shape[0] * dist.world_size(), device=row.device))  # the global batch's draw
        pick = (u * count).long().clamp_max((count - 1).clamp_min(0))
        j = row.gather(1, pick[:, None]).squeeze(1)
        has = count > 0
        return torch.where(has, j, index), has

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        if len(views) < 2:
            raise SelfSupError("transitive needs two augmented views per image (its instance edges); "
                               "use a two-view recipe such as views.recipe=simclr")
        z1, z2 = self.embed(views[0]), self.embed(views[1])
        everyone = dist.gather_with_grad(z2)  # negatives come from the global batch
        b, n = z1.shape[0], everyone.shape[0]
        if n < 2:
            raise SelfSupError("transitive draws its negatives from the batch and needs train.batch_size >= 2")
        # another image of the batch for every anchor: a shift of 1..n-1 never lands on itself
        own = torch.arange(b, device=z1.device) + dist.rank() * b
        negative = everyone[(own + dist.shard(torch.randint(1, n, (n,), device=z1.device))) % n]
        loss_views = triplet_loss(z1, z2, negative, self.margin)

        j, has = self.sample_positives(index)
        # the mean over the global batch's graph triplets (DDP averages the ranks' losses)
        found = has.sum().float()
        scale = found * dist.world_size() / dist.all_reduce_sum(found.clone()).clamp_min(1)
        loss_graph = triplet_loss(z1, self.bank[j], negative, self.margin, weight=has.float()) * scale

        with torch.no_grad():
            self.bank[dist.gather_no_grad(index)] = dist.gather_no_grad(F.normalize(z1.detach().float(), dim=1))
        return {"loss": loss_views + loss_graph, "loss_views": loss_views.detach(),
                "loss_graph": loss_graph.detach(), "graph_coverage": has.float().mean()}
