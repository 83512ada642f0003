import colorsys

import pytest
import torch

from selfsup.data import augment as A
from selfsup.data.views import ViewRecipe, ViewSpec, build_recipe
from selfsup.errors import SelfSupError


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_full_crop_without_flip_is_identity_and_flip_mirrors():
    x = torch.rand(3, 3, 16, 16)
    same = A.random_resized_crop(x, 16, gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    assert torch.allclose(same, x, atol=1e-5)
    flipped = A.random_resized_crop(x, 16, gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)


def test_crop_boxes_are_per_sample_and_inside_the_image():
    # A constant image per sample: any crop of it must keep the constant (no padding leaks in).
    x = torch.linspace(0, 1, 8).view(8, 1, 1, 1).expand(8, 3, 20, 20).contiguous()
    out = A.random_resized_crop(x, 12, gen(), scale=(0.08, 1.0))
    assert out.shape == (8, 3, 12, 12)
    assert torch.allclose(out, x[:, :, :12, :12], atol=1e-5)
    grad = torch.arange(32.0).view(1, 1, 1, 32).expand(16, 3, 32, 32) / 31
    crops = A.random_resized_crop(grad, 8, gen(1), scale=(0.1, 0.3))
    assert len({round(v, 3) for v in crops[:, 0, 0, 0].tolist()}) > 8  # different boxes per image


def test_hsv_round_trip_and_hue_matches_colorsys():
    x = torch.rand(4, 3, 5, 5)
    assert torch.allclose(A._hsv_to_rgb(A._rgb_to_hsv(x)), x, atol=1e-5)
    hsv = A._rgb_to_hsv(x)
    r, g, b = x[1, :, 2, 3].tolist()
    assert hsv[1, :, 2, 3].tolist() == pytest.approx(list(colorsys.rgb_to_hsv(r, g, b)), abs=1e-5)


def test_color_jitter_probability_zero_is_identity_and_output_in_range():
    x = torch.rand(16, 3, 8, 8)
    assert torch.equal(A.color_jitter(x, gen(), 0.4, 0.4, 0.4, 0.1, p=0.0), x)
    y = A.color_jitter(x, gen(), 0.8, 0.8, 0.8, 0.2, p=1.0)
    assert y.min() >= 0 and y.max() <= 1 and not torch.allclose(y, x)


def test_saturation_zero_equals_grayscale():
    x = torch.rand(4, 3, 8, 8)
    # saturation factor range [0, 2] with brightness/contrast/hue off; compare with explicit blend.
    g = gen(3)
    y = A.color_jitter(x, g, 0.0, 0.0, 1.0, 0.0, p=1.0)
    g = gen(3)
    torch.rand(4, generator=g)  # apply coin
    torch.rand(4, generator=g), torch.rand(4, generator=g)  # brightness, contrast factors
    fs = (torch.rand(4, generator=g) * 2).view(4, 1, 1, 1)
    assert torch.allclose(y, (fs * x + (1 - fs) * A.grayscale(x)).clamp(0, 1), atol=1e-6)


def test_grayscale_blur_solarize_semantics():
    x = torch.rand(6, 3, 16, 16)
    gray = A.random_grayscale(x, gen(), p=1.0)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    const = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(A.gaussian_blur(const, gen(), p=1.0), const, atol=1e-6)
    blurred = A.gaussian_blur(x, gen(), p=1.0, sigma=(2.0, 2.0))
    assert blurred.std() < x.std()
    sol = A.solarize(x, gen(), p=1.0)
    assert torch.allclose(sol, torch.where(x >= 0.5, 1 - x, x))


def test_views_are_deterministic_for_a_seed_and_differ_between_views():
    images = (torch.rand(8, 3, 32, 32) * 255).to(torch.uint8)
    recipe = build_recipe("simclr", [0.5] * 3, [0.25] * 3, size=32)
    a = recipe(images, gen(5))
    b = recipe(images, gen(5))
    assert len(a) == 2 and all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.allclose(a[0], a[1])
    multi = build_recipe("multicrop", [0.5] * 3, [0.25] * 3, size=32, local_size=16, num_local=4)(images, gen())
    assert [v.shape[-1] for v in multi] == [32, 32, 16, 16, 16, 16]


def test_byol_recipe_is_asymmetric():
    v1, v2 = build_recipe("byol", [0.5] * 3, [0.25] * 3).specs
    assert (v1.blur_p, v1.solarize_p, v2.blur_p, v2.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    # BYOL's pair at every size unless the options say otherwise: one value for both views, or a pair.
    small = build_recipe("byol", [0.5] * 3, [0.25] * 3, size=16).specs
    assert [(s.blur_p, s.solarize_p) for s in small] == [(1.0, 0.0), (0.1, 0.2)]
    off = build_recipe("byol", [0.5] * 3, [0.25] * 3, blur_p=0.0).specs
    assert [(s.blur_p, s.solarize_p) for s in off] == [(0.0, 0.0), (0.0, 0.2)]
    pair = build_recipe("byol", [0.5] * 3, [0.25] * 3, blur_p=[0.5, 0.2], solarize_p=0.1).specs
    assert [(s.blur_p, s.solarize_p) for s in pair] == [(0.5, 0.1), (0.2, 0.1)]
    with pytest.raises(SelfSupError, match="byol blur_p"):
        build_recipe("byol", [0.5] * 3, [0.25] * 3, blur_p=[1.0, 0.1, 0.0])


def test_single_recipe_has_no_colour_changes_unless_gray_p_asks_for_grayscale():
    images = (torch.rand(64, 3, 32, 32, generator=gen(3)) * 255).to(torch.uint8)
    mean, std = [0.5] * 3, [0.25] * 3

    def grey_share(recipe):
        (v,) = recipe(images, gen(1))
        return (v.std(1) < 1e-6).flatten(1).all(1).float().mean().item()

    assert build_recipe("single", mean, std).specs[0].jitter_p == 0.0
    assert grey_share(build_recipe("single", mean, std)) == 0.0
    assert grey_share(build_recipe("single", mean, std, gray_p=1.0)) == 1.0
    assert 0.1 < grey_share(build_recipe("single", mean, std, gray_p=0.3)) < 0.5


def test_recipe_errors_are_clear():
    with pytest.raises(SelfSupError, match="unknown view recipe"):
        build_recipe("nope", [0.5] * 3, [0.25] * 3)
    with pytest.raises(SelfSupError, match="views.size"):
        ViewRecipe([ViewSpec(size=64)]).check_image_size((32, 32))


def test_sharded_views_equal_the_slices_of_the_global_batch(monkeypatch):
    images = (torch.rand(8, 3, 32, 32, generator=gen(9)) * 255).to(torch.uint8)
    recipe = build_recipe("simclr", [0.5] * 3, [0.25] * 3, size=24)
    whole = recipe(images, gen(4))
    for rank in range(2):
        monkeypatch.setattr("selfsup.dist.rank", lambda r=rank: r)
        monkeypatch.setattr("selfsup.dist.world_size", lambda: 2)
        part = recipe(images[rank * 4 : (rank + 1) * 4], gen(4))
        for w, p in zip(whole, part):
            assert torch.allclose(w[rank * 4 : (rank + 1) * 4], p, atol=1e-6)
