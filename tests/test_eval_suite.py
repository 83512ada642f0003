"""The evaluation suite: collapse indicators, label subsets, clustering scores, export, embeddings,
the augmented linear and fine-tuning protocols, and the CLI commands on a tiny run."""

import gzip
import json
import math
import struct

import numpy as np
import pytest
import torch

from selfsup.cli import main
from selfsup.data.datasets import load_digits
from selfsup.errors import SelfSupError
from selfsup.eval.clustering import cluster_eval, clustering_scores
from selfsup.eval.collapse import effective_rank, embedding_std
from selfsup.eval.embed import save_embeddings
from selfsup.eval.finetune import balanced_subset, finetune, load_or_make_subset, subset_file
from selfsup.eval.linear_aug import linear_eval_augmented
from selfsup.models import ResNet, build_backbone, export_backbone, load_exported, read_metadata

TINY = ["data.subset=128", "data.image_size=16", "views.size=16", "model.width=0.125", "train.batch_size=64",
        "method.hidden_dim=32", "method.projection_dim=16", "train.epochs=1", "eval.knn_k=10"]
MEAN, STD = [0.5] * 3, [0.25] * 3


# ---- collapse indicators against hand computations

def test_embedding_std_by_hand():
    # Orthogonal unit rows: each dimension holds {1, 0} (or {0, -1}), population std 0.5.
    assert embedding_std(torch.tensor([[2.0, 0.0], [0.0, -3.0]])) == pytest.approx(0.5)
    # Identical rows (complete collapse): 0.
    assert embedding_std(torch.tensor([[3.0, 4.0], [3.0, 4.0], [3.0, 4.0]])) == pytest.approx(0.0)
    # Centred: [[1, 1], [3, 3]] -> [[-1, -1], [1, 1]] -> rows +-(1, 1)/sqrt(2), std 1/sqrt(2) per dimension.
    assert embedding_std(torch.tensor([[1.0, 1.0], [3.0, 3.0]]), center=True) == pytest.approx(1 / math.sqrt(2))
    assert embedding_std(torch.tensor([[1.0, 1.0], [3.0, 3.0]])) == pytest.approx(0.0)
    # Isotropic zero-mean Gaussian embeddings: about 1/sqrt(d) (SimSiam's healthy value).
    z = torch.randn(20000, 16, generator=torch.Generator().manual_seed(0))
    assert embedding_std(z) == pytest.approx(1 / math.sqrt(16), rel=0.02)


def test_effective_rank_by_hand():
    # Singular values (3, 1): p = (3/4, 1/4), erank = exp(-(3/4 ln 3/4 + 1/4 ln 1/4)).
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert effective_rank(torch.tensor([[3.0, 0.0], [0.0, 1.0]])) == pytest.approx(expected)
    assert effective_rank(torch.eye(5)) == pytest.approx(5.0)
    assert effective_rank(torch.tensor([[1.0, 2.0, 3.0]]).repeat(10, 1)) == pytest.approx(1.0)
    assert effective_rank(torch.zeros(4, 3)) == 0.0
    # Invariant to rotations of the embedding space.
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    z = torch.randn(50, 6, dtype=torch.float64)
    assert effective_rank(z @ q) == pytest.approx(effective_rank(z))
    with pytest.raises(SelfSupError, match="NaN"):
        effective_rank(torch.tensor([[math.nan, 1.0]]))


# ---- semi-supervised label subsets

def test_balanced_subsets_are_balanced_and_reproducible(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate([300, 200, 500, 250])])
    rng.shuffle(labels)
    a = balanced_subset(labels, 0.1, seed=0)
    counts = np.bincount(labels[a], minlength=4)
    assert (counts == round(0.1 * len(labels) / 4)).all(), counts  # 31 of every class
    assert len(np.unique(a)) == len(a) and (np.diff(a) > 0).all()
    assert np.array_equal(a, balanced_subset(labels, 0.1, seed=0))
    assert not np.array_equal(a, balanced_subset(labels, 0.1, seed=1))
    assert (np.bincount(labels[balanced_subset(labels, 0.001, 0)]) == 1).all()  # at least one per class
    # Saved in the run folder, reused from there: identical across runs with the same seed.
    path = subset_file(tmp_path, "digits/train", 0.01, 0)
    assert path.name == "digits-train-1pct-seed0.npy"
    first = load_or_make_subset(path, labels, 0.01, 0)
    assert path.exists() and np.array_equal(np.load(path), first)
    assert np.array_equal(load_or_make_subset(path, labels, 0.01, 0), first)
    assert np.array_equal(load_or_make_subset(subset_file(tmp_path / "other", "digits/train", 0.01, 0), labels,
                                              0.01, 0), first)
    with pytest.raises(SelfSupError, match="label fraction"):
        balanced_subset(labels, 0.0)
    with pytest.raises(SelfSupError, match="not an index file"):
        load_or_make_subset(path, labels[:3], 0.01, 0)


# ---- clustering scores against independent computations

