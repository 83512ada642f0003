"""View recipes: how many views of which size and strength a method wants.

A recipe turns one uint8 batch into a list of normalized float view batches, on the batch's
device. Methods never see uint8 images or augmentation code; they receive ``views`` in the order
the recipe lists them (global views first for multi-crop).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from selfsup import dist
from selfsup.data import augment as A
from selfsup.data.color import gray_of_lightness
from selfsup.data.datasets import ArrayDataset, ImageFolder
from selfsup.data.foreground import FILLS, ForegroundMasks, remove_background
from selfsup.errors import SelfSupError


@dataclass(frozen=True)
class ViewSpec:
    """One kind of view. ``jitter_strength`` is SimCLR's colour strength s: brightness,
    contrast and saturation 0.8 s, hue 0.2 s. ``split_lightness`` makes the view two tensors of
    the same crop (see :class:`ViewRecipe`)."""

    size: int = 32
    scale: tuple[float, float] = (0.08, 1.0)
    flip_p: float = 0.5
    jitter_strength: float = 0.5
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0
    split_lightness: bool = False

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
    With ``pre_each_view`` it runs once per view, with fresh random draws, instead of once per
    batch (ReLICv2 decides per crop whether to remove the background).
    A spec with ``split_lightness`` gives two tensors: the grey image of the same CIE L,
    normalized, then the colour view itself as unnormalized sRGB in [0, 1] (colorization).
    """

    specs: list[ViewSpec]
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    name: str = ""
    pre: Callable[[Tensor, Tensor, torch.Generator], Tensor] | None = field(default=None, repr=False)
    pre_each_view: bool = False

    def __call__(self, images: Tensor, g: torch.Generator, index: Tensor | None = None) -> list[Tensor]:
        """Views of this process's shard; ``g`` must be seeded alike on every process."""
        x = A.to_float(images)
        with A.sharded(dist.rank(), dist.world_size()):
            if self.pre is not None and not self.pre_each_view:
                x = self.pre(x, index, g)
            views = []
            for spec in self.specs:
                source = self.pre(x, index, g) if self.pre is not None and self.pre_each_view else x
                v = spec(source, g)
                if spec.split_lightness:
                    views += [A.normalize(gray_of_lightness(v), self.mean, self.std), v]
                else:
                    views.append(A.normalize(v, self.mean, self.std))
        return views

    @property
    def normalized(self) -> list[bool]:
        """Per output view: normalized (True), or sRGB in [0, 1] (the colour half of a split view)."""
        return [flag for s in self.specs for flag in ((True, False) if s.split_lightness else (True,))]

    @property
    def num_views(self) -> int:
        return len(self.normalized)

    def check_image_size(self, image_size: tuple[int, int]) -> None:
        big = max(s.size for s in self.specs)
        if big > min(image_size):
            raise SelfSupError(
                f"views of {big}x{big} px requested from images of {image_size[0]}x{image_size[1]} px; "
                f"set views.size <= {min(image_size)} or data.image_size >= {big}, or leave views.size unset "
                "so that the views follow the images' size"
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


def byol(size: int = 32, strength: float = 1.0, scale_min: float = 0.08,
         blur_p: float | Sequence[float] = (1.0, 0.1), solarize_p: float | Sequence[float] = (0.0, 0.2),
         **kw) -> list[ViewSpec]:
    """BYOL's asymmetric pair (arXiv 2006.07733, Table 6): colour jitter (0.4, 0.4, 0.2, 0.1) with
    p=0.8, grayscale p=0.2; blur p=1.0 / 0.1 and solarize p=0.0 / 0.2 on the first / second view.

    BYOL's jitter is (0.4, 0.4, 0.2, 0.1), which is not exactly SimCLR's 0.8s pattern; strength
    0.5 gives (0.4, 0.4, 0.4, 0.1), the saturation difference being the only deviation.

    ``blur_p`` and ``solarize_p`` are one probability for both views or two, one per view; the
    defaults are BYOL's at every size (the paper's views are 224 px). Unlike ``simclr``, the blur
    does not switch itself off below 64 px: a recipe that wants no blur on small images sets
    ``blur_p: 0.0`` (MoCo v3's CIFAR recipe does; BYOL's keeps the pair).
    """
    blur, solar = _per_global_view(blur_p, "blur_p", "byol"), _per_global_view(solarize_p, "solarize_p", "byol")
    base = ViewSpec(size=size, scale=(scale_min, 1.0), jitter_strength=strength * 0.5, **kw)
    return [replace(base, blur_p=blur[0], solarize_p=solar[0]), replace(base, blur_p=blur[1], solarize_p=solar[1])]


def multicrop(size: int = 32, local_size: int = 16, num_local: int = 4, strength: float = 0.5,
              global_scale: tuple[float, float] = (0.14, 1.0), local_scale: tuple[float, float] = (0.05, 0.14),
              blur_p: float | Sequence[float] = 0.0, solarize_p: float | Sequence[float] = 0.0,
              local_blur_p: float | None = None, local_solarize_p: float | None = None, **kw) -> list[ViewSpec]:
    """SwAV's multi-crop (arXiv 2006.09882): 2 global views and ``num_local`` small ones.

    The paper uses 2x224 (scale 0.14-1) + 6x96 (scale 0.05-0.14) on ImageNet; at 32 px we default
    to 2x32 + 4x16 with the same scale ranges. ``blur_p`` and ``solarize_p`` are one probability
    for every view, or two, one per global view (BYOL's asymmetric pair: blur 1.0 / 0.1, solarize
    0.0 / 0.2); the local views take ``local_blur_p`` / ``local_solarize_p``, by default the single
    value given, or 0 when a pair was given.
    """
    blur, solar = _per_global_view(blur_p, "blur_p"), _per_global_view(solarize_p, "solarize_p")
    if local_blur_p is None:
        local_blur_p = blur[0] if isinstance(blur_p, (int, float)) else 0.0
    if local_solarize_p is None:
        local_solarize_p = solar[0] if isinstance(solarize_p, (int, float)) else 0.0
    base = ViewSpec(size=size, scale=global_scale, jitter_strength=strength, **kw)
    loc = ViewSpec(size=local_size, scale=local_scale, jitter_strength=strength, blur_p=local_blur_p,
                   solarize_p=local_solarize_p, **kw)
    return [replace(base, blur_p=b, solarize_p=s) for b, s in zip(blur, solar)] + [loc] * num_local


def _per_global_view(p: float | Sequence[float], name: str, recipe: str = "multicrop") -> tuple[float, float]:
    if isinstance(p, (int, float)) and not isinstance(p, bool):
        return float(p), float(p)
    if isinstance(p, Sequence) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p):
        return float(p[0]), float(p[1])
    raise SelfSupError(f"{recipe} {name}={p!r}: give one probability, or two (one per global view)")


