"""Batched image augmentations with per-sample random parameters.

Every op takes a float batch ``(B, 3, H, W)`` in [0, 1] on any device and a CPU
``torch.Generator``. Random parameters (a few numbers per image) are drawn on the CPU from that
generator and moved to the batch's device, so results are deterministic for a seed and identical
on CPU and GPU; the pixel work is a handful of tensor ops over the whole batch, never a Python
loop over images. The semantics follow torchvision's transforms, as used by SimCLR
(Chen et al. 2020, arXiv 2002.05709, Appendix A).

Under data parallelism every process holds one shard of a global batch. Inside
``sharded(rank, world_size)`` each per-image draw is made for the whole global batch (from a
generator seeded alike on every process) and the shard's slice is kept, so an image gets the same
augmentation whether the global batch is on one process or split over many. That is what makes
1-process and N-process training step for step identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
_shard = (0, 1)  # (rank, world size) of the batch being augmented


@contextmanager
def sharded(rank: int, world_size: int) -> Iterator[None]:
    """Draw random parameters for the global batch and keep this process's slice."""
    global _shard
    previous, _shard = _shard, (rank, world_size)
    try:
        yield
    finally:
        _shard = previous


def batch_rand(*shape: int, g: torch.Generator | None, device: torch.device | str | None = None) -> Tensor:
    """U[0, 1) numbers for this shard's images (dim 0), drawn for the whole global batch (on
    ``device``, the generator's)."""
    rank, world = _shard
    full = torch.rand((shape[0] * world, *shape[1:]), generator=g, device=device)
    return full[rank * shape[0] : (rank + 1) * shape[0]]


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> Tensor:
    return (batch_rand(n, g=g) * (hi - lo) + lo).to(device)


def _coin(n: int, p: float, g: torch.Generator, device) -> Tensor:
    return (batch_rand(n, g=g) < p).to(device)


def grayscale(x: Tensor) -> Tensor:
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).expand_as(x)