def test_clustering_scores_equal_sklearn_and_scipy():
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 500)
    pred = np.where(rng.random(500) < 0.6, (labels + 2) % 6, rng.integers(0, 7, 500))
    s = clustering_scores(torch.from_numpy(pred), torch.from_numpy(labels))
    assert s["nmi"] == pytest.approx(normalized_mutual_info_score(labels, pred, average_method="geometric"), abs=1e-12)
    assert s["ari"] == pytest.approx(adjusted_rand_score(labels, pred), abs=1e-12)
    table = np.zeros((7, 6))
    np.add.at(table, (pred, labels), 1)
    r, c = linear_sum_assignment(-table)
    assert s["accuracy"] == pytest.approx(table[r, c].sum() / 500, abs=1e-12)


def test_cluster_eval_recovers_separated_classes():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(8)[:4] * 10
    labels = torch.arange(4).repeat_interleave(50)
    feats = centres[labels] + 0.1 * torch.randn(200, 8, generator=g)
    r = cluster_eval(feats, labels, seed=0)
    assert r["k"] == 4 and r["nmi"] == pytest.approx(1.0) and r["ari"] == pytest.approx(1.0)
    assert r["accuracy"] == pytest.approx(1.0) and "sqrt(H(A)H(B))" in r["nmi_definition"]


# ---- export

def _torchvision_resnet18_keys() -> set[str]:
    """torchvision's resnet18 state-dict names without ``fc``, written out from its naming scheme."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", *(f"bn1.{b}" for b in bn)}
    for layer in range(1, 5):
        for block in range(2):
            p = f"layer{layer}.{block}"
            keys |= {f"{p}.conv1.weight", f"{p}.conv2.weight", *(f"{p}.bn{i}.{b}" for i in (1, 2) for b in bn)}
            if layer > 1 and block == 0:
                keys |= {f"{p}.downsample.0.weight", *(f"{p}.downsample.1.{b}" for b in bn)}
    return keys


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_export_reloads_into_a_fresh_backbone_with_identical_features(tmp_path, stem):
    net = build_backbone("resnet18", stem, 0.125)
    with torch.no_grad():  # non-trivial BatchNorm statistics and weights
        net.train()
        net(torch.randn(8, 3, 32, 32))
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    net.eval()
    path = export_backbone(net, tmp_path / "enc.safetensors", {"mean": MEAN, "std": STD, "image_size": 32,
                                                                 "method": "simclr"})
    fresh, meta = load_exported(path)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(fresh(x), net(x)) and not fresh.training
    assert meta["arch"] == "resnet18" and meta["stem"] == stem and meta["width"] == 0.125
    assert meta["mean"] == MEAN and meta["image_size"] == 32 and meta["out_dim"] == net.out_dim
    assert read_metadata(path)["method"] == "simclr"
    from safetensors.torch import load_file

    assert set(load_file(str(path))) == _torchvision_resnet18_keys()


def test_export_errors(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(SelfSupError, match="no selfsup backbone metadata"):
        load_exported(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(SelfSupError, match="not a safetensors file"):
        load_exported(tmp_path / "junk.safetensors")
    with pytest.raises(SelfSupError, match="does not exist"):
        load_exported(tmp_path / "none.safetensors")


# ---- embeddings on disk

def test_save_embeddings_formats(tmp_path):
    f, y, i = torch.randn(5, 3), torch.tensor([0, 1, -1, 2, 1]), torch.arange(10, 15)
    files = save_embeddings(tmp_path / "f.npy", f, y, i)
    assert [p.name for p in files] == ["f.npy", "f.meta.npz"]
    assert np.array_equal(np.load(files[0]), f.numpy())
    meta = np.load(files[1])
    assert np.array_equal(meta["labels"], y.numpy()) and np.array_equal(meta["index"], i.numpy())
    (npz,) = save_embeddings(tmp_path / "g.npz", f, y)
    d = np.load(npz)
    assert np.array_equal(d["features"], f.numpy()) and np.array_equal(d["index"], np.arange(5))
    with pytest.raises(SelfSupError, match="unknown output format"):
        save_embeddings(tmp_path / "h.csv", f, y)


def test_save_embeddings_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    (p,) = save_embeddings(tmp_path / "f.parquet", torch.ones(3, 2), torch.tensor([1, 2, 3]))
    t = pq.read_table(p).to_pydict()
    assert t["label"] == [1, 2, 3] and t["features"][0] == [1.0, 1.0]


# ---- the trained protocols leave the evaluated backbone untouched

@pytest.fixture(scope="module")
def digits16():
    train, test = load_digits("train", 16), load_digits("test", 16)
    return train.subset(torch.arange(0, len(train), 6)), test.subset(torch.arange(0, len(test), 3))


def test_linear_aug_keeps_the_backbone_frozen(digits16):
    train, test = digits16
    net = build_backbone("resnet18", "cifar", 0.125)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    r = linear_eval_augmented(net, train, test, MEAN, STD, 16, epochs=2, batch_size=64, seed=0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN statistics included
    assert r["steps"] == 2 * math.ceil(len(train) / 64) and 0 <= r["top1"] <= r["top5"] <= 100
    assert r == linear_eval_augmented(net, train, test, MEAN, STD, 16, epochs=2, batch_size=64, seed=0)


def test_finetune_trains_a_copy(digits16):
    train, test = digits16
    net = build_backbone("resnet18", "cifar", 0.125)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    idx = balanced_subset(train.labels, 0.1, seed=0)
    r = finetune(net, train, test, idx, MEAN, STD, 16, trunk_lr=0.01, head_lr=0.2, epochs=2, batch_size=32)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert r["labelled_images"] == len(idx) == 10 * round(0.1 * len(train) / 10)
    assert r["steps"] == 2 * math.ceil(len(idx) / 32) and 0 <= r["top1"] <= r["top5"] <= 100


# ---- the CLI on a tiny run

def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def fashion_like(tmp_path_factory):
    """Fashion-MNIST's layout: gzipped IDX files of 28x28 grayscale images (made from the digits)."""
    d = tmp_path_factory.mktemp("fashion")
    for split, prefix, n in (("train", "train", 120), ("test", "t10k", 60)):
        ds = load_digits(split, 28)
        _write_idx(d / f"{prefix}-images-idx3-ubyte.gz", ds.images[:n, 0].numpy())
        _write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", ds.labels[:n].numpy())
    return d


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["pretrain", "simclr", *TINY, f"run.dir={root}", "run.name=r", "--quiet"]) == 0
    return root / "r"


