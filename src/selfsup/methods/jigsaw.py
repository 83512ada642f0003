"""Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by
Solving Jigsaw Puzzles", arXiv 1603.09246).

An image is cut into a 3x3 grid of tiles, the tiles are shuffled by one permutation of a fixed
set, and the network says which permutation it was. Each tile goes through the same encoder
(the "context-free network": shared weights, one tower per tile, then a per-tile fully connected
layer), the 9 tile features are concatenated in their shuffled order, and an MLP classifies the
permutation index; the loss is the cross-entropy over the set. Paper defaults: 225-px crops split
into 75-px cells with a 64-px tile at a random position inside each cell (a gap of about 11 px
between tiles plus jitter, so edges cannot be matched), tile mean and standard deviation
normalized independently, 512 units per tile (fc6), a 4096-unit fc7, and a set of permutations
chosen greedily for maximal Hamming distance (Algorithm 1; the paper's main model uses 1000, our
default is 100).

Deviations: a ResNet instead of AlexNet; BatchNorm in the head. At CIFAR scale a 32-px view has
10-px cells and 9-px tiles (the paper's 64/75 ratio), which the encoder shrinks to 2x2 at its last
stage; at 16 px tiles are 4 px. ``min_tile_size`` upsamples tiles (bilinear) to at least that side
when tiles are that small. Against colour shortcuts the paper converts about 30% of its images to
grayscale; the recipe does too (``views.options.gray_p: 0.3``): on the full CIFAR-10 train split at
the 30-minute budget it raised kNN top-1 from 32.02 to 33.76 and the linear probe from 39.59 to
41.37 (random init 29.24 / 34.35). The shift of each tile's colour channels by up to 2 px against
chromatic aberration is not applied. The permutation set is built once in the constructor from
``permutation_seed`` and kept as a buffer, so a checkpoint carries the exact labelling.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data.pretext import apply_permutation, jigsaw_tiles, maximal_hamming_permutations
from selfsup.errors import SelfSupError
from selfsup.methods.base import Method
from selfsup.models import MLP

Encoder = Callable[[Tensor], Tensor]


def upsample_to(x: Tensor, min_size: int) -> Tensor:
    """Bilinearly enlarge square patches ``(N, C, s, s)`` to ``min_size`` when ``s < min_size``."""
    if x.shape[-1] >= min_size:
        return x
    return F.interpolate(x, size=(min_size, min_size), mode="bilinear", align_corners=False)


def standardize_patches(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Each patch and channel to zero mean and unit standard deviation (the paper's per-tile
    normalization, which hides the low-level statistics that would tell neighbouring tiles apart)."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)


class JigsawTask(nn.Module):
    """The puzzle for any encoder: tiles, the permutation set (a buffer) and the classifier head."""

    def __init__(self, feature_dim: int, num_permutations: int = 100, grid: int = 3, gap: int | None = None,
                 jitter: bool = True, normalize_tiles: bool = True, min_tile_size: int = 0, tile_dim: int = 512,
                 hidden_dim: int = 4096, permutation_seed: int = 0):
        super().__init__()
        if grid < 2:
            raise SelfSupError(f"jigsaw grid must be at least 2 (the paper uses 3), got {grid}")
        self.grid, self.gap, self.jitter = grid, gap, jitter
        self.normalize_tiles, self.min_tile_size = normalize_tiles, min_tile_size
        self.register_buffer("permutations",
                             maximal_hamming_permutations(num_permutations, grid * grid, seed=permutation_seed))
        self.tile_fc = nn.Sequential(nn.Linear(feature_dim, tile_dim, bias=False), nn.BatchNorm1d(tile_dim),
                                     nn.ReLU(inplace=True))
        self.classifier = MLP(grid * grid * tile_dim, hidden_dim, num_permutations, layers=2)

    def puzzle(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Shuffled tiles ``(B, grid^2, C, t, t)`` and labels ``(B,)``: the tile at position j of
        sample b is the tile of cell ``permutations[labels[b], j]`` (row-major cells)."""
        tiles = jigsaw_tiles(x, self.grid, gap=self.gap, jitter=self.jitter)
        perm_index = torch.randint(self.permutations.shape[0], (x.shape[0],), device=x.device)
        tiles, labels = apply_permutation(tiles, perm_index, self.permutations)
        if self.normalize_tiles:
            tiles = standardize_patches(tiles)
        return tiles, labels

    def forward(self, encode: Encoder, x: Tensor) -> dict[str, Tensor]:
        tiles, labels = self.puzzle(x)
        features = encode(upsample_to(tiles.flatten(0, 1), self.min_tile_size))
        # concatenated in the shuffled order: position j of the puzzle is slot j of the input
        logits = self.classifier(self.tile_fc(features).reshape(tiles.shape[0], -1))
        loss = F.cross_entropy(logits.float(), labels)
        return {"loss": loss, "accuracy": (logits.argmax(1) == labels).float().mean()}


class Jigsaw(Method):
    def __init__(self, backbone: nn.Module, num_permutations: int = 100, grid: int = 3, gap: int | None = None,
                 jitter: bool = True, normalize_tiles: bool = True, min_tile_size: int = 0, tile_dim: int = 512,
                 hidden_dim: int = 4096, permutation_seed: int = 0):
        super().__init__(backbone)
        self.puzzle = JigsawTask(backbone.out_dim, num_permutations, grid, gap, jitter, normalize_tiles,
                                 min_tile_size, tile_dim, hidden_dim, permutation_seed)

    def training_step(self, views: list[Tensor], index: Tensor) -> dict[str, Tensor]:
        return self.puzzle(self.backbone, views[0])