def random_resized_crop(x: Tensor, size: int, g: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5) -> Tensor:
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio``, resize to ``size``.

    As torchvision's RandomResizedCrop: up to 10 tries per image for a box that fits, else the
    largest centred box of a legal aspect ratio. The horizontal flip (probability ``flip_p``) is
    folded into the same affine sampling. Bilinear sampling without antialiasing: for strong
    downscaling of large images this aliases slightly more than PIL's resize.
    """
    b, _, h, w = x.shape
    tries = 10
    area = (batch_rand(b, tries, g=g) * (scale[1] - scale[0]) + scale[0]) * (h * w)
    logr = batch_rand(b, tries, g=g) * (math.log(ratio[1]) - math.log(ratio[0])) + math.log(ratio[0])
    cw = torch.sqrt(area * torch.exp(logr))
    ch = torch.sqrt(area / torch.exp(logr))
    ok = (cw <= w) & (ch <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((b,), -1))
    sel = first.clamp_min(0)
    cw = cw.gather(1, sel[:, None]).squeeze(1)
    ch = ch.gather(1, sel[:, None]).squeeze(1)
    # Fallback: the whole image cropped to the nearest legal aspect ratio.
    fw, fh = float(w), float(h)
    if w / h < ratio[0]:
        fh = w / ratio[0]
    elif w / h > ratio[1]:
        fw = h * ratio[1]
    bad = first < 0
    cw = torch.where(bad, torch.full_like(cw, fw), cw)
    ch = torch.where(bad, torch.full_like(ch, fh), ch)
    cx = batch_rand(b, g=g) * (w - cw) + cw / 2
    cy = batch_rand(b, g=g) * (h - ch) + ch / 2
    flip = torch.where(batch_rand(b, g=g) < flip_p, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cw / w * flip
    theta[:, 0, 2] = 2 * cx / w - 1
    theta[:, 1, 1] = ch / h
    theta[:, 1, 2] = 2 * cy / h - 1
    grid = F.affine_grid(theta.to(x.device, x.dtype), [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g_, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    s = delta / maxc.clamp_min(1e-8)
    d = delta.clamp_min(1e-8)
    h = torch.where(maxc == r, (g_ - b) / d, torch.where(maxc == g_, 2.0 + (b - r) / d, 4.0 + (r - g_) / d))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack((h, s, maxc), 1)


def _hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # Rows: the (r, g, b) source for each of the six hue sectors.
    table = torch.stack((torch.stack((v, q, p, p, t, v), 1), torch.stack((t, v, v, q, p, p), 1),
                         torch.stack((p, p, t, v, v, q), 1)), 1)  # (B, 3, 6, H, W)
    return table.gather(2, i[:, None, None].expand(-1, 3, 1, -1, -1)).squeeze(2)


def color_jitter(x: Tensor, g: torch.Generator, brightness: float, contrast: float, saturation: float,
                 hue: float, p: float = 0.8) -> Tensor:
    """torchvision's ColorJitter applied with probability ``p`` per image.

    Factors are drawn per image: brightness/contrast/saturation in [max(0, 1-v), 1+v], hue shift in
    [-hue, hue] of a full turn. The four ops run in one random order per batch (torchvision draws
    the order per image; per batch keeps the work batched and the distribution of each op equal).
    """
    b, dev = x.shape[0], x.device
    apply = _coin(b, p, g, dev).view(b, 1, 1, 1)
    out = x
    fb = _uniform(b, max(0.0, 1 - brightness), 1 + brightness, g, dev).view(b, 1, 1, 1)
    fc = _uniform(b, max(0.0, 1 - contrast), 1 + contrast, g, dev).view(b, 1, 1, 1)
    fs = _uniform(b, max(0.0, 1 - saturation), 1 + saturation, g, dev).view(b, 1, 1, 1)
    fh = _uniform(b, -hue, hue, g, dev).view(b, 1, 1)
    for op in torch.randperm(4, generator=g).tolist():
        if op == 0 and brightness > 0:
            out = (out * fb).clamp(0, 1)
        elif op == 1 and contrast > 0:
            mean = grayscale(out)[:, :1].mean(dim=(1, 2, 3), keepdim=True)
            out = (fc * out + (1 - fc) * mean).clamp(0, 1)
        elif op == 2 and saturation > 0:
            out = (fs * out + (1 - fs) * grayscale(out)).clamp(0, 1)
        elif op == 3 and hue > 0:
            hsv = _rgb_to_hsv(out)
            hsv = torch.stack(((hsv[:, 0] + fh) % 1.0, hsv[:, 1], hsv[:, 2]), 1)
            out = _hsv_to_rgb(hsv)
    return torch.where(apply, out, x)


def random_grayscale(x: Tensor, g: torch.Generator, p: float = 0.2) -> Tensor:
    return torch.where(_coin(x.shape[0], p, g, x.device).view(-1, 1, 1, 1), grayscale(x), x)


def gaussian_blur(x: Tensor, g: torch.Generator, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0),
                  kernel_size: int | None = None) -> Tensor:
    """Gaussian blur with sigma ~ U(sigma) per image, applied with probability ``p``.

    SimCLR uses a kernel of 10% of the image side (23 px at 224); that is the default here.
    """
    b, c, h, w = x.shape
    k = kernel_size or max(3, int(0.1 * min(h, w)) // 2 * 2 + 1)
    apply = _coin(b, p, g, x.device)
    s = _uniform(b, sigma[0], sigma[1], g, x.device).to(x.dtype)
    r = torch.arange(k, device=x.device, dtype=x.dtype) - (k - 1) / 2
    kern = torch.exp(-(r[None] ** 2) / (2 * s[:, None] ** 2))
    kern = kern / kern.sum(1, keepdim=True)  # (B, k)
    kern = kern.repeat_interleave(c, 0)  # one kernel per (image, channel) group
    y = x.reshape(1, b * c, h, w)
    pad = k // 2
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), kern.view(b * c, 1, 1, k), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), kern.view(b * c, 1, k, 1), groups=b * c)
    return torch.where(apply.view(b, 1, 1, 1), y.view(b, c, h, w), x)


def solarize(x: Tensor, g: torch.Generator, p: float = 0.2, threshold: float = 0.5) -> Tensor:
    """Invert pixels at or above ``threshold`` with probability ``p`` per image (BYOL, arXiv 2006.07733)."""
    apply = _coin(x.shape[0], p, g, x.device).view(-1, 1, 1, 1)
    return torch.where(apply & (x >= threshold), 1.0 - x, x)


def normalize(x: Tensor, mean: list[float] | tuple[float, ...], std: list[float] | tuple[float, ...]) -> Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def to_float(images: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) -> float32 in [0, 1], keeping the memory format."""
    return images.float().div_(255.0)