def test_cli_eval_all_transfer_compare(tiny_run, fashion_like, tmp_path, capsys):
    run = tiny_run
    assert main(["eval", "all", str(run), "--epochs", "1", "--batch-size", "32"]) == 0
    for name in ("knn", "linear", "linear_aug", "finetune", "cluster"):
        out = json.loads((run / f"eval_{name}.json").read_text())
        assert out["protocol"] == name.replace("_", "-") and out["data"] == "digits"
    ft = json.loads((run / "eval_finetune.json").read_text())["trained"]
    assert set(ft) == {"1pct", "10pct"}
    subset = np.load(run / ft["1pct"]["subset_file"])
    assert len(subset) == ft["1pct"]["labelled_images"] == 10  # one image per class out of 128
    cl = json.loads((run / "eval_cluster.json").read_text())["trained"]
    assert cl["k"] == 10 and 0 <= cl["nmi"] <= 1 and "sqrt(H(A)H(B))" in cl["nmi_definition"]
    assert "DeepCluster" in capsys.readouterr().out

    # Transfer: grayscale 28 px IDX files -> 3 channels at the run's 16 px.
    assert main(["eval", "transfer", str(run), "--data", str(fashion_like)]) == 0
    tr = json.loads((run / f"eval_transfer_{fashion_like.name}.json").read_text())
    assert tr["data"] == str(fashion_like) and set(tr["trained"]) == {"knn", "linear"}
    assert 0 <= tr["trained"]["knn"]["top1"] <= 100
    assert main(["eval", "transfer", str(run)]) == 2

    chart = tmp_path / "cmp.png"
    assert main(["compare", str(run), str(run), "--out", str(chart)]) == 0
    table = capsys.readouterr().out
    assert "| kNN top-1 |" in table and "fine-tune 10% top-1" in table and chart.stat().st_size > 1000
    knn = json.loads((run / "eval_knn.json").read_text())["trained"]["top1"]
    assert f"| {knn:.2f} |" in table


def test_cli_embed_and_export(tiny_run, fashion_like, tmp_path):
    run = tiny_run
    assert main(["embed", str(run), "--split", "test", "--out", str(tmp_path / "e.npy")]) == 0
    feats, meta = np.load(tmp_path / "e.npy"), np.load(tmp_path / "e.meta.npz")
    assert feats.shape == (len(load_digits("test")), 64) and len(meta["labels"]) == len(feats)
    assert main(["embed", str(run), "--data", str(fashion_like), "--out", str(tmp_path / "f.npz")]) == 0
    assert np.load(tmp_path / "f.npz")["features"].shape == (120, 64)

    assert main(["export", str(run), "--out", str(tmp_path / "enc.safetensors")]) == 0
    backbone, meta = load_exported(tmp_path / "enc.safetensors")
    from selfsup.train.pretrain import load_run

    cfg, method, _ = load_run(run)
    assert isinstance(backbone, ResNet) and meta["method"] == "simclr" and meta["image_size"] == 16
    assert meta["mean"] == cfg.views.mean and meta["width"] == cfg.model.width
    x = torch.randn(3, 3, 16, 16)
    # the run's backbone is channels_last (the default), the exported one loads contiguous: same
    # weights, another summation order
    assert torch.allclose(backbone(x), method.backbone.eval()(x), atol=1e-5)


def test_cli_new_commands_help_and_errors(tmp_path, capsys):
    for cmd in ["compare", "report", "embed", "export"]:
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0 and "usage: selfsup" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "linear-aug" in capsys.readouterr().out
    assert main(["compare", str(tmp_path)]) == 2
    assert main(["report", str(tmp_path)]) == 2
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert capsys.readouterr().err.count("not a run folder") == 3
    with pytest.raises(SystemExit):
        main(["eval", "finetune", str(tmp_path), "--fractions", "0,2"])
    assert "fractions must lie in (0, 1]" in capsys.readouterr().err
