"""Input/label generation for classic pretext tasks: rotation, jigsaw, relative position,
counting and inpainting.

Each function takes a batch ``x`` of shape ``(B, C, H, W)`` (any dtype unless resampling is
involved) and returns tensors on ``x``'s device. Randomness comes from an optional
``torch.Generator``; numbers are drawn on the generator's device and moved to ``x``'s, so a CPU
generator can drive GPU batches reproducibly. With ``generator=None`` torch's global RNG is used.

Index conventions shared by all functions: row index grows downwards, column index grows to the
right, grid cells and tiles are numbered in row-major order.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import SelfSupError

__all__ = [
    "rotate_batch",
    "maximal_hamming_permutations",
    "pairwise_hamming",
    "jigsaw_tiles",
    "apply_permutation",
    "RELATIVE_POSITION_OFFSETS",
    "relative_position_pairs",
    "counting_tiles",
    "random_downsample",
    "random_grayscale",
    "central_mask",
    "random_region_mask",
    "apply_mask",
]

# Label k of relative_position_pairs: (row offset, column offset) of the neighbour in patch units,
# row-major over the 3x3 grid with the centre left out.
RELATIVE_POSITION_OFFSETS: tuple[tuple[int, int], ...] = (
    (-1, -1), (-1, 0), (-1, 1),
    (0, -1), (0, 1),
    (1, -1), (1, 0), (1, 1),
)  # fmt: skip

_DOWNSAMPLE_METHODS = ("bilinear", "bicubic", "area", "nearest")
_MAX_PERMUTATION_TILES = 10  # 10! rows of int8 is 36 MB; 11! would be 440 MB


def _check_batch(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise SelfSupError(f"{name} must be a torch.Tensor, got {type(x).__name__}; convert it with torch.as_tensor.")
    if x.ndim != 4:
        raise SelfSupError(
            f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}; add a batch dimension with x.unsqueeze(0)."
        )


def _check_generator(generator: torch.Generator | None, name: str) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise SelfSupError(
            f"{name} generator must be a torch.Generator or None, got {type(generator).__name__}; "
            "create one with torch.Generator().manual_seed(seed)."
        )


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _randint_upto(
    high: Tensor | int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Uniform integers in ``[0, high]`` (inclusive), ``high`` broadcastable to ``shape``."""
    high_t = torch.as_tensor(high, device=device)
    u = _uniform(shape, generator, device)
    # the clamp guards against u rounding up to exactly 1.0 in float32
    return torch.minimum((u * (high_t + 1)).floor().long(), high_t.long())


def _gather_crops(x: Tensor, top: Tensor, left: Tensor, height: int, width: int) -> Tensor:
    """Crops of ``x`` at per-sample, per-crop corners ``top, left (B, K)`` -> ``(B, K, C, h, w)``."""
    b = x.shape[0]
    rows = top[..., None] + torch.arange(height, device=x.device)  # (B, K, h)
    cols = left[..., None] + torch.arange(width, device=x.device)  # (B, K, w)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    # advanced indices separated by a slice put their broadcast dims (B, K, h, w) first, C last
    crops = x[batch, :, rows[..., :, None], cols[..., None, :]]
    return crops.permute(0, 1, 4, 2, 3)


def _positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SelfSupError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


# --------------------------------------------------------------------------------------- rotation


def rotate_batch(x: Tensor) -> tuple[Tensor, Tensor]:
    """All four 90-degree rotations of every image, labelled by rotation.

    Gidaris, Singh & Komodakis (2018), "Unsupervised Representation Learning by Predicting Image
    Rotations", arXiv:1803.07728: the network classifies which of 0, 90, 180, 270 degrees an image
    was rotated by; all four copies of an image go in the same batch.

    Label ``k`` means the image was rotated by ``k * 90`` degrees **counter-clockwise** as displayed
    (row 0 at the top), i.e. ``torch.rot90(x, k, dims=(-2, -1))``, the same as ``np.rot90(img, k)``.

    Args:
        x: ``(B, C, H, W)`` with ``H == W`` (a rotated non-square image would change shape).

    Returns:
        ``(x_rot (4B, C, H, W), labels (4B,) long)``, rotation-major: ``x_rot[k * B + i]`` is image
        ``i`` rotated by ``k * 90`` degrees and ``labels[k * B + i] == k``.
    """
    _check_batch(x, "rotate_batch input")
    if x.shape[-2] != x.shape[-1]:
        raise SelfSupError(
            f"rotate_batch needs square images, got H={x.shape[-2]}, W={x.shape[-1]}; "
            "center-crop or resize them to a square first."
        )
    x_rot = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return x_rot, labels