def single(size: int = 32, gray_p: float = 0.0, **kw) -> list[ViewSpec]:
    """One lightly augmented view (crop 0.5-1 and flip, no colour jitter), for pretext tasks;
    ``gray_p`` converts that share of the views to grayscale (jigsaw's paper: about 30%)."""
    return [ViewSpec(size=size, scale=(0.5, 1.0), jitter_p=0.0, gray_p=gray_p, **kw)]


def colorization(size: int = 32, **kw) -> list[ViewSpec]:
    """``single``'s view split for colorization (Zhang et al. 2016, arXiv 1603.08511): the grey image
    of equal CIE L (normalized like every view: the network input) and the same crop's colours
    as sRGB in [0, 1] (where the ab targets come from)."""
    return [ViewSpec(size=size, scale=(0.5, 1.0), jitter_p=0.0, gray_p=0.0, split_lightness=True, **kw)]


RECIPES: dict[str, Callable[..., list[ViewSpec]]] = {
    "simclr": simclr,
    "byol": byol,
    "multicrop": multicrop,
    "single": single,
    "colorization": colorization,
}


def scale_view_sizes(name: str, options: dict[str, Any], base_size: int, side: int) -> tuple[int, dict[str, Any]]:
    """The view size and options of recipe ``name``, written for images of ``base_size`` px, for
    images of ``side`` px: the views take the whole side, and the recipe's other sizes (multi-crop's
    ``local_size``, given or its default) keep their proportion to it, rounded half up, at least 1."""
    options = dict(options)
    params = inspect.signature(RECIPES[name]).parameters if name in RECIPES else {}
    if "local_size" in params:
        local = options.get("local_size", params["local_size"].default)
        if isinstance(local, (int, float)) and not isinstance(local, bool):
            options["local_size"] = max(1, math.floor(local * side / base_size + 0.5))
    return side, options


