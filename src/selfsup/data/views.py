"""View recipes: how many views of which size and strength a method wants.

A recipe turns one uint8 batch into a list of normalized float view batches, on the batch's
device. Methods never see uint8 images or augmentation code; they receive ``views`` in the order
the recipe lists them (global views first for multi-crop).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from selfsup.data import augment as A
from selfsup.errors import SelfSupError


@dataclass(frozen=True)
class ViewSpec:
    """One kind of view. ``jitter_strength`` is SimCLR's colour strength s: brightness,
    contrast and saturation 0.8 s, hue 0.2 s."""

    size: int = 32
    scale: tuple[float, float] = (0.08, 1.0)
    flip_p: float = 0.5
    jitter_strength: float = 0.5
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        x = A.random_resized_crop(x, self.size, g, self.scale, flip_p=self.flip_p)
        if self.jitter_p > 0 and self.jitter_strength > 0:
            s = self.jitter_strength
            x = A.color_jitter(x, g, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=self.jitter_p)
        if self.gray_p > 0:
            x = A.random_grayscale(x, g, self.gray_p)
        if self.blur_p > 0:
            x = A.gaussian_blur(x, g, self.blur_p)
        if self.solarize_p > 0:
            x = A.solarize(x, g, self.solarize_p)
        return x


@dataclass
class ViewRecipe:
    """A list of view specs (one entry per view) plus the normalization applied to every view.

    ``pre`` is an optional step on the full-size float batch before any view is cut (ReLICv2's
    background removal uses it); it receives the batch, the data set indices and the generator.
    """

    specs: list[ViewSpec]
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    name: str = ""
    pre: Callable[[Tensor, Tensor, torch.Generator], Tensor] | None = field(default=None, repr=False)

    def __call__(self, images: Tensor, g: torch.Generator, index: Tensor | None = None) -> list[Tensor]:
        x = A.to_float(images)
        if self.pre is not None:
            x = self.pre(x, index, g)
        return [A.normalize(spec(x, g), self.mean, self.std) for spec in self.specs]

    @property
    def num_views(self) -> int:
        return len(self.specs)

    def check_image_size(self, image_size: tuple[int, int]) -> None:
        big = max(s.size for s in self.specs)
        if big > min(image_size):
            raise SelfSupError(
                f"views of {big}x{big} px requested from images of {image_size[0]}x{image_size[1]} px; "
                f"set views.size <= {min(image_size)} or data.image_size >= {big}"
            )


def simclr(size: int = 32, strength: float = 0.5, blur_p: float | None = None,
           scale_min: float = 0.08, num_views: int = 2, **kw) -> list[ViewSpec]:
    """SimCLR's two symmetric views (arXiv 2002.05709, App. A): crop (0.08-1), flip, colour
    jitter (p=0.8, strength s), grayscale (p=0.2), blur (p=0.5, ImageNet only). For CIFAR the
    paper uses s=0.5 and no blur; blur defaults to on only at sizes of 64 px and up.
    ``num_views`` makes that many such views (1 for InstDisc's single augmented image)."""
    if num_views < 1:
        raise SelfSupError(f"num_views must be at least 1, got {num_views}")
    if blur_p is None:
        blur_p = 0.5 if size >= 64 else 0.0
    v = ViewSpec(size=size, scale=(scale_min, 1.0), jitter_strength=strength, blur_p=blur_p, **kw)
    return [v] * num_views


def byol(size: int = 32, strength: float = 1.0, scale_min: float = 0.08, **kw) -> list[ViewSpec]:
    """BYOL's asymmetric pair (arXiv 2006.07733, Table 6): colour jitter (0.4, 0.4, 0.2, 0.1) with
    p=0.8, grayscale p=0.2; blur p=1.0 / 0.1 and solarize p=0.0 / 0.2 on the first / second view.

    BYOL's jitter is (0.4, 0.4, 0.2, 0.1), which is not exactly SimCLR's 0.8s pattern; strength
    0.5 gives (0.4, 0.4, 0.4, 0.1), the saturation difference being the only deviation.
    """
    base = ViewSpec(size=size, scale=(scale_min, 1.0), jitter_strength=strength * 0.5, **kw)
    return [replace(base, blur_p=1.0, solarize_p=0.0), replace(base, blur_p=0.1, solarize_p=0.2)]


def multicrop(size: int = 32, local_size: int = 16, num_local: int = 4, strength: float = 0.5,
              global_scale: tuple[float, float] = (0.14, 1.0), local_scale: tuple[float, float] = (0.05, 0.14),
              blur_p: float = 0.0, **kw) -> list[ViewSpec]:
    """SwAV's multi-crop (arXiv 2006.09882): 2 global views and ``num_local`` small ones.

    The paper uses 2x224 (scale 0.14-1) + 6x96 (scale 0.05-0.14) on ImageNet; at 32 px we default
    to 2x32 + 4x16 with the same scale ranges.
    """
    g = ViewSpec(size=size, scale=global_scale, jitter_strength=strength, blur_p=blur_p, **kw)
    loc = ViewSpec(size=local_size, scale=local_scale, jitter_strength=strength, blur_p=blur_p, **kw)
    return [g, g] + [loc] * num_local


def single(size: int = 32, **kw) -> list[ViewSpec]:
    """One lightly augmented view (crop 0.5-1 and flip, no colour changes), for pretext tasks."""
    return [ViewSpec(size=size, scale=(0.5, 1.0), jitter_p=0.0, gray_p=0.0, **kw)]


RECIPES: dict[str, Callable[..., list[ViewSpec]]] = {
    "simclr": simclr,
    "byol": byol,
    "multicrop": multicrop,
    "single": single,
}


def build_recipe(name: str, mean, std, **options) -> ViewRecipe:
    if name not in RECIPES:
        raise SelfSupError(f"unknown view recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    try:
        specs = RECIPES[name](**options)
    except TypeError as e:
        raise SelfSupError(f"view recipe {name!r}: {e}") from None
    return ViewRecipe(specs, tuple(mean), tuple(std), name)
