"""A PNG grid of original images, their foreground masks (when the recipe removes backgrounds) and
the views a recipe makes of them."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from selfsup.data.views import BackgroundRemoval, ViewRecipe


def _denorm(x: Tensor, mean, std) -> Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x.cpu().float() * s + m).clamp(0, 1)


def preview_grid(images: Tensor, recipe: ViewRecipe, out: str | Path, seed: int = 0,
                 index: Tensor | None = None) -> Path:
    """One row per image: the original, its foreground mask when the recipe removes backgrounds
    (``index`` are then the images' data set indices), then each view (drawn at its own size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = torch.Generator().manual_seed(seed)
    idx = index if index is not None else torch.arange(len(images))
    views = recipe(images, g, idx)
    masks = recipe.pre.masks.lookup(idx).cpu() if isinstance(recipe.pre, BackgroundRemoval) else None
    titles = ["original"] + (["foreground mask"] if masks is not None else [])
    titles += [f"view {c + 1} ({v.shape[-1]}px)" for c, v in enumerate(views)]
    n, cols = images.shape[0], len(titles)
    fig, axes = plt.subplots(n, cols, figsize=(1.3 * cols, 1.3 * n), squeeze=False)
    for r in range(n):
        tiles = [images[r : r + 1].float().cpu() / 255]
        if masks is not None:
            tiles.append(masks[r : r + 1].float().unsqueeze(1).expand(-1, 3, -1, -1))
        tiles += [_denorm(v[r : r + 1], recipe.mean, recipe.std) if norm else v[r : r + 1].cpu().float().clamp(0, 1)
                  for v, norm in zip(views, recipe.normalized)]
        for c, t in enumerate(tiles):
            ax = axes[r][c]
            ax.imshow(t[0].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=7)
    title = f"view recipe: {recipe.name}"
    if masks is not None:
        title += f"; background removed with p={recipe.pre.p} per view ({recipe.pre.fill} fill)"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