def build_recipe(name: str, mean, std, *, dataset: ArrayDataset | ImageFolder | None = None,
                 mask_cache: str | os.PathLike | None = None, mask_device: torch.device | str | None = None,
                 background: dict[str, Any] | None = None, **options) -> ViewRecipe:
    """The recipe ``name`` with its ``options``; ``background`` adds ReLICv2's background removal.

    ``background`` is ``{p, fill, value, masks}`` (see :func:`background_removal`); the
    foreground masks belong to the training ``dataset`` (mask i to image i) and are computed once
    into ``mask_cache`` (a folder) unless ``masks`` names a user-supplied ``.npy``.
    """
    if name not in RECIPES:
        raise SelfSupError(f"unknown view recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    try:
        specs = RECIPES[name](**options)
    except TypeError as e:
        raise SelfSupError(f"view recipe {name!r}: {e}") from None
    pre = None
    if background is not None:
        pre = background_removal(background, dataset, mask_cache, mask_device)
    return ViewRecipe(specs, tuple(mean), tuple(std), name, pre=pre, pre_each_view=pre is not None)


# ---------------------------------------------------------------------------------------------
# ReLICv2's background removal as a recipe step


@dataclass(frozen=True)
class BackgroundRemoval:
    """A recipe ``pre`` step: with probability ``p`` per image, replace its background (the recipe
    calls it once per view, so each view of an image draws on its own).

    ``masks`` holds one foreground mask per data set index; the batch's indices pick them.
    ``fill`` and ``value`` are those of :func:`selfsup.data.foreground.remove_background`.
    """

    masks: ForegroundMasks
    p: float = 0.1
    fill: str = "constant"
    value: float | tuple[float, ...] = 0.5

    def __call__(self, x: Tensor, index: Tensor | None, g: torch.Generator) -> Tensor:
        if index is None:
            raise SelfSupError("background removal needs the data set index of every image; "
                               "call the recipe as recipe(images, generator, index)")
        return remove_background(x, self.masks.lookup(index, device=x.device), self.p, self.fill, self.value, g)


BACKGROUND_KEYS = ("p", "fill", "value", "masks")


def background_removal(options: dict[str, Any], dataset: ArrayDataset | ImageFolder | None,
                       cache_dir: str | os.PathLike | None = None,
                       device: torch.device | str | None = None) -> BackgroundRemoval:
    """Build the background-removal step from ``views.options.background``.

    Keys: ``p`` (probability per image and view, ReLICv2's 0.1), ``fill`` (``constant``,
    ``noise`` or ``other``: another image's pixels), ``value`` (the constant fill, in [0, 1]) and
    ``masks`` (a ``.npy`` of shape (N, H, W), bool or 0/1, one mask per training image; omitted:
    estimated without labels by :meth:`ForegroundMasks.compute` and cached, see
    :func:`dataset_masks`).
    """
    if not isinstance(options, dict):
        raise SelfSupError(f"views.options.background must be a mapping with keys {', '.join(BACKGROUND_KEYS)}, "
                           f"got {options!r}")
    unknown = [k for k in options if k not in BACKGROUND_KEYS]
    if unknown:
        raise SelfSupError(f"unknown key{'s' if len(unknown) > 1 else ''} "
                           f"{', '.join('views.options.background.' + k for k in unknown)}; "
                           f"valid keys: {', '.join(BACKGROUND_KEYS)}")
    p = options.get("p", 0.1)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise SelfSupError(f"views.options.background.p={p!r} must be a probability in [0, 1]")
    fill = options.get("fill", "constant")
    if fill not in FILLS:
        raise SelfSupError(f"views.options.background.fill={fill!r} is not valid; choose one of: {', '.join(FILLS)}")
    value = options.get("value", 0.5)
    try:
        value = tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else float(value)
    except (TypeError, ValueError):
        raise SelfSupError(f"views.options.background.value={value!r}: give the fill colour in [0, 1], "
                           "one number or one per channel") from None
    user = options.get("masks")
    if user is not None:
        shape = _mask_shape(dataset) if dataset is not None else None
        masks = ForegroundMasks.load(Path(user).expanduser(), expected_shape=shape)
    else:
        if not isinstance(dataset, ArrayDataset):
            raise SelfSupError("background removal estimates foreground masks from the training images held in "
                               "memory; set data.in_memory=true, or give your own masks with "
                               "views.options.background.masks=PATH.npy")
        masks = dataset_masks(dataset.images, cache_dir, device)
    return BackgroundRemoval(masks, float(p), fill, value)


def _mask_shape(dataset: ArrayDataset | ImageFolder) -> tuple[int, int, int] | None:
    if isinstance(dataset, ArrayDataset):
        n, _, h, w = dataset.images.shape
        return n, h, w
    return None  # streamed folders: sizes are checked batch by batch when the masks are used


def dataset_masks(images: Tensor, cache_dir: str | os.PathLike | None = None,
                  device: torch.device | str | None = None) -> ForegroundMasks:
    """Unsupervised foreground masks of a whole uint8 data set (N, 3, H, W), computed once.

    With ``cache_dir`` the masks live in ``<cache_dir>/<N>x<H>x<W>-<hash>.npy``, the hash being
    that of the images' bytes, so that every run on the same data (same images, same order, same
    size) reuses one file and a changed data set never picks up stale masks. The estimate runs on
    ``device`` (default CPU); only the main process writes the file.
    """
    path = None
    if cache_dir is not None:
        n, _, h, w = images.shape
        digest = hashlib.blake2b(images.cpu().contiguous().numpy().tobytes(), digest_size=8).hexdigest()
        path = Path(cache_dir) / f"{n}x{h}x{w}-{digest}.npy"
        if path.is_file():
            return ForegroundMasks.load(path, expected_shape=images.shape)
    if dist.is_main():
        where = f"; caching them in {path}" if path else ""
        print(f"estimating foreground masks of {len(images)} images (once{where})", flush=True)
    masks = ForegroundMasks.compute(images, device=device)
    if path is not None and dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, masks.masks.cpu().numpy(), allow_pickle=False)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    return masks