# ----------------------------------------------------------------------------------------- jigsaw


@functools.lru_cache(maxsize=2)
def _all_permutations(tiles: int) -> np.ndarray:
    # Built by inserting the newest element at every position of the smaller set, so the work is
    # `tiles` vectorised numpy passes instead of tiles! Python-level tuples.
    perms = np.zeros((1, 0), dtype=np.int8)
    for k in range(tiles):
        perms = np.concatenate([np.insert(perms, pos, k, axis=1) for pos in range(k + 1)])
    perms.setflags(write=False)
    return perms


def maximal_hamming_permutations(n: int = 100, tiles: int = 9, seed: int = 0, criterion: str = "min") -> Tensor:
    """Greedy permutation set with large Hamming distances for the jigsaw task.

    Noroozi & Favaro (2016), "Unsupervised Learning of Visual Representations by Solving Jigsaw
    Puzzles", arXiv:1603.09246, Algorithm 1: start from a random permutation of all ``tiles!`` ones
    and repeatedly add the candidate farthest from the already chosen set. The candidate pool is
    the full ``tiles! x tiles`` int8 table; each step updates every candidate's distances to the
    newest member in one vectorised pass.

    ``criterion`` selects "farthest":

    * ``"min"`` (default): maximise the minimal Hamming distance to the chosen set (max-min),
      breaking ties by the larger summed distance, then by table order. For ``n=100, tiles=9``
      every pair of the result differs in at least **6** of the 9 positions (mean 8.08, for seeds
      0-2 alike; n=1000 gives min 5, mean 8.01).
    * ``"sum"``: maximise the summed distance, which is the paper's ``1^T D`` literally; its
      minimal pairwise distance is much lower (2 for ``n=100``, mean 8.08; the paper's Table 3
      reports minimal distances of 2-3 for its sets).

    Args:
        n: number of permutations, ``1 <= n <= tiles!``.
        tiles: permutation length, ``2 <= tiles <= 10``.
        seed: seeds the random first permutation; the rest is deterministic.
        criterion: ``"min"`` or ``"sum"``.

    Returns:
        ``(n, tiles)`` long tensor; row ``i`` is the permutation with label ``i``.
    """
    tiles = _positive_int(tiles, "maximal_hamming_permutations tiles", minimum=2)
    if tiles > _MAX_PERMUTATION_TILES:
        raise SelfSupError(
            f"maximal_hamming_permutations enumerates all tiles! permutations; tiles={tiles} is too many "
            f"(max {_MAX_PERMUTATION_TILES}). Use a 3x3 grid (tiles=9) as in the paper."
        )
    total = math.factorial(tiles)
    n = _positive_int(n, "maximal_hamming_permutations n")
    if n > total:
        raise SelfSupError(f"maximal_hamming_permutations n={n} exceeds the {total} permutations of {tiles} tiles.")
    if criterion not in ("min", "sum"):
        raise SelfSupError(f"maximal_hamming_permutations criterion must be 'min' or 'sum', got {criterion!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise SelfSupError(f"maximal_hamming_permutations seed must be an int, got {seed!r}.")

    pool = _all_permutations(tiles)
    # One contiguous row per tile position: comparing a column at a time is ~20x faster than a
    # reduction along the 9-byte rows of the table.
    columns = np.ascontiguousarray(pool.T)
    rng = np.random.default_rng(int(seed))
    chosen = [int(rng.integers(total))]
    taken = np.zeros(total, dtype=bool)
    dist_min = np.full(total, tiles + 1, dtype=np.int16)
    dist_sum = np.zeros(total, dtype=np.int64)
    for _ in range(n - 1):
        newest = chosen[-1]
        taken[newest] = True
        d = np.zeros(total, dtype=np.int16)
        for position, value in enumerate(pool[newest]):
            d += columns[position] != value
        np.minimum(dist_min, d, out=dist_min)
        dist_sum += d
        if criterion == "min":
            # taken rows have distance 0 to themselves, so they can never be the maximum again
            ties = np.flatnonzero(dist_min == dist_min.max())
            chosen.append(int(ties[np.argmax(dist_sum[ties])]))
        else:
            chosen.append(int(np.argmax(np.where(taken, -1, dist_sum))))
    return torch.from_numpy(pool[chosen].astype(np.int64))


def pairwise_hamming(permutations: Tensor) -> Tensor:
    """``(n, n)`` matrix of Hamming distances (number of differing positions) between rows.

    A diagnostic for permutation sets of Noroozi & Favaro (2016), arXiv:1603.09246, whose Table 3
    relates the minimal and average distance of a set to transfer performance. The minimal
    off-diagonal entry is the set's minimal distance.
    """
    if not isinstance(permutations, Tensor) or permutations.ndim != 2:
        raise SelfSupError(
            "pairwise_hamming expects an (n, tiles) tensor; build one with maximal_hamming_permutations."
        )
    return (permutations[:, None, :] != permutations[None, :, :]).sum(-1)


def _jigsaw_tile_size(cell: int, tile_size: int | None, gap: int | None) -> int:
    if tile_size is None and gap is None:
        # the paper cuts 64-pixel tiles from 75-pixel cells
        return max(1, round(cell * 64 / 75))
    if gap is not None:
        gap = _positive_int(gap, "jigsaw_tiles gap", minimum=0)
    if tile_size is not None:
        tile_size = _positive_int(tile_size, "jigsaw_tiles tile_size")
    if tile_size is None:
        tile_size = cell - gap
    if tile_size < 1 or tile_size > cell or (gap is not None and tile_size + gap != cell):
        raise SelfSupError(
            f"jigsaw_tiles needs 1 <= tile_size <= cell and tile_size + gap == cell, with cell={cell} "
            f"(image side // grid); got tile_size={tile_size}, gap={gap}. Give only one of the two."
        )
    return tile_size


def jigsaw_tiles(
    x: Tensor,
    grid: int = 3,
    tile_size: int | None = None,
    gap: int | None = None,
    jitter: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Cut each image into a ``grid x grid`` puzzle of slightly shrunken, randomly shifted tiles.

    Noroozi & Favaro (2016), "Unsupervised Learning of Visual Representations by Solving Jigsaw
    Puzzles", arXiv:1603.09246, split a 225-pixel crop into 75-pixel cells and crop a 64-pixel tile
    at a random position inside each cell, so tiles do not share edges the network could match
    instead of learning content.

    The image is divided into cells of ``H // grid`` by ``W // grid`` pixels (remainder rows and
    columns at the bottom/right are unused). Tile ``k`` (row-major, ``k = r * grid + c``) is a
    ``t x t`` crop inside cell ``(r, c)``, where ``t = cell - gap`` and the cell's slack
    ``cell - t`` absorbs the offset: with ``jitter`` the offset is uniform in ``[0, slack]``,
    independently per axis, tile and sample; without it the tile is centred.

    Args:
        x: ``(B, C, H, W)``.
        grid: tiles per side (paper: 3).
        tile_size, gap: give at most one (``tile_size + gap`` equals the smaller cell side); with
            neither, ``tile_size = round(cell * 64 / 75)`` as in the paper.
        jitter: random offsets, else centred tiles.
        generator: source of the offsets.

    Returns:
        ``(B, grid * grid, C, t, t)`` tiles in row-major cell order.
    """
    _check_batch(x, "jigsaw_tiles input")
    _check_generator(generator, "jigsaw_tiles")
    grid = _positive_int(grid, "jigsaw_tiles grid")
    b, _, h, w = x.shape
    cell_h, cell_w = h // grid, w // grid
    if min(cell_h, cell_w) < 1:
        raise SelfSupError(f"jigsaw_tiles: a {h}x{w} image is too small for a {grid}x{grid} grid; use a larger crop.")
    t = _jigsaw_tile_size(min(cell_h, cell_w), tile_size, gap)
    k = grid * grid
    cell_idx = torch.arange(k, device=x.device)
    base_top = (cell_idx // grid) * cell_h
    base_left = (cell_idx % grid) * cell_w
    slack_h, slack_w = cell_h - t, cell_w - t
    if jitter:
        off_top = _randint_upto(slack_h, (b, k), generator, x.device)
        off_left = _randint_upto(slack_w, (b, k), generator, x.device)
    else:
        off_top = torch.full((b, k), slack_h // 2, device=x.device)
        off_left = torch.full((b, k), slack_w // 2, device=x.device)
    return _gather_crops(x, base_top + off_top, base_left + off_left, t, t)


def apply_permutation(tiles: Tensor, perm_index: Tensor, permutations: Tensor) -> tuple[Tensor, Tensor]:
    """Shuffle each sample's tiles by one permutation of a fixed set; the label is its index.

    Noroozi & Favaro (2016), arXiv:1603.09246: the network sees the shuffled tiles and classifies
    which permutation of the set (see :func:`maximal_hamming_permutations`) was applied.

    Convention: ``out[b, j] = tiles[b, permutations[perm_index[b], j]]``, i.e. the tile at output
    position ``j`` is input tile ``perm[j]``. Solving the puzzle means predicting ``perm``; the
    original order is recovered by ``out[b, argsort(perm)]``.

    Args:
        tiles: ``(B, N, ...)`` tiles, e.g. from :func:`jigsaw_tiles`.
        perm_index: ``(B,)`` integer indices into ``permutations``, e.g.
            ``torch.randint(len(permutations), (B,), generator=g)``.
        permutations: ``(P, N)`` permutation set.

    Returns:
        ``(shuffled (B, N, ...), labels (B,) long)`` with ``labels == perm_index``.
    """
    if not isinstance(tiles, Tensor) or tiles.ndim < 2:
        raise SelfSupError("apply_permutation tiles must be a (B, N, ...) tensor; build it with jigsaw_tiles.")
    if not isinstance(permutations, Tensor) or permutations.ndim != 2 or permutations.shape[1] != tiles.shape[1]:
        shape = tuple(permutations.shape) if isinstance(permutations, Tensor) else type(permutations).__name__
        raise SelfSupError(
            f"apply_permutation permutations must be (P, {tiles.shape[1]}) to match {tiles.shape[1]} tiles, "
            f"got {shape}; use maximal_hamming_permutations(tiles={tiles.shape[1]})."
        )
    if (
        not isinstance(perm_index, Tensor)
        or perm_index.shape != (tiles.shape[0],)
        or perm_index.is_floating_point()
        or perm_index.dtype == torch.bool
    ):
        raise SelfSupError(
            f"apply_permutation perm_index must be an integer tensor of shape ({tiles.shape[0]},), "
            "one index per sample."
        )
    if perm_index.numel() and (perm_index.min() < 0 or perm_index.max() >= permutations.shape[0]):
        raise SelfSupError(
            f"apply_permutation perm_index values must lie in [0, {permutations.shape[0]}), the size of the set."
        )
    labels = perm_index.to(device=tiles.device, dtype=torch.long)
    order = permutations.to(tiles.device).long()[labels]  # (B, N)
    index = order.reshape(order.shape + (1,) * (tiles.ndim - 2)).expand_as(tiles)
    return torch.gather(tiles, 1, index), labels


# ------------------------------------------------------------------------------ relative position


def relative_position_pairs(
    x: Tensor,
    patch_size: int,
    gap: int | None = None,
    jitter: int | None = None,
    generator: torch.Generator | None = None,
    labels: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """A centre patch and one of its 8 neighbours per image, labelled by the neighbour's position.

    Doersch, Gupta & Efros (2015), "Unsupervised Visual Representation Learning by Context
    Prediction", arXiv:1505.05192: patches of a 3x3 layout are separated by a gap and each patch is
    shifted by a random jitter, so the network cannot solve the task by continuing edges or
    textures across the boundary (paper: 96-pixel patches, 48-pixel gap, jitter up to 7 pixels).

    Layout: neighbouring patch corners are ``patch_size + gap`` apart; each of the two patches is
    shifted by an independent uniform integer in ``[-jitter, jitter]`` per axis; the whole layout
    is placed at a uniformly random position where it fits, independently per sample. Label ``k``
    means the neighbour is at ``RELATIVE_POSITION_OFFSETS[k]`` (row, column) grid steps from the
    centre: 0 top-left, 1 top, 2 top-right, 3 left, 4 right, 5 bottom-left, 6 bottom, 7 bottom-right.

    The paper's countermeasures against chromatic aberration (colour projection or dropping) are not
    applied here; compose them separately if needed.

    Args:
        x: ``(B, C, H, W)`` with ``H, W >= 3 * patch_size + 2 * gap + 2 * jitter``.
        patch_size: patch side ``p``.
        gap: pixels between neighbouring patches before jitter (default ``p // 2``).
        jitter: maximal shift per patch and axis (default ``round(7 * p / 96)``).
        generator: source of positions, jitter and (if not given) labels.
        labels: optional ``(B,)`` labels in ``0..7`` to use instead of uniformly random ones.

    Returns:
        ``(center (B, C, p, p), neighbor (B, C, p, p), labels (B,) long)``.
    """
    _check_batch(x, "relative_position_pairs input")
    _check_generator(generator, "relative_position_pairs")
    p = _positive_int(patch_size, "relative_position_pairs patch_size")
    gap = p // 2 if gap is None else _positive_int(gap, "relative_position_pairs gap", minimum=0)
    jitter = round(7 * p / 96) if jitter is None else _positive_int(jitter, "relative_position_pairs jitter", minimum=0)
    b, _, h, w = x.shape
    extent = 3 * p + 2 * gap + 2 * jitter
    if h < extent or w < extent:
        raise SelfSupError(
            f"relative_position_pairs needs images of at least {extent}x{extent} "
            f"(3*patch_size + 2*gap + 2*jitter), got {h}x{w}; use a smaller patch_size, gap or jitter, "
            f"or views of at least {extent} px (views.size; data.image_size enlarges smaller images)."
        )
    dev = x.device
    if labels is None:
        labels = _randint_upto(7, (b,), generator, dev)
    else:
        if (
            not isinstance(labels, Tensor)
            or labels.shape != (b,)
            or labels.is_floating_point()
            or labels.dtype == torch.bool
        ):
            raise SelfSupError(f"relative_position_pairs labels must be an integer tensor of shape ({b},).")
        if labels.numel() and (labels.min() < 0 or labels.max() > 7):
            raise SelfSupError("relative_position_pairs labels must lie in 0..7 (see RELATIVE_POSITION_OFFSETS).")
        labels = labels.to(device=dev, dtype=torch.long)
    stride = p + gap
    # the layout's top-left patch corner, jitter margin included so every shifted patch stays inside
    origin_top = jitter + _randint_upto(h - extent, (b,), generator, dev)
    origin_left = jitter + _randint_upto(w - extent, (b,), generator, dev)
    shift = _randint_upto(2 * jitter, (4, b), generator, dev) - jitter
    offsets = torch.tensor(RELATIVE_POSITION_OFFSETS, device=dev)[labels]  # (B, 2)
    top = torch.stack((origin_top + stride + shift[0], origin_top + (1 + offsets[:, 0]) * stride + shift[1]), dim=1)
    left = torch.stack((origin_left + stride + shift[2], origin_left + (1 + offsets[:, 1]) * stride + shift[3]), dim=1)
    crops = _gather_crops(x, top, left, p, p)
    return crops[:, 0], crops[:, 1], labels


# --------------------------------------------------------------------------------------- counting


def counting_tiles(x: Tensor, grid: int = 2) -> Tensor:
    """The non-overlapping ``grid x grid`` tiles of each image.

    Noroozi, Pirsiavash & Favaro (2017), "Representation Learning by Learning to Count",
    arXiv:1708.06734: the features counted in the whole (downsampled) image must equal the sum of
    those counted in its 2x2 tiles.

    Args:
        x: ``(B, C, H, W)`` with ``H`` and ``W`` divisible by ``grid``.
        grid: tiles per side (paper: 2).

    Returns:
        ``(B, grid * grid, C, H // grid, W // grid)``; tile ``k = r * grid + c`` is
        ``x[:, :, r*h:(r+1)*h, c*w:(c+1)*w]``.
    """
    _check_batch(x, "counting_tiles input")
    grid = _positive_int(grid, "counting_tiles grid")
    b, c, h, w = x.shape
    if h % grid or w % grid:
        raise SelfSupError(
            f"counting_tiles needs H and W divisible by grid={grid}, got {h}x{w}; crop or resize to a multiple of it."
        )
    th, tw = h // grid, w // grid
    return x.reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, th, tw)


def _resample(x: Tensor, size: tuple[int, int], method: str) -> Tensor:
    if method in ("bilinear", "bicubic"):
        return F.interpolate(x, size=size, mode=method, align_corners=False)
    if method == "nearest":
        # "nearest-exact" samples pixel centres; plain "nearest" is biased towards the top-left
        return F.interpolate(x, size=size, mode="nearest-exact")
    return F.interpolate(x, size=size, mode="area")


def random_downsample(
    x: Tensor,
    size: int | tuple[int, int],
    generator: torch.Generator | None = None,
    per_sample: bool = False,
    methods: Sequence[str] = _DOWNSAMPLE_METHODS,
) -> Tensor:
    """Resize images to ``size`` with a randomly chosen interpolation method.

    Noroozi, Pirsiavash & Favaro (2017), "Representation Learning by Learning to Count",
    arXiv:1708.06734, downsample the whole image to the tile size with a randomly picked method so
    the network cannot tell the downsampled image from a tile by the artefacts of one fixed filter.

    Methods: ``"bilinear"``, ``"bicubic"`` (both ``align_corners=False``, no antialiasing; bicubic can
    overshoot the input range), ``"area"`` (box average) and ``"nearest"`` (pixel-centre sampling).

    Args:
        x: float ``(B, C, H, W)``.
        size: output side or ``(height, width)``.
        generator: source of the choice.
        per_sample: choose independently for every image instead of once for the batch.
        methods: the candidates, a non-empty subset of the four above.

    Returns:
        ``(B, C, height, width)`` in ``x``'s dtype.
    """
    _check_batch(x, "random_downsample input")
    _check_generator(generator, "random_downsample")
    if not x.is_floating_point():
        raise SelfSupError(f"random_downsample needs a floating-point batch, got {x.dtype}; call x.float() first.")
    out_size = (size, size) if isinstance(size, int) else tuple(size)
    if len(out_size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in out_size):
        raise SelfSupError(f"random_downsample size must be a positive int or (height, width), got {size!r}.")
    methods = tuple(methods)
    if not methods or any(m not in _DOWNSAMPLE_METHODS for m in methods):
        raise SelfSupError(
            f"random_downsample methods must be a non-empty subset of {_DOWNSAMPLE_METHODS}, got {methods}."
        )
    b = x.shape[0]
    if not per_sample:
        choice = int(_randint_upto(len(methods) - 1, (1,), generator, torch.device("cpu")).item())
        return _resample(x, out_size, methods[choice])
    choice = _randint_upto(len(methods) - 1, (b,), generator, x.device)
    out = x.new_empty((b, x.shape[1], *out_size))
    # one resampling call per method on the samples that drew it, not one per sample
    for i, method in enumerate(methods):
        sel = choice == i
        out[sel] = _resample(x[sel], out_size, method)
    return out


def random_grayscale(x: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Replace each RGB image by its luma, repeated over 3 channels, with probability ``p``.

    Noroozi, Pirsiavash & Favaro (2017), arXiv:1708.06734, occasionally convert training images to
    grayscale so counting features do not rely on colour alone. Luma uses the ITU-R BT.601 weights
    (0.299, 0.587, 0.114). Kept local to the pretext tools on purpose, independent of the
    augmentation pipeline.

    Args:
        x: float ``(B, 3, H, W)``.
        p: per-image probability in ``[0, 1]``.
        generator: source of the coin flips.

    Returns:
        ``(B, 3, H, W)``; unselected images are returned unchanged.
    """
    _check_batch(x, "random_grayscale input")
    _check_generator(generator, "random_grayscale")
    if x.shape[1] != 3 or not x.is_floating_point():
        raise SelfSupError(
            f"random_grayscale needs a float RGB batch (B, 3, H, W), got {tuple(x.shape)} {x.dtype}; "
            "convert with x.float() and check the channel count."
        )
    if not (isinstance(p, (int, float)) and 0 <= p <= 1):
        raise SelfSupError(f"random_grayscale p must be a probability in [0, 1], got {p!r}.")
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    gray = torch.einsum("bchw,c->bhw", x, weights)[:, None].expand_as(x)
    flip = _uniform((x.shape[0],), generator, x.device) < p
    return torch.where(flip[:, None, None, None], gray, x)


# ------------------------------------------------------------------------------------- inpainting


def _check_mask_shape(b: int, h: int, w: int, name: str) -> tuple[int, int, int]:
    return (
        _positive_int(b, f"{name} B"),
        _positive_int(h, f"{name} H"),
        _positive_int(w, f"{name} W"),
    )


def _check_fraction(fraction: float, name: str) -> float:
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise SelfSupError(f"{name} fraction must be in (0, 1], got {fraction!r}; the paper removes 0.25 of the area.")
    return float(fraction)


def central_mask(B: int, H: int, W: int, fraction: float = 0.25, device: torch.device | str | None = None) -> Tensor:
    """Mask of the central region removed by a context encoder.

    Pathak, Krähenbühl, Donahue, Darrell & Efros (2016), "Context Encoders: Feature Learning by
    Inpainting", arXiv:1604.07379: the central square covering 1/4 of the image (half its side)
    is removed and predicted from its surroundings.

    The region is a centred ``round(H * sqrt(fraction)) x round(W * sqrt(fraction))`` rectangle
    (a square for square images), starting at row ``(H - h) // 2`` and column ``(W - w) // 2``.
    The paper's slightly smaller reconstruction target with an overlapping border is left to the
    loss.

    Returns:
        bool ``(B, 1, H, W)``, True where pixels are removed.
    """
    B, H, W = _check_mask_shape(B, H, W, "central_mask")
    side = math.sqrt(_check_fraction(fraction, "central_mask"))
    mh, mw = max(1, round(H * side)), max(1, round(W * side))
    top, left = (H - mh) // 2, (W - mw) // 2
    mask = torch.zeros(B, 1, H, W, dtype=torch.bool, device=device)
    mask[:, :, top : top + mh, left : left + mw] = True
    return mask


def random_region_mask(
    B: int,
    H: int,
    W: int,
    generator: torch.Generator | None = None,
    mode: str = "blocks",
    fraction: float = 0.25,
    max_blocks: int = 16,
    block_side: tuple[float, float] = (0.1, 0.3),
    blob_resolution: int = 4,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random removal masks for context encoders.

    Pathak et al. (2016), "Context Encoders: Feature Learning by Inpainting", arXiv:1604.07379,
    besides the central region use (a) *random blocks*: several smaller, possibly overlapping
    rectangles covering up to 1/4 of the image, and (b) *random regions*: arbitrary shapes (they
    take PASCAL VOC segmentation masks, randomly deformed) covering about 1/4 of the image.

    * ``mode="blocks"``: up to ``max_blocks`` rectangles whose sides are uniform fractions
      ``block_side`` of ``H`` and ``W``, at uniform positions. A block is kept only if the union
      stays within ``fraction`` of the image, so coverage never exceeds it (and the first block is
      always kept when ``block_side[1] ** 2 <= fraction``).
    * ``mode="blobs"``: a stand-in for the segmentation shapes (no external data): uniform noise on
      a ``blob_resolution`` grid is upsampled bicubically to ``H x W`` and its top
      ``round(fraction * H * W)`` pixels are removed, giving smooth random blobs of exactly that area.

    Returns:
        bool ``(B, 1, H, W)``, True where pixels are removed.
    """
    B, H, W = _check_mask_shape(B, H, W, "random_region_mask")
    _check_generator(generator, "random_region_mask")
    fraction = _check_fraction(fraction, "random_region_mask")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if mode == "blobs":
        res = _positive_int(blob_resolution, "random_region_mask blob_resolution")
        noise = _uniform((B, 1, res, res), generator, dev)
        field = F.interpolate(noise, size=(H, W), mode="bicubic", align_corners=False).reshape(B, -1)
        k = round(fraction * H * W)
        mask = torch.zeros_like(field, dtype=torch.bool)
        if k:
            mask.scatter_(1, field.topk(k, dim=1).indices, True)
        return mask.reshape(B, 1, H, W)
    if mode != "blocks":
        raise SelfSupError(f"random_region_mask mode must be 'blocks' or 'blobs', got {mode!r}.")
    max_blocks = _positive_int(max_blocks, "random_region_mask max_blocks")
    lo, hi = (float(v) for v in block_side)
    if not 0 < lo <= hi <= 1:
        raise SelfSupError(f"random_region_mask block_side must satisfy 0 < low <= high <= 1, got {block_side!r}.")
    rows = torch.arange(H, device=dev)[None, :, None]
    cols = torch.arange(W, device=dev)[None, None, :]
    budget = fraction * H * W
    mask = torch.zeros(B, H, W, dtype=torch.bool, device=dev)
    # the loop runs over blocks (a handful), each step a batched tensor operation
    for _ in range(max_blocks):
        u = _uniform((4, B), generator, dev)
        bh = (H * (lo + (hi - lo) * u[0])).round().long().clamp(1, H)
        bw = (W * (lo + (hi - lo) * u[1])).round().long().clamp(1, W)
        top = (u[2] * (H - bh + 1)).floor().long().clamp_max(H - bh)
        left = (u[3] * (W - bw + 1)).floor().long().clamp_max(W - bw)
        block = (
            (rows >= top[:, None, None])
            & (rows < (top + bh)[:, None, None])
            & (cols >= left[:, None, None])
            & (cols < (left + bw)[:, None, None])
        )
        grown = mask | block
        fits = grown.sum(dim=(1, 2)) <= budget
        mask = torch.where(fits[:, None, None], grown, mask)
    return mask[:, None]


def apply_mask(x: Tensor, mask: Tensor, fill: float | Sequence[float] | Tensor = 0.0) -> Tensor:
    """Replace removed pixels by a constant per channel, typically the dataset mean.

    Pathak et al. (2016), "Context Encoders: Feature Learning by Inpainting", arXiv:1604.07379, fill
    the dropped region with the mean pixel value before encoding. For inputs standardised to zero
    mean per channel, the default ``fill=0`` is that mean.

    Args:
        x: ``(B, C, H, W)``.
        mask: bool ``(B, 1, H, W)`` or ``(B, C, H, W)``, True where pixels are removed.
        fill: a scalar or ``C`` per-channel values.

    Returns:
        A new tensor; pixels where ``mask`` is False are exactly those of ``x``.
    """
    _check_batch(x, "apply_mask input")
    b, c, h, w = x.shape
    if (
        not isinstance(mask, Tensor)
        or mask.dtype != torch.bool
        or mask.ndim != 4
        or mask.shape[0] != b
        or mask.shape[1] not in (1, c)
        or mask.shape[2:] != (h, w)
    ):
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise SelfSupError(
            f"apply_mask mask must be a bool tensor of shape ({b}, 1 or {c}, {h}, {w}), got {shape}; "
            "build it with central_mask or random_region_mask."
        )
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device).flatten()
    if fill_t.numel() not in (1, c):
        raise SelfSupError(f"apply_mask fill must be a scalar or {c} per-channel values, got {fill_t.numel()} values.")
    return torch.where(mask.to(x.device), fill_t.reshape(1, -1, 1, 1), x)
