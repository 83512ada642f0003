"""Jigsaw, relative position, transitive invariance and multi-task: targets consistent with the
inputs the heads see, the transitive graph, the triplet loss against a naive loop, and a short
training run per method on the embedded digits that must beat the random-init encoder."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from selfsup.cluster import mutual_knn_groups
from selfsup.config import load_config
from selfsup.data.pretext import RELATIVE_POSITION_OFFSETS, maximal_hamming_permutations, rotate_batch
from selfsup.errors import SelfSupError
from selfsup.losses import triplet_loss
from selfsup.methods import Context
from selfsup.methods.jigsaw import JigsawTask, standardize_patches
from selfsup.methods.multitask import MultiTask, RotationTask
from selfsup.methods.relative_position import RelativePositionTask
from selfsup.methods.transitive import Transitive, positives_width, transitive_positives
from selfsup.models import build_backbone
from selfsup.train.pretrain import pretrain


def _coordinate_image(b: int, size: int) -> torch.Tensor:
    """Channel 0 holds each pixel's row, channel 1 its column, channel 2 the sample index."""
    rows = torch.arange(size).view(1, size, 1).expand(b, size, size)
    cols = torch.arange(size).view(1, 1, size).expand(b, size, size)
    sample = torch.arange(b).view(b, 1, 1).expand(b, size, size)
    return torch.stack((rows, cols, sample), dim=1).float()


class Corner(nn.Module):
    """A stand-in encoder whose feature is the (row, column, sample) of a patch's top-left pixel."""

    out_dim = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 0, 0]


