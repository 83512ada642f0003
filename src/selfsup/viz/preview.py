"""A PNG grid of original images and the views a recipe makes of them."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from selfsup.data.views import ViewRecipe


def _denorm(x: Tensor, mean, std) -> Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x.cpu().float() * s + m).clamp(0, 1)


def preview_grid(images: Tensor, recipe: ViewRecipe, out: str | Path, seed: int = 0,
                 index: Tensor | None = None) -> Path:
    """One row per image: the original, then each view of the recipe (drawn at its own size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = torch.Generator().manual_seed(seed)
    idx = index if index is not None else torch.arange(len(images))
    views = recipe(images, g, idx)
    n, cols = images.shape[0], 1 + len(views)
    fig, axes = plt.subplots(n, cols, figsize=(1.3 * cols, 1.3 * n), squeeze=False)
    for r in range(n):
        tiles = [images[r : r + 1].float().cpu() / 255]
        tiles += [_denorm(v[r : r + 1], recipe.mean, recipe.std) if norm else v[r : r + 1].cpu().float().clamp(0, 1)
                  for v, norm in zip(views, recipe.normalized)]
        for c, t in enumerate(tiles):
            ax = axes[r][c]
            ax.imshow(t[0].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"view {c} ({t.shape[-1]}px)", fontsize=7)
    fig.suptitle(f"view recipe: {recipe.name}", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
