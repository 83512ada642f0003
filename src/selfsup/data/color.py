"""CIE Lab conversion and ab quantization for colorization as a pretext task.

Implements the label side of Zhang, Isola & Efros (2016), "Colorful Image Colorization",
arXiv:1603.08511: the ab plane is quantized into bins of side 10 (Sec. 2.1), a ground-truth
colour is soft-encoded onto its 5 nearest bins with a Gaussian kernel (sigma = 5), rare colours
are up-weighted by class rebalancing (eq. 3-4), and a predicted bin distribution is turned back
into a colour with the annealed mean (eq. 5).

Conventions: images are float tensors ``(B, 3, H, W)`` holding sRGB in ``[0, 1]``; Lab tensors are
``(B, 3, H, W)`` with L in ``[0, 100]`` and a, b roughly in ``[-110, 110]``; ab tensors are the last
two Lab channels, ``(B, 2, H, W)``; bin centres are ``(Q, 2)`` rows of (a, b).

Every function works on whatever device its inputs live on.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from selfsup.errors import SelfSupError

__all__ = [
    "rgb_to_lab",
    "lab_to_rgb",
    "gray_of_lightness",
    "ab_bins",
    "encode_ab",
    "decode_ab",
    "smooth_distribution",
    "rebalance_weights",
]

# sRGB primaries to CIE XYZ under D65 (IEC 61966-2-1).
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
# The white point is taken as the image of RGB (1, 1, 1) rather than the rounded published D65
# triple, so that white maps to a = b = 0 exactly instead of to about 1e-5.
_WHITE = tuple(sum(row) for row in _RGB_TO_XYZ)
_DELTA = 6.0 / 29.0
# The sRGB curve's linear segment ends at 0.04045 in gamma space; its image under the linear
# segment is used as the threshold of the inverse so both directions switch at the same point.
_GAMMA_KNEE = 0.04045
_LINEAR_KNEE = _GAMMA_KNEE / 12.92


def _check_image(x: Tensor, name: str, channels: int) -> None:
    if not isinstance(x, Tensor):
        raise SelfSupError(f"{name} must be a torch.Tensor, got {type(x).__name__}; convert it with torch.as_tensor.")
    if x.ndim != 4 or x.shape[1] != channels:
        raise SelfSupError(
            f"{name} must have shape (B, {channels}, H, W), got {tuple(x.shape)}; "
            f"add a batch dimension with x.unsqueeze(0) or select {channels} channels."
        )
    if not x.is_floating_point():
        raise SelfSupError(
            f"{name} must be a floating-point tensor, got {x.dtype}; convert uint8 images with x.float() / 255."
        )


def _matrix(dtype: torch.dtype, device: torch.device, inverse: bool) -> Tensor:
    # Inverting in float64 keeps the round trip error at the level of the working dtype.
    m = torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)
    if inverse:
        m = torch.linalg.inv(m)
    return m.to(dtype=dtype, device=device)


def _srgb_to_linear(c: Tensor) -> Tensor:
    # clamp keeps pow's argument positive on the unused branch, so gradients stay finite.
    power = ((c.clamp_min(_GAMMA_KNEE) + 0.055) / 1.055) ** 2.4
    return torch.where(c <= _GAMMA_KNEE, c / 12.92, power)


def _linear_to_srgb(c: Tensor) -> Tensor:
    # Odd extension: out-of-gamut Lab colours give negative linear RGB, which must not become NaN
    # when the caller asks for unclamped output.
    mag = c.abs()
    power = 1.055 * mag.clamp_min(_LINEAR_KNEE) ** (1.0 / 2.4) - 0.055
    return torch.sign(c) * torch.where(mag <= _LINEAR_KNEE, 12.92 * mag, power)


def _lab_f(t: Tensor) -> Tensor:
    cube_root = t.clamp_min(_DELTA**3) ** (1.0 / 3.0)
    return torch.where(t > _DELTA**3, cube_root, t / (3 * _DELTA**2) + 4.0 / 29.0)


def _lab_f_inv(t: Tensor) -> Tensor:
    return torch.where(t > _DELTA, t**3, 3 * _DELTA**2 * (t - 4.0 / 29.0))


def _rgb_to_lab_channels_last(rgb: Tensor) -> Tensor:
    """(..., 3) sRGB -> (..., 3) Lab; shared by the public function and the gamut sampler."""
    lin = _srgb_to_linear(rgb)
    xyz = lin @ _matrix(rgb.dtype, rgb.device, inverse=False).T
    xyz = xyz / torch.tensor(_WHITE, dtype=rgb.dtype, device=rgb.device)
    f = _lab_f(xyz)
    fx, fy, fz = f.unbind(-1)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-1)


def rgb_to_lab(x: Tensor) -> Tensor:
    """Convert sRGB images in ``[0, 1]`` to CIE Lab (D65 white, sRGB transfer curve).

    The Lab space is the one Zhang, Isola & Efros (2016), "Colorful Image Colorization",
    arXiv:1603.08511, predict in: L is the network input, ab the target.

    Args:
        x: float tensor ``(B, 3, H, W)`` with values in ``[0, 1]``.

    Returns:
        Tensor ``(B, 3, H, W)`` of the same dtype: L in ``[0, 100]``, a and b roughly in ``[-110, 110]``.
    """
    _check_image(x, "rgb_to_lab input", 3)
    if x.numel() and (x.min() < -1e-3 or x.max() > 1.0 + 1e-3):
        raise SelfSupError(
            f"rgb_to_lab expects sRGB values in [0, 1], got range [{x.min().item():.3g}, {x.max().item():.3g}]; "
            "divide 0-255 images by 255 and undo any mean/std normalisation first."
        )
    lab = _rgb_to_lab_channels_last(x.clamp(0.0, 1.0).movedim(1, -1))
    return lab.movedim(-1, 1)


def lab_to_rgb(lab: Tensor, clamp: bool = True) -> Tensor:
    """Convert CIE Lab (D65 white) back to sRGB; the inverse of :func:`rgb_to_lab`.

    Used to render colorization outputs (Zhang et al. 2016, arXiv:1603.08511).

    Args:
        lab: float tensor ``(B, 3, H, W)`` with L, a, b channels.
        clamp: clip the result to ``[0, 1]``. Lab colours outside the sRGB gamut (possible for
            predicted ab values) otherwise give components outside that range.

    Returns:
        Tensor ``(B, 3, H, W)`` of sRGB values.
    """
    _check_image(lab, "lab_to_rgb input", 3)
    L, a, b = lab.unbind(1)
    fy = (L + 16.0) / 116.0
    f = torch.stack((fy + a / 500.0, fy, fy - b / 200.0), dim=-1)
    xyz = _lab_f_inv(f) * torch.tensor(_WHITE, dtype=lab.dtype, device=lab.device)
    lin = xyz @ _matrix(lab.dtype, lab.device, inverse=True).T
    rgb = _linear_to_srgb(lin).movedim(-1, 1)
    return rgb.clamp(0.0, 1.0) if clamp else rgb


def gray_of_lightness(rgb: Tensor) -> Tensor:
    """The grey sRGB image ``(B, 3, H, W)`` of the same CIE L as ``rgb`` (a and b set to 0): the
    input colorization's encoder sees (Zhang et al. 2016, arXiv:1603.08511)."""
    lab = rgb_to_lab(rgb)
    return lab_to_rgb(torch.cat((lab[:, :1], torch.zeros_like(lab[:, 1:])), 1))


