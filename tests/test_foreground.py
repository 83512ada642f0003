"""Tests for the unsupervised foreground masks and ReLICv2's background removal."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from selfsup.data import foreground as fg_module
from selfsup.data.foreground import (
    FILLS,
    METHODS,
    ForegroundMasks,
    clean_mask,
    estimate_foreground,
    remove_background,
    saliency_map,
)
from selfsup.errors import SelfSupError


@pytest.fixture(autouse=True)
def _one_thread():
    # The estimator runs thousands of tiny ops (row-by-row raster passes); on a shared two-core
    # machine, intra-op threads only add synchronisation stalls to each of them.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# synthetic images with a known foreground

SHAPES = ("disk", "square", "ellipse", "triangle")
BACKGROUNDS = ("noise", "stripes", "gradient", "regions")


def _shape_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A filled shape covering 10-40% of the image, fully inside it with a 2 pixel margin."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    for _ in range(10_000):
        frac = rng.uniform(0.10, 0.40)
        area = frac * size * size
        cy, cx = rng.uniform(0, size, 2)
        theta = rng.uniform(0, math.pi)
        c, s = math.cos(theta), math.sin(theta)
        u = (xx - cx) * c + (yy - cy) * s
        v = -(xx - cx) * s + (yy - cy) * c
        if kind == "disk":
            r = math.sqrt(area / math.pi)
            m = u**2 + v**2 <= r**2
        elif kind == "square":
            half = math.sqrt(area) / 2
            m = (np.abs(u) <= half) & (np.abs(v) <= half)
        elif kind == "ellipse":
            ratio = rng.uniform(0.45, 0.9)
            a = math.sqrt(area / (math.pi * ratio))
            m = (u / a) ** 2 + (v / (a * ratio)) ** 2 <= 1
        else:
            # equilateral triangle of the requested area: circumradius from area = 3*sqrt(3)/4 R^2
            big_r = math.sqrt(4 * area / (3 * math.sqrt(3)))
            m = np.ones_like(u, dtype=bool)
            for k in range(3):
                phi = theta + 2 * math.pi * k / 3
                m &= u * math.cos(phi) + v * math.sin(phi) <= big_r / 2
        inner = m[2:-2, 2:-2].sum() == m.sum()
        got = m.mean()
        if inner and 0.10 <= got <= 0.40:
            return m
    raise AssertionError("could not place a shape")


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def _far_colour(rng: np.random.Generator, avoid: list[np.ndarray], min_dist: float = 90.0) -> np.ndarray:
    """An object colour that differs visibly from every background colour (and their blends)."""
    for _ in range(10_000):
        c = _colour(rng)
        ok = True
        for i, a in enumerate(avoid):
            if np.linalg.norm(c - a) < min_dist:
                ok = False
            for b in avoid[i + 1 :]:
                # distance to the segment a-b, so gradients and blurred stripes do not match it
                t = np.clip(np.dot(c - a, b - a) / max(np.dot(b - a, b - a), 1e-9), 0, 1)
                if np.linalg.norm(c - (a + t * (b - a))) < min_dist:
                    ok = False
        if ok:
            return c
    raise AssertionError("could not pick a contrasting colour")


def _background(kind: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if kind == "noise":
        base = _colour(rng)
        sigma = rng.uniform(10, 30)
        img = base[:, None, None] + rng.normal(0, sigma, (3, size, size))
        return img, [base]
    if kind == "stripes":
        c1, c2 = _colour(rng), _colour(rng)
        period = rng.uniform(3, 8)
        theta = rng.uniform(0, math.pi)
        phase = (xx * math.cos(theta) + yy * math.sin(theta)) / period
        on = np.sin(2 * math.pi * phase) > 0
        img = np.where(on[None], c1[:, None, None], c2[:, None, None])
        return img + rng.normal(0, 6, (3, size, size)), [c1, c2]
    if kind == "gradient":
        c1, c2 = _colour(rng), _colour(rng)
        theta = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(theta) + yy * math.sin(theta)
        t = (t - t.min()) / (t.max() - t.min())
        img = c1[:, None, None] * (1 - t[None]) + c2[:, None, None] * t[None]
        return img + rng.normal(0, 6, (3, size, size)), [c1, c2]
    # a few flat colour regions (Voronoi cells of seeds on the border) with mild noise
    k = int(rng.integers(2, 5))
    colours = [_colour(rng) for _ in range(k)]
    pos = rng.uniform(0, size, (k, 2))
    side = rng.integers(0, 4, k)
    pos[side == 0, 0] = 0
    pos[side == 1, 0] = size - 1
    pos[side == 2, 1] = 0
    pos[side == 3, 1] = size - 1
    d = (yy[None] - pos[:, 0, None, None]) ** 2 + (xx[None] - pos[:, 1, None, None]) ** 2
    owner = d.argmin(0)
    img = np.stack(colours)[owner].transpose(2, 0, 1)
    return img + rng.normal(0, 6, (3, size, size)), colours


def make_synthetic(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uint8 images (n, 3, size, size) and their true bool foreground masks (n, size, size)."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for i in range(n):
        bg, colours = _background(BACKGROUNDS[i % len(BACKGROUNDS)], size, rng)
        m = _shape_mask(SHAPES[(i // len(BACKGROUNDS)) % len(SHAPES)], size, rng)
        obj = _far_colour(rng, colours)
        if rng.uniform() < 0.3:
            # a two-tone checker texture on the object
            yy, xx = np.mgrid[0:size, 0:size]
            check = ((yy // 2 + xx // 2) % 2).astype(np.float64)
            fg = obj[:, None, None] + (check[None] - 0.5) * 30
        else:
            fg = obj[:, None, None] + rng.normal(0, 6, (3, size, size))
        img = np.where(m[None], fg, bg)
        images.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
        masks.append(m)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks))


def iou(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    inter = (pred & true).flatten(1).sum(1).double()
    union = (pred | true).flatten(1).sum(1).double()
    return inter / union.clamp_min(1)


def test_synthetic_set_is_what_it_claims():
    images, masks = make_synthetic(16, 32, seed=5)
    assert images.dtype == torch.uint8 and images.shape == (16, 3, 32, 32)
    frac = masks.flatten(1).float().mean(1)
    assert bool(((frac >= 0.10) & (frac <= 0.40)).all())
    # the object stays inside the frame, so the background touches every side
    assert not masks[:, :2].any() and not masks[:, -2:].any()
    assert not masks[:, :, :2].any() and not masks[:, :, -2:].any()


# Measured with the defaults ("mbd+", Otsu, clean-up): mean IoU 0.958 (worst 0.80) at 32x32 and
# 0.970 (worst 0.85) at 64x64. The issue asks for a mean above 0.7; the stricter bounds guard
# against regressions.
@pytest.mark.parametrize(("n", "size", "seed"), [(32, 32, 0), (24, 64, 1)])
def test_estimate_foreground_recovers_synthetic_objects(n, size, seed):
    images, truth = make_synthetic(n, size, seed)
    pred = estimate_foreground(images)
    scores = iou(pred, truth)
    assert scores.mean() > 0.7
    assert scores.mean() > 0.9
    assert scores.min() > 0.5


def test_larger_images_go_through_the_working_resolution():
    images, truth = make_synthetic(4, 96, seed=2)
    pred = estimate_foreground(images, work_size=48)
    assert pred.shape == truth.shape
    assert iou(pred, truth).mean() > 0.7


def test_output_shape_dtype_device_and_non_square():
    images = torch.randint(0, 256, (3, 3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mask = estimate_foreground(images)
    assert mask.dtype == torch.bool
    assert mask.shape == (3, 40, 56)
    assert mask.device == images.device
    assert estimate_foreground(images[:0]).shape == (0, 40, 56)


def test_batched_equals_per_image():
    images, _ = make_synthetic(6, 32, seed=3)
    batched = estimate_foreground(images)
    single = torch.cat([estimate_foreground(images[i : i + 1]) for i in range(len(images))])
    assert torch.equal(batched, single)


def test_border_distance_chunking_does_not_change_the_result():
    lab = torch.rand(3, 3, 20, 17, generator=torch.Generator().manual_seed(0)) * 50
    whole = fg_module._border_knn_distance(lab, 0.05)
    # tiny chunks force splitting by image and, below one image, by pixels
    assert torch.allclose(whole, fg_module._border_knn_distance(lab, 0.05, chunk_elements=500))
    assert torch.allclose(whole, fg_module._border_knn_distance(lab, 0.05, chunk_elements=10))


def test_clean_mask_fills_holes_and_drops_specks():
    mask = torch.zeros(1, 20, 20, dtype=torch.bool)
    mask[0, 4:16, 4:16] = True
    mask[0, 8:11, 8:11] = False  # a hole
    mask[0, 1, 18] = True  # a speck
    cleaned = clean_mask(mask)
    expected = torch.zeros_like(mask)
    expected[0, 4:16, 4:16] = True
    assert torch.equal(cleaned, expected)
    with pytest.raises(SelfSupError, match="bool"):
        clean_mask(mask.float())


def test_flat_image_is_all_foreground():
    images = torch.full((2, 3, 24, 24), 90, dtype=torch.uint8)
    assert estimate_foreground(images).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("threshold", ["otsu", "adaptive", 0.5])
def test_every_method_and_threshold_runs(method, threshold):
    images, _ = make_synthetic(2, 32, seed=4)
    mask = estimate_foreground(images, method=method, threshold=threshold)
    assert mask.shape == (2, 32, 32) and mask.dtype == torch.bool
    sal = saliency_map(images, method)
    assert sal.shape == (2, 32, 32)
    assert float(sal.min()) >= 0.0 and float(sal.max()) <= 1.0


@pytest.mark.parametrize(
    ("images", "kwargs", "needle"),
    [
        (torch.rand(2, 3, 16, 16), {}, "uint8"),
        (torch.zeros(2, 1, 16, 16, dtype=torch.uint8), {}, "(B, 3, H, W)"),
        (torch.zeros(3, 16, 16, dtype=torch.uint8), {}, "(B, 3, H, W)"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), {"method": "deep"}, "method"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), {"threshold": "median"}, "threshold"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), {"threshold": 1.5}, "threshold"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), {"work_size": 4}, "work_size"),
    ],
)
def test_estimate_foreground_rejects_bad_input(images, kwargs, needle):
    with pytest.raises(SelfSupError, match=re.escape(needle)):
        estimate_foreground(images, **kwargs)


# ---------------------------------------------------------------------------------------------
# remove_background


def _batch(b: int = 8, h: int = 12, w: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, h, w, generator=g)
    masks = torch.rand(b, h, w, generator=g) < 0.4
    return images, masks


def test_constant_fill_with_p1_replaces_exactly_the_background():
    images, masks = _batch()
    out = remove_background(images, masks, p=1.0, fill="constant", value=0.25)
    bg = ~masks.unsqueeze(1).expand_as(images)
    assert torch.all(out[bg] == 0.25)
    assert torch.equal(out[~bg], images[~bg])


def test_constant_fill_per_channel():
    images, masks = _batch()
    out = remove_background(images, masks, p=1.0, value=(0.1, 0.2, 0.3))
    for c, v in enumerate((0.1, 0.2, 0.3)):
        assert torch.allclose(out[:, c][~masks], torch.tensor(v))


def test_noise_fill_with_p1():
    images, masks = _batch()
    out = remove_background(images, masks, p=1.0, fill="noise", generator=torch.Generator().manual_seed(1))
    bg = ~masks.unsqueeze(1).expand_as(images)
    assert torch.equal(out[~bg], images[~bg])
    assert not torch.equal(out[bg], images[bg])
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("fill", FILLS)
def test_p0_is_identity_and_input_untouched(fill):
    images, masks = _batch()
    before = images.clone()
    out = remove_background(images, masks, p=0.0, fill=fill, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, images)
    out = remove_background(images, masks, p=1.0, fill=fill, generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, before)


def test_other_fill_uses_another_image_of_the_batch():
    b = 7
    # each image is a distinct flat value, so a background pixel names the image it came from
    images = (torch.arange(b, dtype=torch.float32) / 10).view(b, 1, 1, 1).expand(b, 3, 6, 6).clone()
    masks = torch.zeros(b, 6, 6, dtype=torch.bool)
    masks[:, 2:4, 2:4] = True
    out = remove_background(images, masks, p=1.0, fill="other", generator=torch.Generator().manual_seed(3))
    sources = []
    for i in range(b):
        bg = out[i][:, ~masks[i]]
        assert torch.all(bg == bg.flatten()[0])
        src = round(float(bg.flatten()[0]) * 10)
        assert src != i
        sources.append(src)
        assert torch.all(out[i][:, masks[i]] == images[i, 0, 0, 0])
    assert sorted(sources) == list(range(b))


def test_other_fill_with_a_single_image_is_a_no_op():
    images, masks = _batch(b=1)
    assert torch.equal(remove_background(images, masks, p=1.0, fill="other"), images)


@pytest.mark.parametrize("fill", FILLS)
def test_deterministic_given_generator(fill):
    images, masks = _batch(b=16)
    a = remove_background(images, masks, p=0.5, fill=fill, generator=torch.Generator().manual_seed(7))
    b = remove_background(images, masks, p=0.5, fill=fill, generator=torch.Generator().manual_seed(7))
    c = remove_background(images, masks, p=0.5, fill=fill, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_fraction_of_changed_samples_matches_p():
    b = 4000
    images = torch.rand(b, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(b, 4, 4, dtype=torch.bool)
    masks[:, 1:3, 1:3] = True
    out = remove_background(
        images, masks, p=0.1, fill="constant", value=-1.0, generator=torch.Generator().manual_seed(1)
    )
    changed = (out != images).flatten(1).any(1).float().mean()
    # binomial standard deviation is about 0.005; four of them
    assert abs(float(changed) - 0.1) < 0.02


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_dtype_preserved_and_integer_masks_accepted(dtype):
    images, masks = _batch()
    out = remove_background(images.to(dtype), masks.to(torch.uint8), p=1.0)
    assert out.dtype == dtype
    assert torch.equal(out, remove_background(images.to(dtype), masks, p=1.0))


@given(
    p=st.floats(0.0, 1.0),
    fill=st.sampled_from(FILLS),
    seed=st.integers(0, 2**31 - 1),
)
@settings(max_examples=30, deadline=None)
def test_foreground_is_never_changed(p, fill, seed):
    images, masks = _batch(b=5, h=5, w=7, seed=seed % 1000)
    out = remove_background(images, masks, p=p, fill=fill, generator=torch.Generator().manual_seed(seed))
    fg = masks.unsqueeze(1).expand_as(images)
    assert torch.equal(out[fg], images[fg])
    if p == 0.0:
        assert torch.equal(out, images)


@pytest.mark.parametrize(
    ("images", "masks", "kwargs", "needle"),
    [
        (torch.rand(2, 3, 8, 8), torch.ones(2, 4, 4, dtype=torch.bool), {}, "before cropping"),
        (torch.rand(2, 3, 8, 8), torch.ones(3, 8, 8, dtype=torch.bool), {}, "do not match"),
        (torch.rand(2, 3, 8, 8), torch.ones(2, 8, 8), {}, "bool"),
        (torch.rand(2, 3, 8, 8), torch.ones(2, 1, 8, 8, dtype=torch.bool), {}, "(B, H, W)"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.ones(2, 8, 8, dtype=torch.bool), {}, "x.float() / 255"),
        (torch.rand(2, 3, 8, 8), torch.ones(2, 8, 8, dtype=torch.bool), {"p": 1.5}, "probability"),
        (torch.rand(2, 3, 8, 8), torch.ones(2, 8, 8, dtype=torch.bool), {"fill": "blur"}, "fill"),
        (torch.rand(2, 3, 8, 8), torch.ones(2, 8, 8, dtype=torch.bool), {"value": (0.1, 0.2)}, "per channel"),
    ],
)
def test_remove_background_rejects_bad_input(images, masks, kwargs, needle):
    with pytest.raises(SelfSupError, match=re.escape(needle)):
        remove_background(images, masks, **kwargs)


# ---------------------------------------------------------------------------------------------
# ForegroundMasks


def test_compute_in_chunks_matches_one_batch():
    images, _ = make_synthetic(7, 32, seed=6)
    cache = ForegroundMasks.compute(images, batch_size=3)
    assert isinstance(cache.masks, torch.Tensor)
    assert cache.masks.dtype == torch.bool and cache.shape == (7, 32, 32) and len(cache) == 7
    assert torch.equal(cache.masks, estimate_foreground(images))


def test_save_load_round_trip(tmp_path):
    masks = torch.rand(5, 9, 11, generator=torch.Generator().manual_seed(0)) < 0.5
    path = tmp_path / "masks.npy"
    ForegroundMasks(masks).save(path)
    assert torch.equal(ForegroundMasks.load(path, expected_shape=(5, 9, 11)).masks, masks)
    # the data set's image shape (N, C, H, W) works too
    assert torch.equal(ForegroundMasks.load(str(path), expected_shape=(5, 3, 9, 11)).masks, masks)


def test_load_accepts_uint8_masks(tmp_path):
    arr = np.zeros((3, 4, 4), dtype=np.uint8)
    arr[:, 1:3, 1:3] = 255
    np.save(tmp_path / "m.npy", arr)
    loaded = ForegroundMasks.load(tmp_path / "m.npy", expected_shape=(3, 4, 4))
    assert torch.equal(loaded.masks, torch.from_numpy(arr != 0))


@pytest.mark.parametrize(
    ("array", "expected", "needle"),
    [
        (np.zeros((4, 8, 8), dtype=bool), (5, 8, 8), "data set needs (5, 8, 8)"),
        (np.zeros((5, 8, 9), dtype=bool), (5, 3, 8, 8), "data set needs (5, 8, 8)"),
        (np.zeros((8, 8), dtype=bool), None, "(N, H, W)"),
        (np.zeros((2, 8, 8), dtype=np.float32), None, "dtype float32"),
        (np.full((2, 8, 8), 7, dtype=np.uint8), None, "0/1 or 0/255"),
    ],
)
def test_load_rejects_bad_files(tmp_path, array, expected, needle):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(SelfSupError, match=re.escape(needle)):
        ForegroundMasks.load(path, expected_shape=expected)


def test_load_and_save_path_errors(tmp_path):
    with pytest.raises(SelfSupError, match="does not exist"):
        ForegroundMasks.load(tmp_path / "missing.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(SelfSupError, match="could not read"):
        ForegroundMasks.load(tmp_path / "junk.npy")
    with pytest.raises(SelfSupError, match=".npy"):
        ForegroundMasks(torch.zeros(1, 2, 2, dtype=torch.bool)).save(tmp_path / "masks.pt")


def test_lookup_returns_the_right_rows():
    masks = torch.rand(10, 6, 5, generator=torch.Generator().manual_seed(0)) < 0.5
    cache = ForegroundMasks(masks)
    idx = torch.tensor([7, 0, 7, 3], dtype=torch.long)
    rows = cache.lookup(idx, device="cpu")
    assert rows.shape == (4, 6, 5) and rows.dtype == torch.bool
    for k, i in enumerate(idx.tolist()):
        assert torch.equal(rows[k], masks[i])
    assert torch.equal(cache[idx], rows)
    assert torch.equal(cache.lookup([1, 2]), masks[[1, 2]])


@pytest.mark.parametrize(
    ("indices", "needle"),
    [
        (torch.tensor([0, 10]), "[0, 10)"),
        (torch.tensor([-1]), "[0, 10)"),
        (torch.tensor([0.0, 1.0]), "integer"),
        (torch.tensor([[0, 1]]), "1-D"),
    ],
)
def test_lookup_rejects_bad_indices(indices, needle):
    cache = ForegroundMasks(torch.zeros(10, 2, 2, dtype=torch.bool))
    with pytest.raises(SelfSupError, match=re.escape(needle)):
        cache.lookup(indices)


def test_constructor_and_compute_validate():
    with pytest.raises(SelfSupError, match="torch.bool"):
        ForegroundMasks(torch.zeros(2, 3, 3, dtype=torch.uint8))
    with pytest.raises(SelfSupError, match="(N, H, W)"):
        ForegroundMasks(torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(SelfSupError, match="batch_size"):
        ForegroundMasks.compute(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), batch_size=0)