def _classifier_input(head: nn.Module, encode, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Run a task head and capture what its classifier received."""
    seen = {}
    handle = head.classifier.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    try:
        out = head(encode, x)
    finally:
        handle.remove()
    return seen["x"], out


# ---------------------------------------------------------------------------------- triplet loss


def naive_triplet(a, p, n, margin, distance, weight=None):
    total, norm = 0.0, 0.0
    for i in range(a.shape[0]):
        ai, pi, ni = a[i].double(), p[i].double(), n[i].double()
        if distance == "cosine":
            d_p = 1 - float(ai @ pi) / (ai.norm() * pi.norm()).item()
            d_n = 1 - float(ai @ ni) / (ai.norm() * ni.norm()).item()
        else:
            d_p = math.sqrt(sum((x - y) ** 2 for x, y in zip(ai.tolist(), pi.tolist())))
            d_n = math.sqrt(sum((x - y) ** 2 for x, y in zip(ai.tolist(), ni.tolist())))
        w = 1.0 if weight is None else float(weight[i])
        total += w * max(0.0, d_p - d_n + margin)
        norm += w
    return total / norm


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("n,d,margin", [(5, 3, 0.5), (16, 8, 0.2), (9, 32, 1.0)])
def test_triplet_loss_matches_naive_loop(distance, n, d, margin):
    g = torch.Generator().manual_seed(n + d)
    a, p, neg = (torch.randn(n, d, generator=g) for _ in range(3))
    assert triplet_loss(a, p, neg, margin, distance).item() == pytest.approx(
        naive_triplet(a, p, neg, margin, distance), abs=1e-5)
    w = (torch.rand(n, generator=g) > 0.4).float()
    w[0] = 1.0
    assert triplet_loss(a, p, neg, margin, distance, weight=w).item() == pytest.approx(
        naive_triplet(a, p, neg, margin, distance, w), abs=1e-5)


def test_triplet_loss_hinge_and_empty_weights():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    # positive equals the anchor, negative opposite: D(a, p) = 0, D(a, n) = 2 for cosine
    assert triplet_loss(a, a.detach().clone(), -a.detach(), margin=0.5).item() == 0.0
    # swapped roles: 2 - 0 + 0.5 for every triplet
    assert triplet_loss(a, -a.detach(), a.detach().clone(), margin=0.5).item() == pytest.approx(2.5)
    loss = triplet_loss(a, -a.detach(), a.detach().clone(), weight=torch.zeros(2))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(a.grad, torch.zeros_like(a))


def test_triplet_loss_rejects_bad_input():
    x = torch.randn(4, 3)
    with pytest.raises(SelfSupError, match="one shape"):
        triplet_loss(x, x, torch.randn(5, 3))
    with pytest.raises(SelfSupError, match="distance"):
        triplet_loss(x, x, x, distance="manhattan")
    with pytest.raises(SelfSupError, match="weight"):
        triplet_loss(x, x, x, weight=torch.ones(3))


# ----------------------------------------------------------------------------------------- jigsaw


def test_jigsaw_label_indexes_the_permutation_applied():
    task = JigsawTask(Corner.out_dim, num_permutations=30, normalize_tiles=False, tile_dim=4, hidden_dim=8)
    x = _coordinate_image(48, 32)  # 10-px cells, 9-px tiles with a 1-px jitter range
    tiles, labels = task.puzzle(x)
    assert tiles.shape == (48, 9, 3, 9, 9) and labels.unique().numel() > 10
    top, left = tiles[:, :, 0, 0, 0].long(), tiles[:, :, 1, 0, 0].long()
    cell = (top // 10) * 3 + left // 10
    assert torch.equal(cell, task.permutations[labels])
    assert torch.equal(tiles[:, :, 2, 0, 0].long(), torch.arange(48)[:, None].expand(48, 9))
    # jitter moves tiles inside their cells (offsets 0 or 1)
    assert set((top % 10).unique().tolist()) == {0, 1}


def test_jigsaw_classifier_sees_tiles_in_shuffled_order():
    task = JigsawTask(Corner.out_dim, num_permutations=20, normalize_tiles=False, tile_dim=3, hidden_dim=8)
    task.tile_fc = nn.Identity()  # the classifier then receives the tile corners themselves
    x = _coordinate_image(16, 32)
    torch.manual_seed(3)
    _, labels = task.puzzle(x)
    torch.manual_seed(3)
    seen, out = _classifier_input(task, Corner(), x)
    corners = seen.reshape(16, 9, 3)
    cell = (corners[..., 0].long() // 10) * 3 + corners[..., 1].long() // 10
    assert torch.equal(cell, task.permutations[labels])
    assert torch.equal(corners[..., 2].long(), torch.arange(16)[:, None].expand(16, 9))
    assert set(out) == {"loss", "accuracy"} and torch.isfinite(out["loss"])


def test_jigsaw_permutations_buffer_tile_normalization_and_upsampling():
    task = JigsawTask(8, num_permutations=12, permutation_seed=4, tile_dim=4, hidden_dim=8, min_tile_size=12)
    assert torch.equal(task.permutations, maximal_hamming_permutations(12, 9, seed=4))
    assert "permutations" in task.state_dict() and task.classifier.net[-1].out_features == 12
    tiles, _ = task.puzzle(torch.rand(4, 3, 16, 16))
    assert torch.allclose(tiles.mean(dim=(-2, -1)), torch.zeros(4, 9, 3), atol=1e-5)
    assert torch.allclose(tiles.std(dim=(-2, -1), unbiased=False), torch.ones(4, 9, 3), atol=1e-3)
    assert torch.equal(standardize_patches(torch.ones(1, 1, 1, 3, 3)), torch.zeros(1, 1, 1, 3, 3))
    sizes = []
    encoder = build_backbone(width=0.125)
    encoder.register_forward_pre_hook(lambda _m, args: sizes.append(tuple(args[0].shape)))
    task.tile_fc[0] = nn.Linear(encoder.out_dim, 4, bias=False)
    task(encoder, torch.rand(4, 3, 16, 16))
    assert sizes == [(36, 3, 12, 12)]  # 4-px tiles of a 16-px image upsampled to 12 px


# ------------------------------------------------------------------------------ relative position


@pytest.mark.parametrize("jitter", [0, 1])
def test_relative_position_label_matches_the_neighbour_the_classifier_sees(jitter):
    task = RelativePositionTask(Corner.out_dim, patch_size=8, gap=3, jitter=jitter, patch_dim=3, hidden_dim=8)
    task.patch_fc = nn.Identity()
    x = _coordinate_image(64, 32)
    torch.manual_seed(1)
    _, _, labels = task.pairs(x)
    torch.manual_seed(1)
    seen, _ = _classifier_input(task, Corner(), x)
    center, neighbor = seen[:, :3], seen[:, 3:]
    assert torch.equal(center[:, 2], torch.arange(64).float()) and torch.equal(neighbor[:, 2], center[:, 2])
    offsets = torch.tensor(RELATIVE_POSITION_OFFSETS)[labels]
    step = (neighbor[:, :2] - center[:, :2]).long()
    # the neighbour lies one patch plus one gap away in the labelled direction, up to both jitters
    assert ((step - offsets * 11).abs() <= 2 * jitter).all()
    assert labels.unique().numel() == 8


# ---------------------------------------------------------------------------------- multi-task


def test_rotation_task_labels_match_rotations():
    task = RotationTask(3)
    x = torch.rand(5, 3, 8, 8)
    seen = []
    task(lambda t: seen.append(t) or t.mean(dim=(2, 3)), x)
    rotated, labels = rotate_batch(x)
    assert torch.equal(seen[0], rotated)
    assert torch.equal(seen[0][labels == 1], torch.rot90(x, 1, dims=(-2, -1)))


def test_forward_stages_keeps_resnet_names_and_features():
    net = build_backbone(width=0.125).eval()
    x = torch.rand(2, 3, 16, 16)
    stages = net.forward_stages(x)
    assert [s.shape[1] for s in stages] == net.stage_dims and [s.shape[-1] for s in stages] == [16, 8, 4, 2]
    assert torch.equal(stages[-1], net.forward_features(x))
    assert all(k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
               for k in net.state_dict())


def test_multitask_lasso_mixes_stages_and_penalizes_alpha():
    torch.manual_seed(0)
    m = MultiTask(build_backbone(width=0.125), tasks={"rotation": 1.0, "relative_position": 0.5},
                  task_options={"relative_position": {"patch_size": 4, "gap": 1, "jitter": 1, "patch_dim": 8,
                                                      "hidden_dim": 16}}, lasso=True, lasso_penalty=0.1)
    assert m.alpha.shape == (2, 4) and torch.equal(m.alpha[:, -1], torch.ones(2))
    out = m.training_step([torch.rand(8, 3, 16, 16)], torch.arange(8))
    expected = out["rotation_loss"] + 0.5 * out["relative_position_loss"] + 0.1 * 2.0
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    out["loss"].backward()
    assert m.alpha.grad is not None and (m.alpha.grad[:, :3] != 0).any()  # zero weights still learn


def test_multitask_rejects_unknown_tasks_and_options():
    net = build_backbone(width=0.125)
    with pytest.raises(SelfSupError, match="choose from"):
        MultiTask(net, tasks={"colorization": 1.0})
    with pytest.raises(SelfSupError, match="not among the tasks"):
        MultiTask(net, tasks=["rotation"], task_options={"jigsaw": {}})
    with pytest.raises(SelfSupError, match="valid: "):
        MultiTask(net, tasks=["jigsaw"], task_options={"jigsaw": {"tiles": 4}})
    assert set(MultiTask(net, tasks=["rotation", "jigsaw"]).weights.values()) == {1.0}


# ------------------------------------------------------------------------------------ transitive


def _naive_cluster_knn(f: torch.Tensor, clusters: torch.Tensor, k: int) -> list[set[int]]:
    f = f / f.norm(dim=1, keepdim=True)
    out = []
    for i in range(f.shape[0]):
        others = [j for j in range(f.shape[0]) if j != i and clusters[j] == clusters[i]]
        others.sort(key=lambda j: -float(f[i] @ f[j]))
        out.append(set(others[:k]))
    return out


def test_mutual_knn_groups_are_mutual_neighbours_within_a_cluster():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(120, 6, generator=g)
    clusters = torch.randint(0, 4, (120,), generator=g)
    groups = mutual_knn_groups(f, clusters, k=8, group_size=4)
    knn = _naive_cluster_knn(f, clusters, 8)
    assert groups.shape[1] == 4 and groups.shape[0] >= 5
    assert groups.unique().numel() == groups.numel()  # disjoint
    for group in groups.tolist():
        assert len({int(clusters[a]) for a in group}) == 1
        for a in group:
            for b in group:
                assert a == b or (b in knn[a] and a in knn[b])


def test_mutual_knn_groups_find_hand_built_clumps():
    centres = torch.eye(4) * 10
    clumps = centres.repeat_interleave(4, 0) + 0.01 * torch.randn(16, 4)
    f = torch.cat([clumps, torch.randn(3, 4)])
    order = torch.randperm(19)
    groups = mutual_knn_groups(f[order], torch.zeros(19, dtype=torch.long), k=3, group_size=4)
    found = sorted(sorted(int(order[i]) for i in g) for g in groups.tolist())
    assert found == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    with pytest.raises(SelfSupError, match="k >= group_size - 1"):
        mutual_knn_groups(f, torch.zeros(19, dtype=torch.long), k=2, group_size=4)


def test_transitive_positives_hand_built():
    # two videos of four frames (0-3, 4-7), one inter-instance edge between frames 1 and 6
    groups = torch.tensor([[1, 6]])
    table = transitive_positives(groups, 8, frames_per_video=4, frame_window=1)
    rows = [sorted(v for v in r if v >= 0) for r in table.tolist()]
    assert rows == [[1, 6], [0, 2, 5, 6, 7], [1, 3, 6], [2], [5], [1, 4, 6], [0, 1, 2, 5, 7], [1, 6]]
    # the relation is symmetric, and without videos only the group remains
    assert all(i in rows[j] for i in range(8) for j in rows[i])
    images = transitive_positives(groups, 8)
    assert images.shape == (8, 1) and images[:, 0].tolist() == [-1, 6, -1, -1, -1, -1, 1, -1]
    wide = transitive_positives(torch.tensor([[0, 4]]), 8, frames_per_video=4, frame_window=2)
    assert sorted(v for v in wide[0].tolist() if v >= 0) == [1, 2, 4, 5, 6]
    assert positives_width(4, 4, 1) >= transitive_positives(torch.tensor([[1, 5, 9, 13]]), 16, 4, 1).shape[1]


def test_transitive_graph_is_a_buffer_rebuilt_on_schedule_and_sampled_from():
    torch.manual_seed(0)
    n = 96
    x = torch.randn(n, 3, 8, 8)
    method = Transitive(build_backbone(width=0.125), dataset_size=n, embedding_dim=8, hidden_dim=16,
                        num_clusters=3, neighbors=5, rebuild_every=2)

    def ctx(epoch):
        return Context(epoch=epoch, step=0, total_steps=1, steps_per_epoch=1, epochs=4, device=torch.device("cpu"),
                       eval_batches=lambda: iter([(x[:50], -torch.ones(50), torch.arange(50)),
                                                  (x[50:], -torch.ones(46), torch.arange(50, n))]),
                       dataset_size=n)

    method.on_epoch_start(ctx(0))
    assert method.training and {"positives", "bank"} <= set(method.state_dict())
    table = method.positives.clone()
    members = (table >= 0).sum(1)
    assert set(members.tolist()) == {0, 3} and members.sum() > 0  # groups of 4: 3 positives each
    for i, row in enumerate(table.tolist()):
        for j in (v for v in row if v >= 0):
            assert i in table[j].tolist()
    assert torch.allclose(method.bank.norm(dim=1), torch.ones(n), atol=1e-5)
    method.positives.fill_(-1)
    method.on_epoch_start(ctx(1))  # not a rebuild epoch
    assert (method.positives == -1).all()
    method.positives.copy_(table)
    restored = Transitive(build_backbone(width=0.125), dataset_size=n, embedding_dim=8, hidden_dim=16, num_clusters=3)
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.positives, table) and torch.equal(restored.bank, method.bank)
    index = torch.arange(n)
    j, has = method.sample_positives(index)
    assert torch.equal(has, members > 0) and torch.equal(j[~has], index[~has])
    assert all(int(j[i]) in table[i].tolist() for i in range(n) if has[i])
    out = method.training_step([x[:8], x[:8].flip(-1)], torch.arange(8))
    assert set(out) == {"loss", "loss_views", "loss_graph", "graph_coverage"} and torch.isfinite(out["loss"])
    with pytest.raises(SelfSupError, match="two augmented views"):
        method.training_step([x[:8]], torch.arange(8))


def test_transitive_rejects_bad_settings_and_streamed_data():
    with pytest.raises(SelfSupError, match="dataset_size"):
        Transitive(build_backbone(width=0.125))
    with pytest.raises(SelfSupError, match="neighbors >= group_size - 1"):
        Transitive(build_backbone(width=0.125), dataset_size=10, num_clusters=2, neighbors=2)
    method = Transitive(build_backbone(width=0.125), dataset_size=10, num_clusters=2)
    with pytest.raises(SelfSupError, match="in-memory"):
        method.on_epoch_start(Context(0, 0, 1, 1, 1, torch.device("cpu")))


# ------------------------------------------------------------------- training on the embedded digits

SMALL = ["data.image_size=16", "views.size=16", "model.width=0.125", "train.batch_size=64", "train.epochs=3",
         "train.warmup_epochs=0", "eval.knn_k=20", "train.log_every=1000"]
RUNS = {
    "jigsaw": ["method.tile_dim=64", "method.hidden_dim=256"],
    "relative_position": ["method.patch_size=4", "method.gap=1", "method.jitter=1", "method.patch_dim=64",
                          "method.hidden_dim=256"],
    "transitive": ["method.hidden_dim=128", "method.embedding_dim=64", "method.num_clusters=10",
                   "method.rebuild_every=1"],
    "multitask": ["train.epochs=5", "method.task_options.jigsaw.tile_dim=64",
                  "method.task_options.jigsaw.hidden_dim=256",
                  "method.task_options.relative_position={patch_size: 4, gap: 1, jitter: 1, patch_dim: 64, "
                  "hidden_dim: 256}"],
}
# kNN top-1 points required over the same backbone at random init, below the smallest margin measured
# over seeds and oneDNN kernel choices (benchmarks/learning_spread.py, BENCHMARKS.md).
MARGINS = {"jigsaw": 7.0, "relative_position": 8.0, "transitive": 6.0, "multitask": 7.0}


@pytest.mark.parametrize("name", list(RUNS))
def test_method_beats_random_init_on_digits(name, tmp_path, learning):
    cfg = load_config(name, SMALL + RUNS[name] + learning.overrides + [f"run.dir={tmp_path}"])
    result = pretrain(cfg, progress=False)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    random_init = next(r["knn_top1"] for r in records if r.get("epoch") == 0 and "knn_top1" in r)
    first, last = result.fit.history[0], result.fit.history[-1]
    trained = last["knn_top1"]
    learning.check(trained, random_init, MARGINS[name])
    assert math.isfinite(last["loss"])
    if name != "transitive":  # its positives are re-mined from the improving features every epoch: a harder loss
        assert first["loss"] > last["loss"]