@functools.lru_cache(maxsize=8)
def _srgb_gamut_bins(grid: float, margin: float, samples_per_channel: int) -> Tensor:
    # The ab footprint of the sRGB solid equals the footprint of its surface: along any line of
    # constant ab the body's lightest point is on its boundary, and the boundary of the solid is
    # the image of the cube's faces. Sampling the six faces is therefore exact and ~n/6 times
    # cheaper than filling the cube.
    v = torch.linspace(0.0, 1.0, samples_per_channel, dtype=torch.float64)
    uu, vv = torch.meshgrid(v, v, indexing="ij")
    uu, vv = uu.reshape(-1), vv.reshape(-1)
    faces = []
    for axis in range(3):
        for value in (0.0, 1.0):
            cols = [uu, vv]
            cols.insert(axis, torch.full_like(uu, value))
            faces.append(torch.stack(cols, dim=-1))
    ab = _rgb_to_lab_channels_last(torch.cat(faces))[:, 1:]
    return _bins_hit(ab, grid, margin)


def _bins_hit(ab: Tensor, grid: float, margin: float) -> Tensor:
    # A sample's square [ab - margin, ab + margin] can touch several bins; every integer bin index
    # between its corners is kept.
    lo = torch.floor((ab - margin) / grid + 0.5).long()
    hi = torch.floor((ab + margin) / grid + 0.5).long()
    span = int((hi - lo).max().item())
    base = lo.min(dim=0).values
    width = int((hi.max() - base.min()).item()) + 1
    keys = []
    for da in range(span + 1):
        for db in range(span + 1):
            idx = lo + torch.tensor([da, db], device=lo.device)
            idx = idx[(idx <= hi).all(dim=1)] - base
            # one integer key per bin: 1-D unique is far cheaper than unique over rows
            keys.append(torch.unique(idx[:, 0] * width + idx[:, 1]))
    keys = torch.unique(torch.cat(keys))  # sorted, i.e. by a then b
    idx = torch.stack((keys // width, keys % width), dim=1) + base
    return idx.to(torch.float64) * grid


def ab_bins(
    grid: float = 10.0,
    gamut: Tensor | None = None,
    margin: float = 0.0,
    samples_per_channel: int = 512,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """In-gamut ab bin centres of a square grid of side ``grid`` (Zhang et al. 2016, Sec. 2.1).

    Zhang, Isola & Efros (2016), "Colorful Image Colorization", arXiv:1603.08511, quantize ab with
    grid size 10 and keep the Q = 313 in-gamut bins. Here a bin (centre ``grid * (i, j)``, extent
    ``± grid / 2``) is kept when some colour of the gamut falls inside it. The gamut is sampled
    densely from the sRGB cube (its six faces, which have the same ab footprint as the whole
    solid) and converted with :func:`rgb_to_lab`.

    With the defaults this yields **262** bins, not 313 (the count is stable from 512 up to 2048
    samples per edge): the strict "hit" criterion on the exact sRGB gamut is tighter than the
    paper's published set, whose exact construction the paper does not specify. ``margin`` also
    keeps bins within that many ab units (Chebyshev) of a gamut colour; ``margin=5`` gives 309
    bins, closer to the paper's count.

    Args:
        grid: bin side in ab units.
        gamut: optional ``(N, 2)`` ab samples (e.g. a dataset's pixels) defining the gamut instead
            of the sRGB cube.
        margin: tolerance in ab units, ``0 <= margin``.
        samples_per_channel: sRGB sampling density per cube edge (ignored when ``gamut`` is given).
        dtype, device: of the returned tensor.

    Returns:
        ``(Q, 2)`` tensor of (a, b) centres, sorted by a then b; deterministic.
    """
    if not (isinstance(grid, (int, float)) and grid > 0 and math.isfinite(grid)):
        raise SelfSupError(f"ab_bins grid must be a positive number, got {grid!r}; the paper uses 10.")
    if not (isinstance(margin, (int, float)) and 0 <= margin < 10 * grid):
        raise SelfSupError(f"ab_bins margin must be in [0, 10 * grid), got {margin!r}; use 0 for the strict gamut.")
    if gamut is None:
        if not (isinstance(samples_per_channel, int) and samples_per_channel >= 2):
            raise SelfSupError(
                f"ab_bins samples_per_channel must be an int >= 2, got {samples_per_channel!r}; 512 is ample."
            )
        centers = _srgb_gamut_bins(float(grid), float(margin), samples_per_channel)
    else:
        if not isinstance(gamut, Tensor) or gamut.ndim != 2 or gamut.shape[1] != 2 or gamut.shape[0] == 0:
            shape = tuple(gamut.shape) if isinstance(gamut, Tensor) else type(gamut).__name__
            raise SelfSupError(
                f"ab_bins gamut must be a non-empty (N, 2) tensor of ab values, got {shape}; "
                "pass lab[:, 1:].permute(0, 2, 3, 1).reshape(-1, 2)."
            )
        centers = _bins_hit(gamut.detach().to("cpu", torch.float64), float(grid), float(margin))
    return centers.to(dtype=dtype, device=device)


def _check_centers(centers: Tensor, name: str) -> None:
    if not isinstance(centers, Tensor) or centers.ndim != 2 or centers.shape[1] != 2 or centers.shape[0] == 0:
        shape = tuple(centers.shape) if isinstance(centers, Tensor) else type(centers).__name__
        raise SelfSupError(f"{name} centers must be a non-empty (Q, 2) tensor, got {shape}; build it with ab_bins().")


def encode_ab(
    ab: Tensor,
    centers: Tensor,
    sigma: float = 5.0,
    neighbors: int = 5,
    dense: bool = True,
    chunk_size: int = 65536,
) -> Tensor | tuple[Tensor, Tensor]:
    """Soft-encode ab values onto their nearest bins (Zhang et al. 2016, Sec. 2.1).

    Zhang, Isola & Efros (2016), "Colorful Image Colorization", arXiv:1603.08511: each pixel's
    ground-truth ab is spread over its ``neighbors`` nearest bin centres with weights proportional to
    ``exp(-d^2 / (2 sigma^2))``, ``d`` the Euclidean ab distance; the weights sum to 1.

    Args:
        ab: float ``(B, 2, H, W)`` a, b channels.
        centers: ``(Q, 2)`` bin centres from :func:`ab_bins`.
        sigma: kernel width in ab units (paper: 5).
        neighbors: bins per pixel (paper: 5), ``1 <= neighbors <= Q``; 1 gives a hard one-hot code.
        dense: return the full ``(B, Q, H, W)`` target; otherwise the sparse pair
            ``(indices (B, k, H, W) long, weights (B, k, H, W))`` ordered from nearest to farthest,
            which is ``Q / k`` times smaller.
        chunk_size: pixels processed at once, bounding the ``chunk x Q`` distance matrix.

    Returns:
        The dense target or the sparse pair, in ``ab``'s dtype and device.
    """
    _check_image(ab, "encode_ab ab", 2)
    _check_centers(centers, "encode_ab")
    q = centers.shape[0]
    if not (isinstance(neighbors, int) and 1 <= neighbors <= q):
        raise SelfSupError(f"encode_ab neighbors must be an int in [1, {q}], got {neighbors!r}; the paper uses 5.")
    if not (isinstance(sigma, (int, float)) and sigma > 0):
        raise SelfSupError(f"encode_ab sigma must be positive, got {sigma!r}; the paper uses 5.")
    if not (isinstance(chunk_size, int) and chunk_size > 0):
        raise SelfSupError(f"encode_ab chunk_size must be a positive int, got {chunk_size!r}.")
    b, _, h, w = ab.shape
    pts = ab.movedim(1, -1).reshape(-1, 2)
    c = centers.to(device=ab.device, dtype=ab.dtype)
    idx_parts, wt_parts = [], []
    for start in range(0, pts.shape[0], chunk_size):
        part = pts[start : start + chunk_size]
        d2 = (part[:, None, :] - c[None, :, :]).pow(2).sum(-1)
        near_d2, near_idx = torch.topk(d2, neighbors, dim=1, largest=False, sorted=True)
        # softmax rather than exp/sum: pixels far from every bin would otherwise underflow to 0/0.
        wt_parts.append(torch.softmax(-near_d2 / (2.0 * sigma**2), dim=1))
        idx_parts.append(near_idx)
    idx = torch.cat(idx_parts).reshape(b, h, w, neighbors).permute(0, 3, 1, 2)
    wt = torch.cat(wt_parts).reshape(b, h, w, neighbors).permute(0, 3, 1, 2)
    if not dense:
        return idx, wt
    out = torch.zeros(b, q, h, w, dtype=ab.dtype, device=ab.device)
    return out.scatter_(1, idx, wt)


def decode_ab(probs: Tensor, centers: Tensor, temperature: float = 0.38, from_logits: bool = False) -> Tensor:
    """Annealed-mean decoding of a bin distribution to ab (Zhang et al. 2016, eq. 5).

    Zhang, Isola & Efros (2016), "Colorful Image Colorization", arXiv:1603.08511, re-normalise the
    predicted distribution ``z`` as ``exp(log z / T) / sum exp(log z / T)`` and take its mean over the
    bin centres. ``T = 1`` is the plain mean (desaturated), ``T -> 0`` the mode (vivid but patchy);
    the paper picks ``T = 0.38``. ``temperature=0`` returns the mode exactly.

    Args:
        probs: ``(B, Q, H, W)`` non-negative distribution over bins (or logits, see ``from_logits``).
        centers: ``(Q, 2)`` bin centres.
        temperature: ``T >= 0``.
        from_logits: ``probs`` holds unnormalised log-probabilities (network output).

    Returns:
        ``(B, 2, H, W)`` ab values.
    """
    _check_centers(centers, "decode_ab")
    if not isinstance(probs, Tensor) or probs.ndim != 4 or probs.shape[1] != centers.shape[0]:
        shape = tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__
        raise SelfSupError(
            f"decode_ab probs must have shape (B, Q={centers.shape[0]}, H, W), got {shape}; "
            "use the same centers the targets were encoded with."
        )
    if not probs.is_floating_point():
        raise SelfSupError(f"decode_ab probs must be floating point, got {probs.dtype}; call .float() first.")
    if not (isinstance(temperature, (int, float)) and temperature >= 0 and math.isfinite(temperature)):
        raise SelfSupError(f"decode_ab temperature must be >= 0, got {temperature!r}; the paper uses 0.38.")
    if from_logits:
        log_z = torch.log_softmax(probs, dim=1)
    else:
        if probs.numel() and probs.min() < 0:
            raise SelfSupError(
                "decode_ab probs has negative entries; pass probabilities, or logits with from_logits=True."
            )
        log_z = torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))
    c = centers.to(device=probs.device, dtype=probs.dtype)
    if temperature == 0:
        return c[log_z.argmax(dim=1)].movedim(-1, 1)
    weights = torch.softmax(log_z / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", weights, c)


def _check_distribution(p: Tensor, name: str) -> Tensor:
    if not isinstance(p, Tensor) or p.ndim != 1 or p.numel() == 0:
        shape = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
        raise SelfSupError(f"{name} must be a non-empty 1-D tensor over the Q bins, got {shape}.")
    p = p.to(torch.float64) if not p.is_floating_point() else p
    total = p.sum()
    if p.min() < 0 or not torch.isfinite(total) or total <= 0:
        raise SelfSupError(f"{name} must be non-negative with a positive finite sum; pass bin counts or probabilities.")
    return p / total


def smooth_distribution(p: Tensor, centers: Tensor, sigma: float = 5.0) -> Tensor:
    """Gaussian smoothing of a distribution over ab bins, as used for rebalancing.

    Zhang, Isola & Efros (2016), arXiv:1603.08511, Sec. 2.1, smooth the empirical colour
    distribution with a Gaussian kernel before computing class weights. Each bin's mass is spread
    over the in-gamut bins with weights ``exp(-d^2 / (2 sigma^2))`` renormalised per source bin, so
    the result still sums to 1 and no mass leaks to out-of-gamut bins.

    Args:
        p: ``(Q,)`` counts or probabilities (normalised internally).
        centers: ``(Q, 2)`` bin centres.
        sigma: kernel width in ab units; 0 returns ``p`` normalised.

    Returns:
        ``(Q,)`` smoothed probabilities.
    """
    _check_centers(centers, "smooth_distribution")
    p = _check_distribution(p, "smooth_distribution p")
    if p.shape[0] != centers.shape[0]:
        raise SelfSupError(
            f"smooth_distribution got {p.shape[0]} probabilities for {centers.shape[0]} bin centres; "
            "the histogram must be over the same bins."
        )
    if not (isinstance(sigma, (int, float)) and sigma >= 0):
        raise SelfSupError(f"smooth_distribution sigma must be >= 0, got {sigma!r}; the paper uses 5.")
    if sigma == 0:
        return p
    c = centers.to(device=p.device, dtype=p.dtype)
    kernel = torch.exp(-torch.cdist(c, c).pow(2) / (2.0 * sigma**2))
    kernel = kernel / kernel.sum(dim=0, keepdim=True)  # column r: where source bin r's mass goes
    return kernel @ p


def rebalance_weights(
    empirical_distribution: Tensor,
    lamb: float = 0.5,
    sigma: float = 5.0,
    centers: Tensor | None = None,
) -> Tensor:
    """Class-rebalancing weights for colour bins (Zhang et al. 2016, eq. 3-4).

    Zhang, Isola & Efros (2016), "Colorful Image Colorization", arXiv:1603.08511: with ``p~`` the
    empirical bin distribution smoothed by a Gaussian of width ``sigma`` (see
    :func:`smooth_distribution`), ``w ∝ ((1 - lamb) p~ + lamb / Q)^-1``, scaled so that
    ``sum_q p~_q w_q = 1``. Rare colours get larger weights; ``lamb = 1`` gives uniform weights.

    Args:
        empirical_distribution: ``(Q,)`` bin counts or probabilities over the training set.
        lamb: mixing weight with the uniform distribution, in ``[0, 1]`` (paper: 0.5).
        sigma: smoothing width in ab units (paper: 5); 0 disables smoothing.
        centers: ``(Q, 2)`` bin centres the histogram was taken over; defaults to :func:`ab_bins`
            with its defaults, which only fits a ``Q`` equal to its length.

    Returns:
        ``(Q,)`` weights in the histogram's floating dtype (float64 for integer counts).
    """
    if not (isinstance(lamb, (int, float)) and 0 <= lamb <= 1):
        raise SelfSupError(f"rebalance_weights lamb must be in [0, 1], got {lamb!r}; the paper uses 0.5.")
    p = _check_distribution(empirical_distribution, "rebalance_weights empirical_distribution")
    if centers is None:
        centers = ab_bins(dtype=p.dtype, device=p.device)
        if centers.shape[0] != p.shape[0]:
            raise SelfSupError(
                f"rebalance_weights got {p.shape[0]} bins but the default ab_bins() has {centers.shape[0]}; "
                "pass centers= for the bins the histogram was computed over."
            )
    p_smooth = smooth_distribution(p, centers, sigma)
    if lamb == 0 and (p_smooth == 0).any():
        raise SelfSupError(
            "rebalance_weights with lamb=0 gives infinite weight to bins of zero probability; "
            "use lamb > 0 (the paper uses 0.5) or smooth with sigma > 0."
        )
    w = 1.0 / ((1.0 - lamb) * p_smooth + lamb / p.shape[0])
    return w / (p_smooth * w).sum()
