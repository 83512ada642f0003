"""Unsupervised foreground masks and the background-removal augmentation of ReLICv2.

ReLICv2 (Tomasev et al. 2022, "Pushing the limits of self-supervised ResNets: Can we outperform
supervised learning without labels on ImageNet?", arXiv:2201.05119) removes the background of an
image with a small probability (0.1) when it builds a view, using a foreground mask that was obtained
without labels. This module provides such a mask without any labels or pretrained weights: the
saliency of each pixel is computed from the image alone with classic, training-free methods, then
binarised and cleaned.

Saliency methods (``method=``):

* ``"mbd+"`` (default): the minimum barrier distance (MBD) of every pixel to the image border plus
  a border colour-contrast map, after the MB+ recipe of Zhang et al. 2015, "Minimum Barrier
  Salient Object Detection at 80 FPS" (ICCV). Both cues rest on the background prior of
  Wei et al. 2012, "Geodesic saliency using background priors" (ECCV) and Zhu et al. 2014,
  "Saliency optimization from robust background detection" (CVPR): the background is what is
  connected to, and looks like, the image border. The MBD supplies the connectivity (an object
  is enclosed by a colour step), the colour cue supplies robustness to textured backgrounds.
* ``"mbd"``: the minimum barrier distance alone (Strand et al. 2013, "The minimum barrier
  distance", CVIU; computed with raster passes as in Zhang et al. 2015).
* ``"border"``: the border colour-contrast map alone. MB+ models each border side with one
  Gaussian; here the cue is non-parametric instead, the colour distance to the k-th nearest border
  pixel, so that sides holding several colours and background regions touching only one or two
  sides are handled (a per-side Gaussian variant was tried and did clearly worse on such scenes).
* ``"ft"``: frequency-tuned saliency, Achanta et al. 2009, "Frequency-tuned salient region
  detection" (CVPR). No background prior: it flags whatever differs from the mean colour.
* ``"spectral_residual"``: Hou & Zhang 2007, "Saliency detection: A spectral residual approach"
  (CVPR). Built for spotting small odd items in a scene, it marks edges and texture rather than
  whole objects, so it makes poor masks for object-centred images; kept for comparison.

Binarisation (``threshold=``): Otsu 1979, "A threshold selection method from gray-level histograms"
(IEEE SMC), the adaptive threshold of Achanta et al. 2009 (twice the mean saliency), or a fixed
fraction of the saliency range. Clean-up: a morphological opening then closing, keeping the
largest connected components and filling holes.

Everything is pure, batched tensor code that runs on the images' device; only short loops over
propagation iterations remain in Python.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.data.augment import batch_rand
from selfsup.errors import SelfSupError

__all__ = [
    "METHODS",
    "FILLS",
    "estimate_foreground",
    "saliency_map",
    "otsu_threshold",
    "clean_mask",
    "remove_background",
    "ForegroundMasks",
]

METHODS = ("mbd+", "mbd", "border", "ft", "spectral_residual")
FILLS = ("constant", "noise", "other")


# ---------------------------------------------------------------------------------------------
# validation helpers


def _check_uint8_images(images: Tensor, name: str = "images") -> None:
    if not isinstance(images, Tensor):
        raise SelfSupError(f"{name} must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}.")
    if images.dtype != torch.uint8:
        raise SelfSupError(
            f"{name} must have dtype torch.uint8 (raw pixels 0..255), got {images.dtype}; "
            "convert with (x * 255).round().to(torch.uint8) if you hold floats in [0, 1]."
        )
    if images.ndim != 4 or images.shape[1] != 3:
        raise SelfSupError(
            f"{name} must have shape (B, 3, H, W) with 3 RGB channels, got {tuple(images.shape)}; "
            "add a batch dimension with x.unsqueeze(0) or repeat grey images to 3 channels."
        )
    if images.shape[2] < 3 or images.shape[3] < 3:
        raise SelfSupError(f"{name} must be at least 3x3 pixels, got {tuple(images.shape[2:])}.")


# ---------------------------------------------------------------------------------------------
# colour and filtering


def _rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in [0, 1], (B, 3, H, W) -> CIE L*a*b* (D65), the space both MB+ and FT work in."""
    lin = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055).clamp_min(0) ** 2.4)
    m = torch.tensor(
        [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]],
        dtype=rgb.dtype,
        device=rgb.device,
    )
    xyz = torch.einsum("ij,bjhw->bihw", m, lin)
    white = torch.tensor([0.95047, 1.0, 1.08883], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    t = xyz / white
    delta = 6.0 / 29.0
    f = torch.where(t > delta**3, t.clamp_min(1e-12) ** (1.0 / 3.0), t / (3 * delta**2) + 4.0 / 29.0)
    lum = 116.0 * f[:, 1] - 16.0
    a = 500.0 * (f[:, 0] - f[:, 1])
    b = 200.0 * (f[:, 1] - f[:, 2])
    return torch.stack([lum, a, b], dim=1)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(2.5 * sigma)))
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (coords / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    # Replicate padding keeps border colours from being pulled towards zero, which would fake a
    # barrier along the very border the background prior trusts.
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _normalise(s: Tensor) -> Tensor:
    """Per-image min-max scaling of (B, H, W) maps to [0, 1]; flat maps become all zero."""
    flat = s.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    hi = flat.max(1).values.view(-1, 1, 1)
    return (s - lo) / (hi - lo).clamp_min(1e-8)


def _border(h: int, w: int, width: int, device: torch.device) -> Tensor:
    m = torch.zeros(h, w, dtype=torch.bool, device=device)
    m[:width] = True
    m[-width:] = True
    m[:, :width] = True
    m[:, -width:] = True
    return m


# ---------------------------------------------------------------------------------------------
# saliency cues


def _sweep_rows(state: Tensor, x: Tensor) -> None:
    """One top-to-bottom raster pass of the minimum barrier distance, in place.

    ``state`` stacks (distance, path max, path min), shape (3, B, C, H, W); ``x`` is (B, C, H, W).
    Each row extends the best path of its three upper neighbours (8-connectivity), so a whole
    column of the image is relaxed in H small vectorised steps instead of H full-image iterations.
    """
    h, w = x.shape[2], x.shape[3]
    for i in range(1, h):
        # Padding with +inf makes off-image neighbours impossible candidates in one go.
        prev = F.pad(state[:, :, :, i - 1], (1, 1), value=float("inf"))
        xi = x[:, :, i]
        dist, hi, lo = state[0, :, :, i], state[1, :, :, i], state[2, :, :, i]
        # Pairwise selection over the three neighbours: a min-with-indices reduction over such a
        # short axis is far slower than a few elementwise ops.
        for k in range(3):
            nbr = prev[..., k : k + w]
            path_hi = torch.maximum(nbr[1], xi)
            path_lo = torch.minimum(nbr[2], xi)
            # A neighbour not reached yet has distance inf; the max keeps it from winning.
            cand = torch.maximum(path_hi - path_lo, nbr[0])
            better = cand < dist
            dist = torch.where(better, cand, dist)
            hi = torch.where(better, path_hi, hi)
            lo = torch.where(better, path_lo, lo)
        state[0, :, :, i] = dist
        state[1, :, :, i] = hi
        state[2, :, :, i] = lo


def _minimum_barrier_distance(x: Tensor, passes: int = 2) -> Tensor:
    """Approximate minimum barrier distance from the image border, per channel, summed: (B, H, W).

    The barrier of a path is the max minus the min of the intensities along it (Strand et al.
    2013); seeds are the border pixels. Like FastMBD (Zhang et al. 2015), each raster pass extends
    every pixel's best path by one step from an already visited neighbour while tracking the
    path's running max and min; here each pass scans down, up, right and left, one row (or column)
    at a time, vectorised over the batch, channels and the row.
    """
    b, c, h, w = x.shape
    seeds = _border(h, w, 1, x.device)
    dist = torch.where(seeds, torch.zeros((), dtype=x.dtype, device=x.device), float("inf"))
    state = torch.stack([dist.expand(b, c, h, w), x, x]).contiguous()
    for _ in range(passes):
        for transpose in (False, True):
            for flip in (False, True):
                s, xi = state, x
                if transpose:
                    s, xi = s.transpose(3, 4), xi.transpose(2, 3)
                if flip:
                    s, xi = s.flip(3), xi.flip(2)
                s, xi = s.contiguous(), xi.contiguous()
                _sweep_rows(s, xi)
                if flip:
                    s = s.flip(3)
                if transpose:
                    s = s.transpose(3, 4)
                state = s.contiguous()
    return state[0].sum(1)


def _border_knn_distance(lab: Tensor, fraction: float, chunk_elements: int = 1 << 24) -> Tensor:
    """Colour distance of every pixel to its k-th nearest border pixel, k = ``fraction`` of the border.

    A non-parametric form of the backgroundness cue of MB+ (Zhang et al. 2015) and of the
    boundary prior of Zhu et al. 2014: background regions share their colours with a long stretch
    of the image border, while an object that only touches the border in a few pixels stays far
    from its k-th neighbour. Unlike one Gaussian per border side it copes with sides that hold
    several colours (stripes, a horizon) and with background regions that touch only one side.
    """
    b, c, h, w = lab.shape
    border = _border(h, w, 1, lab.device).flatten()
    pix = lab.flatten(2).transpose(1, 2)  # (B, HW, C)
    ref = pix[:, border]  # (B, nb, C)
    n_pix, n_ref = pix.shape[1], ref.shape[1]
    k = max(1, min(n_ref, round(fraction * n_ref)))
    # The pairwise distance table is (B, HW, nb); chunk it (by images, and by pixels for a single
    # large image) so it stays near ``chunk_elements`` floats whatever the batch and image size.
    b_step = max(1, chunk_elements // (n_pix * n_ref))
    p_step = n_pix if b_step > 1 else max(1, chunk_elements // n_ref)
    rows = []
    for b0 in range(0, b, b_step):
        cols = []
        for p0 in range(0, n_pix, p_step):
            d = torch.cdist(pix[b0 : b0 + b_step, p0 : p0 + p_step], ref[b0 : b0 + b_step])
            cols.append(d.topk(k, dim=2, largest=False).values[..., -1])
        rows.append(torch.cat(cols, 1))
    return torch.cat(rows).view(b, h, w)


def _frequency_tuned(lab: Tensor) -> Tensor:
    """Achanta et al. 2009: distance of the slightly blurred Lab image to the mean Lab colour."""
    blurred = _gaussian_blur(lab, 1.0)
    mean = lab.mean((2, 3), keepdim=True)
    return (blurred - mean).pow(2).sum(1).sqrt()


def _spectral_residual(gray: Tensor) -> Tensor:
    """Hou & Zhang 2007: the log amplitude spectrum minus its local average, back-transformed."""
    spec = torch.fft.fft2(gray)
    log_amp = torch.log(spec.abs().clamp_min(1e-8))
    avg = F.avg_pool2d(F.pad(log_amp.unsqueeze(1), (1, 1, 1, 1), mode="circular"), 3, stride=1).squeeze(1)
    # Keep the phase, replace the amplitude by exp(residual).
    sal = torch.fft.ifft2(torch.polar(torch.exp(log_amp - avg), torch.angle(spec))).abs() ** 2
    h, w = gray.shape[-2:]
    return _gaussian_blur(sal.unsqueeze(1), max(1.0, 0.03 * min(h, w))).squeeze(1)


def saliency_map(
    images: Tensor,
    method: str = "mbd+",
    *,
    work_size: int | None = 64,
    blur: float = 1.0 / 32.0,
    border_fraction: float = 0.05,
) -> Tensor:
    """Per-pixel saliency in [0, 1], shape (B, h, w), at the working resolution.

    ``images`` is a uint8 (B, 3, H, W) tensor. Images are shrunk (never enlarged) to
    ``work_size`` pixels on the longer side (``None`` keeps them), which bounds the cost of the
    distance computations. ``blur`` is the Gaussian sigma applied before the MBD, as a fraction of
    the shorter side (at least one pixel): it makes fine noise and thin stripes read as their mean
    colour, so that they do not raise a barrier at every pixel (the border colour cue only gets a
    one-pixel denoising blur). ``border_fraction`` is the share of border pixels a colour must
    match to count as background (``"border"`` cue).
    See the module docstring for the methods and papers.
    """
    _check_uint8_images(images)
    if method not in METHODS:
        raise SelfSupError(f"unknown foreground method {method!r}; choose one of {', '.join(METHODS)}.")
    if not 0 < border_fraction <= 1:
        raise SelfSupError(f"border_fraction must lie in (0, 1], got {border_fraction}.")
    if blur < 0:
        raise SelfSupError(f"blur must be >= 0 (a fraction of the image side), got {blur}.")
    x = images.float() / 255.0
    h, w = x.shape[-2:]
    if work_size is not None:
        if work_size < 8:
            raise SelfSupError(f"work_size must be at least 8 pixels (or None), got {work_size}.")
        scale = work_size / max(h, w)
        if scale < 1:
            size = (max(3, round(h * scale)), max(3, round(w * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    h, w = x.shape[-2:]
    if method == "spectral_residual":
        return _normalise(_spectral_residual(x.mean(1)))
    lab = _rgb_to_lab(x)
    if method == "ft":
        return _normalise(_frequency_tuned(lab))
    # The colour-only border cue just needs denoising; the path-based MBD also needs thin textures
    # washed out, hence a blur that grows with the image. Blurring more for the border cue would
    # only smear object edges into colours found nowhere on the border.
    if method in ("border", "mbd+"):
        near = _normalise(_border_knn_distance(_gaussian_blur(lab, 1.0), border_fraction))
        if method == "border":
            return near
    mbd = _normalise(_minimum_barrier_distance(_gaussian_blur(lab, max(1.0, blur * min(h, w)))))
    if method == "mbd":
        return mbd
    return _normalise(mbd + near)


# ---------------------------------------------------------------------------------------------
# binarisation and clean-up


def otsu_threshold(saliency: Tensor, bins: int = 256) -> Tensor:
    """Batched Otsu (1979) binarisation of (B, H, W) maps in [0, 1]; returns a bool mask."""
    b = saliency.shape[0]
    idx = (saliency.flatten(1) * bins).long().clamp(0, bins - 1)
    hist = torch.zeros(b, bins, dtype=torch.float64, device=saliency.device)
    hist.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    p = hist / hist.sum(1, keepdim=True)
    omega = p.cumsum(1)
    levels = torch.arange(bins, dtype=torch.float64, device=saliency.device)
    mu = (p * levels).cumsum(1)
    mu_total = mu[:, -1:]
    between = (mu_total * omega - mu) ** 2 / (omega * (1 - omega)).clamp_min(1e-12)
    # Splits that leave a class empty are meaningless; mask them so argmax ignores them.
    between = torch.where((omega > 0) & (omega < 1), between, torch.full_like(between, -1.0))
    t = between.argmax(1, keepdim=True)
    return (idx > t).view_as(saliency)


def _dilate(m: Tensor) -> Tensor:
    return F.max_pool2d(m.float().unsqueeze(1), 3, stride=1, padding=1).squeeze(1) > 0


def _erode(m: Tensor) -> Tensor:
    # Outside the image counts as foreground, so objects touching the border are not eaten away.
    return ~_dilate(~m)


def _connected_components(mask: Tensor) -> Tensor:
    """8-connected component labels of (B, H, W) bool masks (0 = background), by max-propagation."""
    b, h, w = mask.shape
    # Labels travel through max-pooling, so they are floats; float32 holds integers exactly only
    # up to 2**24.
    dtype = torch.float32 if h * w < 2**24 else torch.float64
    ids = torch.arange(1, h * w + 1, device=mask.device, dtype=dtype).view(1, h, w)
    labels = torch.where(mask, ids.expand(b, h, w), torch.zeros((), dtype=dtype, device=mask.device))
    for it in range(h * w):
        prev = labels
        labels = F.max_pool2d(labels.unsqueeze(1), 3, stride=1, padding=1).squeeze(1) * mask
        if it % 4 == 3 and torch.equal(prev, labels):
            break
    return labels.long()


def _fill_holes(mask: Tensor) -> Tensor:
    """Foreground plus every background region that cannot reach the image border."""
    b, h, w = mask.shape
    free = ~mask
    reach = free & _border(h, w, 1, mask.device)
    for it in range(h * w):
        prev = reach
        reach = _dilate(reach) & free
        if it % 4 == 3 and torch.equal(prev, reach):
            break
    return ~reach


def clean_mask(mask: Tensor, *, keep_fraction: float = 0.3, morphology: bool = True) -> Tensor:
    """Open then close (3x3), keep components of at least ``keep_fraction`` of the largest one's
    area, and fill holes. Masks that would end up empty are returned unchanged."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.ndim != 3:
        raise SelfSupError(
            "clean_mask needs a bool tensor of shape (B, H, W), got "
            f"{mask.dtype if isinstance(mask, Tensor) else type(mask).__name__} "
            f"{tuple(mask.shape) if isinstance(mask, Tensor) else ''}; threshold saliency maps first."
        )
    m = mask
    if morphology:
        # Opening first: thin textures (stripes, noise) that pass the threshold leave scattered
        # specks, which a closing would first weld into a blob that then survives.
        m = _dilate(_erode(m))
        m = _erode(_dilate(m))
    labels = _connected_components(m)
    b = m.shape[0]
    counts = torch.zeros(b, m[0].numel() + 1, device=m.device)
    counts.scatter_add_(1, labels.flatten(1), torch.ones_like(labels.flatten(1), dtype=counts.dtype))
    counts[:, 0] = 0
    largest = counts.max(1, keepdim=True).values
    keep = (counts >= keep_fraction * largest) & (counts > 0)
    m = keep.gather(1, labels.flatten(1)).view_as(m)
    m = _fill_holes(m)
    empty = ~m.flatten(1).any(1)
    return torch.where(empty.view(-1, 1, 1), mask, m)


def estimate_foreground(
    images: Tensor,
    method: str = "mbd+",
    threshold: str | float = "otsu",
    *,
    work_size: int | None = 64,
    cleanup: bool = True,
    keep_fraction: float = 0.3,
    blur: float = 1.0 / 32.0,
    border_fraction: float = 0.05,
) -> Tensor:
    """Unsupervised foreground mask of uint8 images (B, 3, H, W) -> bool (B, H, W).

    No labels and no learned weights: a saliency map is computed from each image alone
    (``method``, default ``"mbd+"``: minimum barrier distance to the border plus border colour
    contrast, Zhang et al. 2015), binarised (``threshold``: ``"otsu"`` (Otsu 1979), ``"adaptive"``
    (twice the mean saliency, Achanta et al. 2009) or a float in (0, 1) applied to the per-image
    normalised saliency) and cleaned (morphological opening and closing, largest connected
    components, hole filling). It assumes the usual photographic layout the background prior rests
    on: the object sits inside the frame and the background touches the image border.

    The mask is computed at ``work_size`` pixels on the longer side and resized back with bilinear
    interpolation at 0.5, which bounds the cost for large images. Images with no detectable
    foreground (e.g. a flat colour) get an all-True mask, so that background removal is a no-op
    for them rather than an erasure of the whole picture. Runs on the images' device; the result is
    on the same device. Masks are a mild prior, not a segmentation: ReLICv2 (Tomasev et al. 2022)
    only uses them to remove the background of a small fraction of views.
    """
    _check_uint8_images(images)
    if isinstance(threshold, str):
        if threshold not in ("otsu", "adaptive"):
            raise SelfSupError(f"unknown threshold {threshold!r}; use 'otsu', 'adaptive' or a float in (0, 1).")
    elif not (isinstance(threshold, (int, float)) and 0 < float(threshold) < 1):
        raise SelfSupError(f"a numeric threshold must be a float in (0, 1), got {threshold!r}.")
    if not 0 <= keep_fraction <= 1:
        raise SelfSupError(f"keep_fraction must lie in [0, 1], got {keep_fraction}.")
    b, _, h, w = images.shape
    if b == 0:
        return torch.zeros(0, h, w, dtype=torch.bool, device=images.device)
    sal = saliency_map(images, method, work_size=work_size, blur=blur, border_fraction=border_fraction)
    if threshold == "otsu":
        mask = otsu_threshold(sal)
    elif threshold == "adaptive":
        mask = sal >= 2 * sal.flatten(1).mean(1).view(-1, 1, 1)
    else:
        mask = sal >= float(threshold)
    flat = (sal.flatten(1).max(1).values - sal.flatten(1).min(1).values) < 1e-6
    if cleanup:
        mask = clean_mask(mask, keep_fraction=keep_fraction)
    mask = mask & ~flat.view(-1, 1, 1)
    mask = torch.where(~mask.flatten(1).any(1).view(-1, 1, 1), torch.ones_like(mask), mask)
    if mask.shape[-2:] != (h, w):
        up = F.interpolate(mask.float().unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False)
        mask = up.squeeze(1) >= 0.5
    return mask


# ---------------------------------------------------------------------------------------------
# the augmentation


def remove_background(
    images: Tensor,
    masks: Tensor,
    p: float = 0.1,
    fill: str = "constant",
    value: float | Sequence[float] = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """ReLICv2's background removal (Tomasev et al. 2022): with probability ``p`` per sample,
    replace the pixels outside the foreground mask.

    ``images`` are float (B, C, H, W) in [0, 1]; ``masks`` are bool (B, H, W), True on the
    foreground, with the same H and W. The view recipe applies this BEFORE any crop or resize, on
    the full-size uint8 image converted to float, so that the cached per-image masks line up with
    the pixels; masks of another size are refused rather than resampled.

    ``fill``: ``"constant"`` (``value``, a float or one float per channel), ``"noise"`` (uniform in
    [0, 1] per pixel and channel) or ``"other"`` (the same pixels of another image of the batch,
    given by a random permutation without fixed points; with a batch of one the image is its own
    partner, so nothing changes). Samples not drawn are returned unchanged, as is the input. The
    result is deterministic given ``generator``; random numbers are drawn on the generator's device
    (CPU when ``generator`` is None) and moved to the images' device.
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise SelfSupError(
            f"images must be a float tensor of shape (B, C, H, W), got "
            f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}."
        )
    if not images.is_floating_point():
        raise SelfSupError(
            f"images must be floating point in [0, 1], got {images.dtype}; convert uint8 images with "
            "x.float() / 255 first."
        )
    if not isinstance(masks, Tensor) or masks.ndim != 3:
        raise SelfSupError(
            f"masks must be a bool tensor of shape (B, H, W), got "
            f"{tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__}."
        )
    b, c, h, w = images.shape
    if masks.shape != (b, h, w):
        raise SelfSupError(
            f"masks of shape {tuple(masks.shape)} do not match images of shape {tuple(images.shape)}: "
            "remove the background on the full-size image before cropping or resizing, with the mask "
            "of that same image."
        )
    if masks.dtype != torch.bool:
        if masks.is_floating_point() or masks.is_complex():
            raise SelfSupError(
                f"masks must be bool (True = foreground), got {masks.dtype}; threshold saliency maps "
                "first, e.g. masks > 0.5."
            )
        masks = masks != 0
    if not isinstance(p, (int, float)) or not 0 <= float(p) <= 1:
        raise SelfSupError(f"p must be a probability in [0, 1], got {p!r}.")
    if fill not in FILLS:
        raise SelfSupError(f"unknown fill {fill!r}; choose one of {', '.join(FILLS)}.")
    if fill == "constant":
        try:
            vals = torch.as_tensor(value, dtype=images.dtype, device=images.device).flatten()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise SelfSupError(f"value must be a float or one float per channel, got {value!r}.") from exc
        if vals.numel() not in (1, c):
            raise SelfSupError(f"value must be a float or one float per channel ({c}), got {vals.numel()} values.")
    if b == 0:
        return images.clone()
    gen_device = generator.device if generator is not None else torch.device("cpu")
    # Drawn for the global batch under data parallelism (see selfsup.data.augment.sharded).
    chosen = batch_rand(b, g=generator, device=gen_device).to(images.device) < float(p)
    if fill == "constant":
        replacement = vals.view(1, -1, 1, 1).expand(b, c, h, w)
    elif fill == "noise":
        noise = batch_rand(b, c, h, w, g=generator, device=gen_device)
        replacement = noise.to(device=images.device, dtype=images.dtype)
    else:
        # Following a random cyclic order gives every sample a partner other than itself (in this
        # process's share of the batch: partners are not exchanged between processes).
        order = torch.randperm(b, generator=generator, device=gen_device).to(images.device)
        partner = torch.empty_like(order)
        partner[order] = torch.roll(order, -1)
        replacement = images[partner]
    erase = (chosen.view(b, 1, 1, 1) & ~masks.to(images.device).unsqueeze(1)).expand(b, c, h, w)
    return torch.where(erase, replacement, images)


# ---------------------------------------------------------------------------------------------
# the per-data-set cache


class ForegroundMasks:
    """Foreground masks of a whole data set, one (H, W) bool mask per data set index.

    Built once with :meth:`compute` (the unsupervised :func:`estimate_foreground`, in chunks) or
    read from a user-supplied ``.npy`` with :meth:`load`; looked up per batch with the batch's data
    set indices. ``masks`` is a plain (N, H, W) bool tensor, so it can be registered as a buffer.
    """

    def __init__(self, masks: Tensor) -> None:
        if not isinstance(masks, Tensor) or masks.ndim != 3:
            raise SelfSupError(
                "ForegroundMasks needs a bool tensor of shape (N, H, W), got "
                f"{tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__}."
            )
        if masks.dtype != torch.bool:
            raise SelfSupError(f"ForegroundMasks needs dtype torch.bool, got {masks.dtype}.")
        self.masks = masks

    def __len__(self) -> int:
        return self.masks.shape[0]

    def __repr__(self) -> str:
        n, h, w = self.masks.shape
        return f"ForegroundMasks(n={n}, size={h}x{w}, device={self.masks.device})"

    @property
    def shape(self) -> tuple[int, int, int]:
        n, h, w = self.masks.shape
        return (n, h, w)

    @classmethod
    def compute(
        cls,
        images: Tensor,
        batch_size: int = 256,
        *,
        device: torch.device | str | None = None,
        storage_device: torch.device | str = "cpu",
        **estimate_kwargs: Any,
    ) -> ForegroundMasks:
        """Estimate the masks of a uint8 data set (N, 3, H, W) chunk by chunk.

        Chunks are moved to ``device`` (default: where ``images`` live) for the estimate and the
        masks gathered on ``storage_device``; ``estimate_kwargs`` go to :func:`estimate_foreground`.
        """
        _check_uint8_images(images)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise SelfSupError(f"batch_size must be a positive integer, got {batch_size!r}.")
        dev = torch.device(device) if device is not None else images.device
        n, _, h, w = images.shape
        out = torch.empty(n, h, w, dtype=torch.bool, device=storage_device)
        for start in range(0, n, batch_size):
            chunk = images[start : start + batch_size].to(dev)
            out[start : start + batch_size] = estimate_foreground(chunk, **estimate_kwargs).to(storage_device)
        return cls(out)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the masks as a bool ``.npy`` of shape (N, H, W)."""
        path = os.fspath(path)
        if not path.endswith(".npy"):
            raise SelfSupError(f"foreground masks are saved as .npy; got {path!r}, give a path ending in .npy.")
        np.save(path, self.masks.cpu().numpy(), allow_pickle=False)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        expected_shape: Sequence[int] | None = None,
    ) -> ForegroundMasks:
        """Read masks from a ``.npy`` of bool or uint8 (0/1 or 0/255) values, shape (N, H, W).

        ``expected_shape`` is the data set's (N, H, W) (or its image tensor's (N, C, H, W)); a file
        that does not match it is refused, since mask i must belong to image i.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise SelfSupError(f"foreground mask file {path!r} does not exist; check the path.")
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise SelfSupError(
                f"could not read foreground masks from {path!r} ({exc}); save a numpy array with np.save."
            ) from exc
        if not isinstance(arr, np.ndarray):
            raise SelfSupError(f"{path!r} holds several arrays; save one (N, H, W) array with np.save.")
        if arr.ndim != 3:
            raise SelfSupError(
                f"foreground masks in {path!r} have shape {arr.shape}; expected (N, H, W), one mask per image."
            )
        if arr.dtype == np.uint8:
            present = np.unique(arr)
            if not (set(present.tolist()) <= {0, 1} or set(present.tolist()) <= {0, 255}):
                raise SelfSupError(
                    f"uint8 foreground masks in {path!r} must hold only 0/1 or 0/255, found other values; "
                    "threshold the saliency maps into binary masks first."
                )
            arr = arr != 0
        elif arr.dtype != np.bool_:
            raise SelfSupError(
                f"foreground masks in {path!r} have dtype {arr.dtype}; save them as bool or uint8 (0/1)."
            )
        if expected_shape is not None:
            exp = tuple(int(s) for s in expected_shape)
            if len(exp) == 4:
                exp = (exp[0], exp[2], exp[3])
            if len(exp) != 3:
                raise SelfSupError(f"expected_shape must be (N, H, W) or (N, C, H, W), got {tuple(expected_shape)}.")
            if arr.shape != exp:
                raise SelfSupError(
                    f"foreground masks in {path!r} have shape {arr.shape} but the data set needs {exp} "
                    "(one H x W mask per image, in data set order); recompute them with "
                    "ForegroundMasks.compute or export masks at the data set's image size."
                )
        return cls(torch.from_numpy(np.ascontiguousarray(arr)))

    def to(self, device: torch.device | str) -> ForegroundMasks:
        return ForegroundMasks(self.masks.to(device))

    def lookup(self, indices: Tensor | Sequence[int], device: torch.device | str | None = None) -> Tensor:
        """Masks of the given data set indices, (B, H, W) bool on ``device`` (default: the cache's)."""
        idx = torch.as_tensor(indices)
        if idx.ndim != 1 or idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
            raise SelfSupError(
                f"indices must be a 1-D integer tensor of data set indices, got dtype {idx.dtype} and "
                f"shape {tuple(idx.shape)}."
            )
        n = len(self)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise SelfSupError(
                f"data set indices must lie in [0, {n}), got values in [{int(idx.min())}, {int(idx.max())}]; "
                "the masks were built for a data set of a different size."
            )
        rows = self.masks[idx.to(self.masks.device).long()]
        return rows if device is None else rows.to(device)

    __getitem__ = lookup
