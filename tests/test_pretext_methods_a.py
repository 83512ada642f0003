"""RotNet, colorization, context encoder and counting: their targets, their losses against naive
loop references, and a short seeded training run on the embedded digits for each, whose encoder
must beat the same backbone at random init on kNN top-1.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.config import load_config
from selfsup.data.color import ab_bins, encode_ab, lab_to_rgb, rebalance_weights, rgb_to_lab
from selfsup.data.datasets import load_digits
from selfsup.data.pretext import central_mask, random_region_mask
from selfsup.data.views import build_recipe
from selfsup.errors import SelfSupError
from selfsup.losses import colorization_loss, counting_loss_terms, inpainting_loss, inpainting_weights
from selfsup.methods import METHODS, Colorization, ContextEncoder, Counting, RotNet
from selfsup.methods.colorization import AB_SCALE
from selfsup.methods.counting import partner_index
from selfsup.models import MLP, ResNet, UpsampleDecoder, feature_geometry, upsampling_stages
from selfsup.train.pretrain import build_method, pretrain


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float64)


def _backbone() -> ResNet:
    return ResNet("resnet18", "cifar", 0.125)


def _record_features(backbone: nn.Module) -> list[torch.Tensor]:
    """Record every input of ``backbone.forward_features`` (plain method calls bypass module hooks)."""
    seen: list[torch.Tensor] = []
    inner = backbone.forward_features

    def wrapped(x):
        seen.append(x.detach().clone())
        return inner(x)

    backbone.forward_features = wrapped
    return seen


# -------------------------------------------------------------------------------------- decoder


@pytest.mark.parametrize("stem, stride", [("cifar", 8), ("imagenet", 32)])
def test_decoder_matches_the_backbone_and_returns_the_asked_size(stem, stride):
    backbone = ResNet("resnet18", stem, 0.125)
    was = {k: v.clone() for k, v in backbone.state_dict().items()}
    channels, got = feature_geometry(backbone)
    assert (channels, got) == (backbone.out_dim, stride) and backbone.training
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in was.items())  # BN statistics untouched
    assert upsampling_stages(8) == 3 and upsampling_stages(8, 4) == 1 and upsampling_stages(32, 1) == 5
    decoder = UpsampleDecoder(channels, 5, upsampling_stages(stride, 4))
    out = decoder(backbone.forward_features(torch.randn(2, 3, 32, 32)), (8, 8))
    assert out.shape == (2, 5, 8, 8)
    with pytest.raises(SelfSupError, match="forward_features"):
        feature_geometry(MLP(4, 8, 4))


# ------------------------------------------------------------------------------ loss references


def test_counting_loss_matches_naive_loop():
    b, t, d, margin = 6, 4, 3, 10.0
    down, tiles, other = _randn(b, d, seed=1), _randn(b, t, d, seed=2), _randn(b, d, seed=3) * 2
    terms = counting_loss_terms(down, tiles, other, margin)
    eqs, cons = [], []
    for i in range(b):
        total = [sum(tiles[i, j, k].item() for j in range(t)) for k in range(d)]
        eqs.append(sum((down[i, k].item() - total[k]) ** 2 for k in range(d)))
        cons.append(max(0.0, margin - sum((other[i, k].item() - total[k]) ** 2 for k in range(d))))
    assert 0 < sum(c > 0 for c in cons) < b  # both sides of the hinge are exercised
    assert math.isclose(terms.equivariance.item(), sum(eqs) / b, rel_tol=1e-12)
    assert math.isclose(terms.contrastive.item(), sum(cons) / b, rel_tol=1e-12)
    assert math.isclose(terms.loss.item(), (sum(eqs) + sum(cons)) / b, rel_tol=1e-12)


def test_counting_loss_per_count_matches_naive_loop():
    b, t, d, margin = 6, 4, 3, 2.0
    down, tiles, other = _randn(b, d, seed=1), _randn(b, t, d, seed=2), _randn(b, d, seed=3)
    terms = counting_loss_terms(down, tiles, other, margin, per_count=True)
    eqs, cons = [], []
    for i in range(b):
        for k in range(d):
            total = sum(tiles[i, j, k].item() for j in range(t))
            eqs.append((down[i, k].item() - total) ** 2)
            cons.append(max(0.0, margin - (other[i, k].item() - total) ** 2))
    assert 0 < sum(c > 0 for c in cons) < b * d  # both sides of each count's hinge are exercised
    assert math.isclose(terms.equivariance.item(), sum(eqs) / (b * d), rel_tol=1e-12)
    assert math.isclose(terms.contrastive.item(), sum(cons) / (b * d), rel_tol=1e-12)
    assert math.isclose(terms.loss.item(), (sum(eqs) + sum(cons)) / (b * d), rel_tol=1e-12)
    # With a single count the two forms agree.
    one = [counting_loss_terms(down[:, :1], tiles[:, :, :1], other[:, :1], margin, per_count=p).loss for p in (0, 1)]
    assert torch.allclose(*one)


def test_counting_hinge_is_checked():
    with pytest.raises(SelfSupError, match="hinge"):
        Counting(ResNet("resnet18", "cifar", 0.125), hinge="norm")


def test_counting_pairs_stay_within_even_shards():
    assert partner_index(6).tolist() == [1, 0, 3, 2, 5, 4]
    assert partner_index(5).tolist() == [1, 0, 3, 2, 0]
    # With pairs (0, 1), (2, 3), ... the loss of a global batch is the mean of the losses of its
    # contiguous even shards: the same on one process and on two.
    down, tiles = _randn(8, 5, seed=4).abs(), _randn(8, 4, 5, seed=5).abs()
    full = counting_loss_terms(down, tiles, down[partner_index(8)]).loss
    halves = [counting_loss_terms(down[s], tiles[s], down[s][partner_index(4)]).loss for s in (slice(0, 4),
                                                                                                slice(4, 8))]
    assert torch.allclose(full, sum(halves) / 2)


@pytest.mark.parametrize("weighted", [True, False])
def test_colorization_loss_matches_naive_loop(weighted):
    centers = ab_bins(dtype=torch.float64)
    q = centers.shape[0]
    logits = _randn(2, q, 2, 3, seed=6) * 2
    ab = (torch.rand(2, 2, 2, 3, generator=_gen(7), dtype=torch.float64) - 0.5) * 120
    index, weight = encode_ab(ab, centers, dense=False)
    dense = encode_ab(ab, centers)
    w = torch.rand(q, generator=_gen(8), dtype=torch.float64) + 0.5 if weighted else None
    got = colorization_loss(logits, index, weight, w)
    total, n = 0.0, 0
    for b in range(2):
        for y in range(2):
            for x in range(3):
                z = [dense[b, k, y, x].item() for k in range(q)]
                s = [logits[b, k, y, x].item() for k in range(q)]
                top = max(s)
                lse = top + math.log(sum(math.exp(v - top) for v in s))
                v = w[max(range(q), key=lambda k: z[k])].item() if weighted else 1.0
                total += -v * sum(z[k] * (s[k] - lse) for k in range(q))
                n += 1
    assert math.isclose(got.item(), total / n, rel_tol=1e-10)


@pytest.mark.parametrize("overlap", [0, 1, 2])
def test_inpainting_loss_matches_naive_loop(overlap):
    b, c, h, w, ow = 2, 3, 6, 7, 10.0
    pred, target = _randn(b, c, h, w, seed=9), _randn(b, c, h, w, seed=10)
    mask = random_region_mask(b, h, w, _gen(11), mode="blobs", fraction=0.2)
    num = den = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                if mask[i, 0, y, x]:
                    wt = 1.0
                else:
                    near = any(mask[i, 0, yy, xx] for yy in range(max(0, y - overlap), min(h, y + overlap + 1))
                               for xx in range(max(0, x - overlap), min(w, x + overlap + 1)))
                    wt = ow if near else 0.0
                num += wt * sum((pred[i, k, y, x].item() - target[i, k, y, x].item()) ** 2 for k in range(c))
                den += wt * c
    assert math.isclose(inpainting_loss(pred, target, mask, overlap, ow).item(), num / den, rel_tol=1e-12)


def test_inpainting_loss_gradient_lives_on_the_predicted_region_only():
    pred, target = _randn(2, 3, 8, 8, seed=12).requires_grad_(), _randn(2, 3, 8, 8, seed=13)
    mask = central_mask(2, 8, 8)
    loss = inpainting_loss(pred, target, mask, overlap=1, overlap_weight=10.0)
    (grad,) = torch.autograd.grad(loss, pred)
    region = inpainting_weights(mask, 1) > 0
    assert (grad * ~region == 0).all() and (grad[region.expand_as(grad)] != 0).all()
    # the border's residuals weigh 10x: d loss / d pred = 2 w (pred - target) / (C sum w)
    expected = 2 * inpainting_weights(mask, 1, 10.0) * (pred - target) / (3 * inpainting_weights(mask, 1, 10.0).sum())
    assert torch.allclose(grad, expected.detach())


# --------------------------------------------------------------------------------------- RotNet


def test_rotation_feeds_all_four_rotations_with_their_labels():
    method = RotNet(_backbone())
    seen = []
    method.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    x = torch.randn(3, 3, 8, 8, generator=_gen(14))
    out = method.training_step([x], torch.arange(3))
    (inp,) = seen
    assert inp.shape == (12, 3, 8, 8)
    for k in range(4):
        for i in range(3):
            np.testing.assert_array_equal(inp[k * 3 + i].numpy(), np.rot90(x[i].numpy(), k, axes=(1, 2)))
    labels = torch.arange(4).repeat_interleave(3)  # block k holds the images rotated by k * 90 degrees
    logits = method.classifier(method.backbone(inp))
    assert torch.allclose(out["loss"], F.cross_entropy(logits, labels))
    assert out["rotation_acc"].item() == pytest.approx((logits.argmax(1) == labels).float().mean().item() * 100)


def test_rotation_mlp_head():
    method = RotNet(_backbone(), hidden_dim=16)
    assert method.training_step([torch.randn(2, 3, 8, 8)], torch.arange(2))["loss"].isfinite()
    with pytest.raises(ValueError, match="hidden_dim"):
        RotNet(_backbone(), hidden_dim=-1)


# --------------------------------------------------------------------------------- colorization

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def _colour_batch() -> torch.Tensor:
    return torch.randint(0, 256, (4, 3, 12, 12), generator=_gen(15), dtype=torch.uint8)


def test_colorization_views_are_lightness_input_and_colour_crop():
    recipe = build_recipe("colorization", MEAN, STD, size=8)
    images = _colour_batch()
    gray_n, colour = recipe(images, _gen(16))
    assert recipe.num_views == 2 and recipe.normalized == [True, False]
    assert gray_n.shape == colour.shape == (4, 3, 8, 8)
    # the colour view is exactly the `single` recipe's crop for the same random draws, unnormalized
    (single,) = build_recipe("single", MEAN, STD, size=8)(images, _gen(16))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose((colour - mean) / std, single, atol=1e-6)
    # the input is grey (equal channels once unnormalized) with the colour view's lightness
    gray = gray_n * std + mean
    assert (gray - gray[:, :1]).abs().max() < 1e-5
    lab_gray, lab_colour = rgb_to_lab(gray.clamp(0, 1)), rgb_to_lab(colour)
    assert (lab_gray[:, 0] - lab_colour[:, 0]).abs().max() < 0.05
    assert lab_gray[:, 1:].abs().max() < 0.05


def test_colorization_targets_are_the_ab_of_the_colour_view():
    method = Colorization(_backbone(), output_stride=2)
    colour = torch.rand(2, 3, 8, 8, generator=_gen(17))
    ab = rgb_to_lab(colour)[:, 1:]
    assert torch.allclose(method.targets(colour, (8, 8)), ab)
    assert torch.allclose(method.targets(colour, (4, 4)), F.avg_pool2d(ab, 2), atol=1e-5)


def test_colorization_step_loss_and_running_rebalancing():
    method = Colorization(_backbone(), output_stride=2)
    assert {"ab_centers", "ab_distribution", "class_weights", "batches_counted"} <= set(method.state_dict())
    recipe = build_recipe("colorization", MEAN, STD, size=8)
    histograms = []
    for seed in (18, 19):
        gray_n, colour = recipe(torch.randint(0, 256, (4, 3, 8, 8), generator=_gen(seed), dtype=torch.uint8),
                                _gen(seed))
        out = method.training_step([gray_n, colour], torch.arange(4))
        ab = rgb_to_lab(colour)[:, 1:]
        index, weight = encode_ab(F.avg_pool2d(ab, 2), method.ab_centers, dense=False)
        counts = torch.bincount(index[:, 0].flatten(), minlength=len(method.ab_centers)).float()
        histograms.append(counts / counts.sum())
        # the running estimate is the mean of the batch histograms; weights follow it (eq. 3-4)
        assert torch.allclose(method.ab_distribution, sum(histograms) / len(histograms))
        expected_w = rebalance_weights(method.ab_distribution, 0.5, 5.0, method.ab_centers)
        assert torch.allclose(method.class_weights, expected_w)
        logits = method.decoder(method.backbone.forward_features(gray_n), (4, 4))
        assert torch.allclose(out["loss"], colorization_loss(logits, index, weight, method.class_weights), atol=1e-5)
    assert int(method.batches_counted) == 2


def test_colorization_regression_option():
    method = Colorization(_backbone(), loss="regression", output_stride=2)
    gray_n, colour = build_recipe("colorization", MEAN, STD, size=8)(_colour_batch(), _gen(20))
    out = method.training_step([gray_n, colour], torch.arange(4))
    pred = method.decoder(method.backbone.forward_features(gray_n), (4, 4))
    ab = F.avg_pool2d(rgb_to_lab(colour)[:, 1:], 2)
    assert torch.allclose(out["loss"], (pred - ab / AB_SCALE).pow(2).sum(1).mean(), atol=1e-6)
    assert int(method.batches_counted) == 0
    with pytest.raises(ValueError, match="loss"):
        Colorization(_backbone(), loss="l1")


def test_colorization_has_nothing_to_learn_on_grey_digits():
    # The embedded digits are grey: every target is the neutral colour, one bin for all pixels.
    ds = load_digits("train", 16)
    ds_mean, ds_std = ds.channel_stats()
    _, colour = build_recipe("colorization", ds_mean, ds_std, size=16)(ds.images[:64], _gen(21))
    ab = rgb_to_lab(colour)[:, 1:]
    assert ab.abs().max() < 1e-3
    index, _ = encode_ab(ab, ab_bins(), dense=False)
    assert index[:, 0].unique().numel() == 1


# ----------------------------------------------------------------------------------- inpainting


def test_inpainting_input_hides_the_region_and_loss_ignores_the_context():
    method = ContextEncoder(_backbone(), mask="central", overlap=1)
    seen = _record_features(method.backbone)
    x = torch.randn(2, 3, 16, 16, generator=_gen(22))
    base = method.training_step([x], torch.arange(2))["loss"]
    mask = central_mask(2, 16, 16).expand_as(x)
    assert (seen[0][mask] == 0).all() and torch.equal(seen[0][~mask], x[~mask])  # 0 = the data set mean
    # the hidden pixels never reach the encoder, but they are the target
    x2 = x.clone()
    x2[mask] += 1.0
    assert not torch.equal(method.training_step([x2], torch.arange(2))["loss"], base)
    assert torch.equal(seen[1], seen[0])
    # output pixels outside the region (the removed square and its 1 px border) do not count
    region = inpainting_weights(central_mask(2, 16, 16), 1) > 0

    def loss_with_output_shift(where: torch.Tensor) -> torch.Tensor:
        handle = method.decoder.register_forward_hook(lambda m, a, out: out + 3.0 * where)
        try:
            return method.training_step([x], torch.arange(2))["loss"]
        finally:
            handle.remove()

    assert torch.equal(loss_with_output_shift(~region), base)
    assert loss_with_output_shift(region) > base + 1


@pytest.mark.parametrize("mask", ["blocks", "blobs"])
def test_inpainting_random_masks(mask):
    method = ContextEncoder(_backbone(), mask=mask)
    seen = _record_features(method.backbone)
    x = torch.randn(4, 3, 16, 16, generator=_gen(23)) + 5  # no pixel is 0 by chance
    assert method.training_step([x], torch.arange(4))["loss"].isfinite()
    removed = (seen[0] == 0).all(1)
    assert 0 < removed.float().mean() <= 0.25 and not torch.equal(removed[0], removed[1])


def test_inpainting_adversarial_term_routes_gradients_to_each_player():
    assert ContextEncoder(_backbone()).discriminator is None
    a = 0.25
    method = ContextEncoder(_backbone(), adversarial_weight=a)
    out = method.training_step([torch.randn(4, 3, 16, 16, generator=_gen(24))], torch.arange(4))
    d_params = list(method.discriminator.parameters())
    g_params = list(method.decoder.parameters()) + list(method.backbone.parameters())

    def grads(value, params):
        return torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)

    # the discriminator learns only from its own loss ...
    for got, want in zip(grads(out["loss"], d_params), grads(out["discriminator"], d_params)):
        assert torch.allclose(got, want, atol=1e-7)
    # ... and the encoder-decoder only from (1 - a) L_rec + a L_adv, the adversarial part non-zero
    want = grads((1 - a) * out["reconstruction"] + a * out["adversarial"], g_params)
    for got, w in zip(grads(out["loss"], g_params), want):
        assert torch.allclose(got, w, atol=1e-7)
    assert all(g is None or (g == 0).all() for g in grads(out["discriminator"], g_params))
    assert any(g is not None and (g != 0).any() for g in grads(out["adversarial"], g_params))


# ------------------------------------------------------------------------------------- counting


class PixelSum(nn.Module):
    """A 'backbone' whose features are each channel's pixel sum, a quantity that adds up over tiles."""

    out_dim = 3

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.scale * x.sum((2, 3))


