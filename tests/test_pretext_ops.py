"""Checks of the pretext-task label generators against independent constructions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from selfsup.data.color import (
    ab_bins,
    decode_ab,
    encode_ab,
    lab_to_rgb,
    rebalance_weights,
    rgb_to_lab,
    smooth_distribution,
)
from selfsup.data.pretext import (
    RELATIVE_POSITION_OFFSETS,
    apply_mask,
    apply_permutation,
    central_mask,
    counting_tiles,
    jigsaw_tiles,
    maximal_hamming_permutations,
    pairwise_hamming,
    random_downsample,
    random_grayscale,
    random_region_mask,
    relative_position_pairs,
    rotate_batch,
)
from selfsup.errors import SelfSupError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _coordinate_image(b: int, h: int, w: int) -> torch.Tensor:
    """Channel 0 holds each pixel's row, channel 1 its column, channel 2 the sample index."""
    rows = torch.arange(h).view(1, h, 1).expand(b, h, w)
    cols = torch.arange(w).view(1, 1, w).expand(b, h, w)
    sample = torch.arange(b).view(b, 1, 1).expand(b, h, w)
    return torch.stack((rows, cols, sample), dim=1).float()


def _corner_and_contiguity(patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left (row, col) of coordinate-image patches (N, 3, p, q), asserting they are plain crops."""
    top, left = patch[:, 0, 0, 0], patch[:, 1, 0, 0]
    p, q = patch.shape[-2:]
    expected_rows = top.view(-1, 1, 1) + torch.arange(p).view(1, p, 1)
    expected_cols = left.view(-1, 1, 1) + torch.arange(q).view(1, 1, q)
    assert torch.equal(patch[:, 0], expected_rows.expand_as(patch[:, 0]))
    assert torch.equal(patch[:, 1], expected_cols.expand_as(patch[:, 1]))
    return top.long(), left.long()


# ------------------------------------------------------------------------------------------ Lab


@pytest.mark.parametrize(
    "rgb, lab",
    [
        ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
        ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
        ((0.5, 0.5, 0.5), (53.39, 0.0, 0.0)),  # power segment of the sRGB curve, cube-root Lab branch
        ((0.02, 0.02, 0.02), (1.398, 0.0, 0.0)),  # linear segments of both curves
        ((1.0, 0.0, 0.0), (53.24, 80.09, 67.20)),
        ((0.0, 1.0, 0.0), (87.73, -86.18, 83.18)),
        ((0.0, 0.0, 1.0), (32.30, 79.19, -107.86)),
    ],
)
def test_lab_reference_values(rgb, lab):
    out = rgb_to_lab(torch.tensor(rgb, dtype=torch.float64).view(1, 3, 1, 1)).flatten()
    assert torch.allclose(out, torch.tensor(lab, dtype=torch.float64), atol=0.01)


def test_lab_grays_are_neutral_and_lightness_monotone():
    ramp = torch.linspace(0, 1, 50, dtype=torch.float64).view(1, 1, 1, 50).expand(1, 3, 1, 50)
    lab = rgb_to_lab(ramp)
    assert lab[:, 1:].abs().max() < 1e-9
    assert (lab[0, 0, 0].diff() > 0).all()


def test_lab_round_trip_float64_and_float32():
    g = _gen(0)
    x = torch.rand(4, 3, 16, 16, generator=g, dtype=torch.float64)
    # include both ends and the sRGB curve's knee, where a mismatched inverse would show up
    x[0, :, 0, :5] = torch.tensor([0.0, 1.0, 0.04045, 0.0404, 0.0405], dtype=torch.float64)
    assert (lab_to_rgb(rgb_to_lab(x)) - x).abs().max() < 1e-4
    x32 = x.float()
    assert (lab_to_rgb(rgb_to_lab(x32)) - x32).abs().max() < 1e-3


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3))
def test_lab_round_trip_property(rgb):
    x = torch.tensor(rgb, dtype=torch.float64).view(1, 3, 1, 1)
    lab = rgb_to_lab(x)
    assert 0.0 <= lab[0, 0].item() <= 100.0 + 1e-9
    assert (lab_to_rgb(lab) - x).abs().max() < 1e-6


def test_lab_to_rgb_out_of_gamut_is_finite():
    lab = torch.tensor([50.0, 120.0, -120.0], dtype=torch.float64).view(1, 3, 1, 1)
    raw = lab_to_rgb(lab, clamp=False)
    assert torch.isfinite(raw).all() and (raw < 0).any()
    clamped = lab_to_rgb(lab)
    assert clamped.min() >= 0 and clamped.max() <= 1


def test_lab_rejects_bad_input():
    with pytest.raises(SelfSupError, match="255"):
        rgb_to_lab(torch.full((1, 3, 2, 2), 200.0))
    with pytest.raises(SelfSupError, match="shape"):
        rgb_to_lab(torch.rand(3, 4, 4))
    with pytest.raises(SelfSupError, match="floating"):
        rgb_to_lab(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))


# ------------------------------------------------------------------------------- ab quantization


@pytest.fixture(scope="module")
def centers() -> torch.Tensor:
    return ab_bins(dtype=torch.float64)


def test_ab_bins_count_and_grid(centers):
    # documented: 262 with the strict criterion; the paper's set has 313
    assert centers.shape == (262, 2)
    assert torch.equal(centers, torch.round(centers / 10) * 10)
    assert torch.unique(centers, dim=0).shape[0] == centers.shape[0]


def test_ab_bins_cover_random_colors(centers):
    x = torch.rand(1, 3, 64, 64, generator=_gen(1), dtype=torch.float64)
    ab = rgb_to_lab(x)[:, 1:].permute(0, 2, 3, 1).reshape(-1, 2)
    nearest_chebyshev = (ab[:, None, :] - centers[None]).abs().amax(-1).min(dim=1).values
    assert nearest_chebyshev.max() <= 5.0 + 1e-9


def test_ab_bins_margin_and_custom_gamut(centers):
    coarse = ab_bins(samples_per_channel=48, dtype=torch.float64)
    wide = ab_bins(samples_per_channel=48, margin=5.0, dtype=torch.float64)
    assert set(map(tuple, coarse.tolist())) <= set(map(tuple, wide.tolist()))
    assert wide.shape[0] > coarse.shape[0]
    custom = ab_bins(gamut=torch.tensor([[0.0, 0.0], [14.0, -6.0], [16.0, -4.0]]))
    assert custom.tolist() == [[0.0, 0.0], [10.0, -10.0], [20.0, 0.0]]


def test_encode_ab_mass_on_five_nearest_with_gaussian_weights(centers):
    ab = (torch.rand(2, 2, 5, 7, generator=_gen(2), dtype=torch.float64) - 0.5) * 160
    q = encode_ab(ab, centers, sigma=5.0, neighbors=5)
    assert q.shape == (2, centers.shape[0], 5, 7)
    assert torch.allclose(q.sum(1), torch.ones(2, 5, 7, dtype=torch.float64))
    pts = ab.permute(0, 2, 3, 1).reshape(-1, 2).numpy()
    dist = np.linalg.norm(pts[:, None, :] - centers.numpy()[None], axis=-1)
    probs = q.permute(0, 2, 3, 1).reshape(-1, centers.shape[0]).numpy()
    for i in range(pts.shape[0]):
        nearest = np.argsort(dist[i])[:5]
        assert set(np.flatnonzero(probs[i] > 0)) == set(nearest)
        expected = np.exp(-(dist[i, nearest] ** 2) / 50.0)
        np.testing.assert_allclose(probs[i, nearest], expected / expected.sum(), rtol=1e-9)
    idx, wt = encode_ab(ab, centers, dense=False, chunk_size=7)
    assert torch.equal(torch.zeros_like(q).scatter_(1, idx, wt), q)
    assert (wt[:, :-1] >= wt[:, 1:]).all()


def test_encode_ab_far_point_does_not_underflow(centers):
    ab = torch.tensor([500.0, 500.0], dtype=torch.float64).view(1, 2, 1, 1)
    q = encode_ab(ab, centers)
    assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(1, 1, 1, dtype=torch.float64))


def test_decode_ab_temperature_limits(centers):
    g = _gen(3)
    logits = torch.randn(2, centers.shape[0], 3, 3, generator=g, dtype=torch.float64) * 3
    probs = logits.softmax(1)
    mode = centers[probs.argmax(1)].permute(0, 3, 1, 2)
    mean = torch.einsum("bqhw,qc->bchw", probs, centers)
    assert torch.allclose(decode_ab(probs, centers, temperature=1.0), mean)
    assert torch.equal(decode_ab(probs, centers, temperature=0.0), mode)
    near_zero = decode_ab(probs, centers, temperature=1e-3)
    assert (near_zero - mode).abs().max() < 1e-3
    errors = [(decode_ab(probs, centers, temperature=t) - mode).abs().mean().item() for t in (1.0, 0.38, 0.1)]
    assert errors[0] > errors[1] > errors[2]
    assert torch.allclose(decode_ab(logits, centers, 0.38, from_logits=True), decode_ab(probs, centers, 0.38))


def test_decode_of_hard_encoding_is_bin_center(centers):
    ab = (torch.rand(1, 2, 4, 4, generator=_gen(4), dtype=torch.float64) - 0.5) * 100
    q = encode_ab(ab, centers, neighbors=1)
    out = decode_ab(q, centers, temperature=1.0)
    nearest = torch.cdist(ab.permute(0, 2, 3, 1).reshape(-1, 2), centers).argmin(1)
    assert torch.allclose(out.permute(0, 2, 3, 1).reshape(-1, 2), centers[nearest])


def test_rebalance_weights_hand_computed_without_smoothing():
    c = torch.tensor([[0.0, 0.0], [100.0, 0.0]], dtype=torch.float64)
    w = rebalance_weights(torch.tensor([3.0, 1.0], dtype=torch.float64), lamb=0.5, sigma=0.0, centers=c)
    raw = np.array([1 / (0.5 * 0.75 + 0.25), 1 / (0.5 * 0.25 + 0.25)])
    np.testing.assert_allclose(w.numpy(), raw / (0.75 * raw[0] + 0.25 * raw[1]))


def test_rebalance_weights_expectation_and_ordering(centers):
    g = _gen(5)
    counts = torch.rand(centers.shape[0], generator=g, dtype=torch.float64) ** 4 * 1000
    p_smooth = smooth_distribution(counts, centers, sigma=5.0)
    assert math.isclose(p_smooth.sum().item(), 1.0, rel_tol=1e-12)
    w = rebalance_weights(counts, lamb=0.5, sigma=5.0, centers=centers)
    assert math.isclose((p_smooth * w).sum().item(), 1.0, rel_tol=1e-12)
    order = torch.argsort(p_smooth)
    assert (w[order].diff() <= 1e-12).all() and w[order[0]] > w[order[-1]]
    uniform = rebalance_weights(counts, lamb=1.0, centers=centers)
    assert torch.allclose(uniform, torch.ones_like(uniform))
    default = rebalance_weights(counts)  # default centres match Q = 262
    assert torch.allclose(default, w)
    with pytest.raises(SelfSupError, match="centers"):
        rebalance_weights(torch.ones(313))


# -------------------------------------------------------------------------------------- rotation


def test_rotate_batch_matches_numpy_rot90():
    x = torch.randn(3, 2, 5, 5, generator=_gen(6))
    x_rot, labels = rotate_batch(x)
    assert x_rot.shape == (12, 2, 5, 5) and labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for j in range(12):
        k, i = int(labels[j]), j % 3
        expected = np.stack([np.rot90(x[i, c].numpy(), k) for c in range(2)])
        np.testing.assert_array_equal(x_rot[j].numpy(), expected)
        # undoing the labelled rotation recovers the source image
        assert torch.equal(torch.rot90(x_rot[j], 4 - k, dims=(-2, -1)), x[i])


def test_rotate_batch_direction_is_counter_clockwise():
    img = torch.zeros(1, 1, 3, 3)
    img[0, 0, 0, 2] = 1.0  # top-right corner
    x_rot, _ = rotate_batch(img)
    corners = [tuple(int(v) for v in torch.nonzero(x_rot[k, 0])[0]) for k in range(4)]
    assert corners == [(0, 2), (0, 0), (2, 0), (2, 2)]  # top-right -> top-left -> bottom-left -> ...


def test_rotate_batch_rejects_non_square():
    with pytest.raises(SelfSupError, match="square"):
        rotate_batch(torch.zeros(1, 3, 4, 5))


# ---------------------------------------------------------------------------------------- jigsaw


@pytest.fixture(scope="module")
def perms100() -> torch.Tensor:
    return maximal_hamming_permutations(100, 9, seed=0)


def test_hamming_permutations_valid_unique_and_distance(perms100):
    p = perms100.numpy()
    assert perms100.dtype == torch.long and p.shape == (100, 9)
    assert (np.sort(p, axis=1) == np.arange(9)).all()
    assert len({tuple(r) for r in p}) == 100
    brute = min(int((p[i] != p[j]).sum()) for i, j in itertools.combinations(range(100), 2))
    assert brute == 6  # the value documented in maximal_hamming_permutations
    d = pairwise_hamming(perms100)
    assert d[~torch.eye(100, dtype=torch.bool)].min().item() == brute
    assert d[~torch.eye(100, dtype=torch.bool)].float().mean() > 8.0


def test_hamming_permutations_greedy_step_is_maximin():
    tiles, n = 5, 20
    p = maximal_hamming_permutations(n, tiles, seed=3).tolist()
    everything = list(itertools.permutations(range(tiles)))

    def min_dist(cand, chosen):
        return min(sum(a != b for a, b in zip(cand, c)) for c in chosen)

    for i in range(1, n):
        best = max(min_dist(c, p[:i]) for c in everything if list(c) not in p[:i])
        assert min_dist(p[i], p[:i]) == best


def test_hamming_permutations_seeded_and_variants():
    a = maximal_hamming_permutations(20, seed=1)
    assert torch.equal(a, maximal_hamming_permutations(20, seed=1))
    assert not torch.equal(a[0], maximal_hamming_permutations(20, seed=2)[0])
    everything = maximal_hamming_permutations(6, tiles=3)
    assert sorted(map(tuple, everything.tolist())) == list(itertools.permutations(range(3)))
    by_sum = maximal_hamming_permutations(100, criterion="sum")
    off = ~torch.eye(100, dtype=torch.bool)
    assert pairwise_hamming(by_sum)[off].min() < 6
    with pytest.raises(SelfSupError):
        maximal_hamming_permutations(7, tiles=3)


def test_jigsaw_tiles_regions_paper_sizes():
    b, grid, cell = 2, 3, 75
    x = _coordinate_image(b, 225, 225)
    tiles = jigsaw_tiles(x, generator=_gen(7))
    assert tiles.shape == (b, 9, 3, 64, 64)  # paper: 225 crop, 75 cells, 64 tiles
    top, left = _corner_and_contiguity(tiles.reshape(-1, 3, 64, 64))
    top, left = top.view(b, 9), left.view(b, 9)
    k = torch.arange(9)
    off_top, off_left = top - (k // grid) * cell, left - (k % grid) * cell
    assert ((off_top >= 0) & (off_top <= cell - 64)).all() and ((off_left >= 0) & (off_left <= cell - 64)).all()
    assert len(set(off_top.flatten().tolist())) > 3 and len(set(off_left.flatten().tolist())) > 3
    assert torch.equal(tiles[:, :, 2], torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 9, 64, 64))
    assert torch.equal(jigsaw_tiles(x, generator=_gen(7)), tiles)


def test_jigsaw_tiles_centered_gap_and_non_divisible_size():
    x = _coordinate_image(1, 32, 31)  # cells of 10 x 10; last rows/columns unused
    tiles = jigsaw_tiles(x, gap=4, jitter=False)
    assert tiles.shape == (1, 9, 3, 6, 6)
    top, left = _corner_and_contiguity(tiles[0])
    assert top.tolist() == [2] * 3 + [12] * 3 + [22] * 3
    assert left.tolist() == [2, 12, 22] * 3
    # the gap between horizontally adjacent tiles equals the requested gap
    assert (left.view(3, 3).diff(dim=1) - 6 == 4).all()
    with pytest.raises(SelfSupError, match="tile_size"):
        jigsaw_tiles(x, tile_size=6, gap=3)


def test_apply_permutation_convention(perms100):
    b = 4
    tiles = torch.arange(9, dtype=torch.float32).view(1, 9, 1, 1, 1).expand(b, 9, 2, 3, 3).clone()
    idx = torch.tensor([0, 17, 42, 99])
    shuffled, labels = apply_permutation(tiles, idx, perms100)
    assert torch.equal(labels, idx)
    for i in range(b):
        for j in range(9):
            assert torch.equal(shuffled[i, j], tiles[i, perms100[idx[i], j]])
    restore = torch.argsort(perms100[idx], dim=1)
    assert torch.equal(torch.stack([shuffled[i, restore[i]] for i in range(b)]), tiles)
    with pytest.raises(SelfSupError, match="perm_index"):
        apply_permutation(tiles, torch.tensor([0, 1, 2, 100]), perms100)


# ----------------------------------------------------------------------------- relative position


@pytest.mark.parametrize("jitter", [0, 3])
def test_relative_position_neighbor_matches_label(jitter):
    p, gap, b = 8, 6, 32
    x = _coordinate_image(b, 48, 50)
    labels_in = torch.arange(b) % 8
    center, neighbor, labels = relative_position_pairs(x, p, gap, jitter, _gen(8), labels=labels_in)
    assert center.shape == neighbor.shape == (b, 3, p, p) and torch.equal(labels, labels_in)
    ct, cl = _corner_and_contiguity(center)
    nt, nl = _corner_and_contiguity(neighbor)
    offsets = torch.tensor(RELATIVE_POSITION_OFFSETS)[labels]
    dr, dc = nt - ct - offsets[:, 0] * (p + gap), nl - cl - offsets[:, 1] * (p + gap)
    assert (dr.abs() <= 2 * jitter).all() and (dc.abs() <= 2 * jitter).all()
    if jitter:
        assert len(set(dr.tolist())) > 1
    # jitter (2 * 3) stays below half the patch spacing (14), so rounding recovers the label
    steps = torch.stack((nt - ct, nl - cl), dim=1).double() / (p + gap)
    assert torch.equal(steps.round().long(), offsets)
    assert torch.equal(center[:, 2], torch.arange(b, dtype=torch.float32).view(b, 1, 1).expand(b, p, p))


def test_relative_position_random_labels_and_size_check():
    x = _coordinate_image(64, 40, 40)
    _, _, labels = relative_position_pairs(x, 8, generator=_gen(9))
    assert labels.min() >= 0 and labels.max() <= 7 and len(set(labels.tolist())) == 8
    with pytest.raises(SelfSupError, match="at least"):
        relative_position_pairs(x, 12, gap=6, jitter=2)


# -------------------------------------------------------------------------------------- counting


def test_counting_tiles_are_exact_slices():
    x = torch.randn(2, 3, 6, 8, generator=_gen(10))
    t = counting_tiles(x)
    assert t.shape == (2, 4, 3, 3, 4)
    for r in range(2):
        for c in range(2):
            assert torch.equal(t[:, r * 2 + c], x[:, :, r * 3 : (r + 1) * 3, c * 4 : (c + 1) * 4])
    assert torch.allclose(t.sum(dim=(1, 3, 4)), x.sum(dim=(2, 3)))
    with pytest.raises(SelfSupError, match="divisible"):
        counting_tiles(torch.zeros(1, 3, 5, 4))


def test_random_downsample_methods():
    x = torch.rand(16, 3, 12, 12, generator=_gen(11))
    candidates = {
        "bilinear": torch.nn.functional.interpolate(x, size=(6, 4), mode="bilinear", align_corners=False),
        "bicubic": torch.nn.functional.interpolate(x, size=(6, 4), mode="bicubic", align_corners=False),
        "area": torch.nn.functional.avg_pool2d(x, kernel_size=(2, 3)),
        "nearest": x[:, :, 1::2, 1::3],
    }
    seen = set()
    for seed in range(12):
        out = random_downsample(x, (6, 4), _gen(seed))
        assert out.shape == (16, 3, 6, 4)
        match = [m for m, ref in candidates.items() if torch.allclose(out, ref, atol=1e-6)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == set(candidates)
    per = random_downsample(x, (6, 4), _gen(0), per_sample=True)
    used = set()
    for i in range(16):
        match = [m for m, ref in candidates.items() if torch.allclose(per[i], ref[i], atol=1e-6)]
        assert len(match) == 1
        used.add(match[0])
    assert len(used) > 1
    assert random_downsample(x, 5).shape == (16, 3, 5, 5)


def test_random_grayscale():
    x = torch.rand(64, 3, 4, 4, generator=_gen(12))
    assert torch.equal(random_grayscale(x, 0.0, _gen(0)), x)
    gray = random_grayscale(x, 1.0, _gen(0))
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(gray, luma[:, None].expand_as(x), atol=1e-6)
    mixed = random_grayscale(x, 0.5, _gen(0))
    is_gray = (mixed[:, 0] == mixed[:, 1]).all(dim=(1, 2))
    assert 10 < int(is_gray.sum()) < 54
    assert torch.equal(mixed[~is_gray], x[~is_gray])


# ------------------------------------------------------------------------------------ inpainting


def test_central_mask_exact_square():
    m = central_mask(2, 8, 8)
    assert m.shape == (2, 1, 8, 8) and m.dtype == torch.bool
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:6, 2:6] = True
    assert torch.equal(m[0, 0], expected) and torch.equal(m[1, 0], expected)
    big = central_mask(1, 128, 128)
    assert big.sum() == 64 * 64 and big[0, 0, 32:96, 32:96].all()


def test_random_region_masks():
    blocks = random_region_mask(16, 32, 32, _gen(13), mode="blocks", fraction=0.25)
    area = blocks.float().mean(dim=(1, 2, 3))
    assert blocks.shape == (16, 1, 32, 32) and blocks.dtype == torch.bool
    assert (area <= 0.25).all() and (area > 0.05).all()
    assert torch.equal(blocks, random_region_mask(16, 32, 32, _gen(13), mode="blocks"))
    blobs = random_region_mask(4, 30, 20, _gen(14), mode="blobs", fraction=0.3)
    assert (blobs.sum(dim=(1, 2, 3)) == 180).all()
    assert not torch.equal(blobs[0], blobs[1])
    with pytest.raises(SelfSupError, match="mode"):
        random_region_mask(1, 8, 8, mode="circle")


def test_apply_mask_fills_only_removed_pixels():
    x = torch.randn(3, 3, 10, 10, generator=_gen(15))
    mask = random_region_mask(3, 10, 10, _gen(16), mode="blobs")
    mean = [0.485, 0.456, 0.406]
    out = apply_mask(x, mask, mean)
    keep = ~mask.expand_as(x)
    assert torch.equal(out[keep], x[keep])
    filled = out.permute(1, 0, 2, 3)[:, mask[:, 0]]
    assert torch.equal(filled, torch.tensor(mean).view(3, 1).expand_as(filled))
    with pytest.raises(SelfSupError, match="mask"):
        apply_mask(x, mask.float(), 0.0)