def test_counting_sums_the_four_tiles_of_the_same_image():
    backbone = PixelSum()
    margin = 3000.0  # above the squared distances of these pixel sums (~1700), so the hinge is active
    method = Counting(backbone, grayscale_p=0.0, margin=margin)
    method.counter = nn.Identity()
    b = 4
    x = torch.rand(b, 3, 8, 8, generator=_gen(25))
    out = method.training_step([x], torch.arange(b))
    (inp,) = backbone.seen
    assert inp.shape == (5 * b, 3, 4, 4)
    tiles = inp[b:].view(b, 4, 3, 4, 4)
    for i in range(b):
        for r in range(2):
            for c in range(2):
                assert torch.equal(tiles[i, 2 * r + c], x[i, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4])
        resampled = [F.interpolate(x[i : i + 1], size=(4, 4), mode=m, **k) for m, k in
                     [("bilinear", {"align_corners": False}), ("bicubic", {"align_corners": False}),
                      ("area", {}), ("nearest-exact", {})]]
        # (at a factor of 2 bilinear and area coincide)
        assert any(torch.allclose(inp[i], r[0], atol=1e-6) for r in resampled)
    # the tile sum of pixel sums is the whole image's pixel sum, computed here from x itself
    down, whole = inp[:b].sum((2, 3)), x.sum((2, 3))
    eq = (down - whole).pow(2).sum(1)
    con = (margin - (down[[1, 0, 3, 2]] - whole).pow(2).sum(1)).clamp_min(0)
    assert (con > 0).all()
    assert torch.allclose(out["equivariance"], eq.mean()) and torch.allclose(out["contrastive"], con.mean())
    assert torch.allclose(out["loss"], (eq + con).mean())


def test_counting_grayscale_and_count_head():
    backbone = PixelSum()
    method = Counting(backbone, grayscale_p=1.0, count_dim=7, hidden_dim=16)
    method.training_step([torch.rand(4, 3, 8, 8, generator=_gen(26))], torch.arange(4))
    assert (backbone.seen[0] == backbone.seen[0][:, :1]).all()
    counts = method.counter(torch.randn(5, 3))
    assert counts.shape == (5, 7) and (counts >= 0).all()  # ReLU counts, as the paper's fc + ReLU
    with pytest.raises(ValueError, match="2 images"):
        method.training_step([torch.rand(1, 3, 8, 8)], torch.arange(1))


# ------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("name", ["rotation", "colorization", "inpainting", "counting"])
def test_recipe_builds_its_method(name):
    cfg = load_config(name, ["model.width=0.125"])
    assert cfg.method["name"] == name and isinstance(build_method(cfg), METHODS[name])
    assert cfg.views.recipe == ("colorization" if name == "colorization" else "single")


# ------------------------------------------------------------------------- training on the digits


def _orientation_coloured(images: torch.Tensor) -> torch.Tensor:
    """Colour grey digits by their local stroke orientation: ab points along twice the gradient
    angle, with a chroma that grows with the gradient strength; L is kept. The colour is then a
    function of local shape (never of the class), which the grey digits lack entirely."""
    x = images.float() / 255
    g = F.pad(x[:, :1], (1, 1, 1, 1), mode="replicate")
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    gx, gy = F.conv2d(g, sobel), F.conv2d(g, sobel.transpose(2, 3))
    strength = (gx**2 + gy**2).sqrt()
    chroma = 60 * strength / strength.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    angle = torch.atan2(gy, gx)
    lab = torch.cat((rgb_to_lab(x)[:, :1], chroma * torch.cos(2 * angle), chroma * torch.sin(2 * angle)), 1)
    return (lab_to_rgb(lab) * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def coloured_digits(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("coloured-digits")
    for split in ("train", "test"):
        ds = load_digits(split, 16)
        np.save(folder / f"{split}_x.npy", _orientation_coloured(ds.images).permute(0, 2, 3, 1).numpy())
        np.save(folder / f"{split}_y.npy", ds.labels.numpy())
    return str(folder)


# Short seeded runs: 16 px views, ResNet-18 at 1/8 width, SGD at the given lr (not scaled), batches of
# 64. Per method: its overrides and the kNN top-1 margin over the same backbone at random init that
# it must beat, below the smallest margin measured over seeds and oneDNN kernel choices
# (benchmarks/learning_spread.py, BENCHMARKS.md).
SMALL = ["data.image_size=16", "views.size=16", "model.width=0.125", "train.batch_size=64", "train.warmup_epochs=0",
         "train.optimizer=sgd", "train.lr_scaling=none", "train.weight_decay=5e-4", "eval.knn_k=20",
         "train.checkpoint_every=100"]
RUNS = {
    # flips off: a mirrored digit has no canonical orientation left to recognise
    "rotation": (["train.epochs=5", "train.lr=0.25", "views.options={flip_p: 0.0}"], 8.0),
    "inpainting": (["train.epochs=3", "train.lr=0.4"], 12.0),
    # the recipe's gradient clip keeps the counts alive (asserted below; see methods/counting.py)
    "counting": (["train.epochs=3", "train.lr=0.1", "method.hidden_dim=128", "method.count_dim=128"], 5.0),
    # on the orientation-coloured digits: the grey digits give colorization nothing to predict
    "colorization": (["train.epochs=4", "train.lr=0.4"], 10.0),
}


@pytest.mark.parametrize("name", RUNS)
def test_pretext_method_beats_random_init_on_digits(name, tmp_path, request, learning):
    overrides, margin = RUNS[name]
    if name == "colorization":
        overrides = [*overrides, f"data.path={request.getfixturevalue('coloured_digits')}"]
    cfg = load_config(name, [*SMALL, *overrides, *learning.overrides, f"run.dir={tmp_path}"])
    result = pretrain(cfg, progress=False)
    # The run's online kNN monitor measures the backbone before any step (epoch 0) and after the last.
    first = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert first["epoch"] == 0 and first["step"] == 0
    random_init, trained = first["knn_top1"], result.fit.history[-1]["knn_top1"]
    learning.check(trained, random_init, margin)
    assert result.fit.history[0]["loss"] > result.fit.history[-1]["loss"]
    if name == "counting":  # not the trivial solution, whose loss is exactly M with no count active
        last = result.fit.history[-1]
        assert last["loss"] < 0.9 * cfg.method["margin"] and last["active_counts"] > 0.1, last
