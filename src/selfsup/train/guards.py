"""Guards the trainer runs around each step: divergence (non-finite loss or gradients) and collapse.

Both stay method-agnostic. A skipped step changes nothing: no optimizer update, no
``on_step_end`` (so no EMA/queue update), no step count. The collapse monitor reads an optional
``"embeddings"`` tensor (B, D) from ``training_step``'s output (see ``selfsup.methods.base``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from selfsup.errors import SelfSupError

MAX_BAD_STEPS = 10  # consecutive skipped steps before the run is stopped


def grads_finite(params: Iterable[torch.nn.Parameter]) -> bool:
    """True when every gradient is finite (one device sync for the whole model)."""
    flags = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


class DivergenceGuard:
    """Counts skipped steps; too many in a row stop the run with the likely causes named."""

    def __init__(self, max_in_a_row: int = MAX_BAD_STEPS):
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.total = 0

    def ok(self) -> None:
        self.in_a_row = 0

    def skip(self, what: str, epoch: int, step: int, log: Callable[[dict], None] | None = None) -> None:
        """Record a skipped step (``what``: "loss" or "gradients"); raise when it keeps happening."""
        self.in_a_row += 1
        self.total += 1
        if log is not None:
            log({"epoch": epoch, "step": step, "skipped_non_finite": what, "skipped_total": self.total})
        if self.in_a_row >= self.max_in_a_row:
            raise SelfSupError(
                f"the {what} {'was' if what == 'loss' else 'were'} not finite for {self.in_a_row} steps in a row "
                f"(epoch {epoch + 1}, step {step}; {self.total} skipped in all); likely causes: a learning rate too "
                "high (train.lr; or set train.grad_clip), a temperature too low, bf16 precision "
                "(train.precision=fp32), or a loss taking log/sqrt of 0 or dividing by a zero norm. "
                "The last good checkpoint is kept."
            )

    def state_dict(self) -> dict[str, int]:
        return {"in_a_row": self.in_a_row, "total": self.total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.in_a_row, self.total = int(state["in_a_row"]), int(state["total"])


@torch.no_grad()
def collapse_stats(embeddings: Tensor) -> dict[str, float]:
    """Two cheap collapse signals of a batch of embeddings (B, D).

    ``collapse_std``: the per-dimension std of the L2-normalized embeddings, averaged over
    dimensions: about 1/sqrt(D) for embeddings spread over the sphere, 0 when every image maps to
    one point (the measure SimSiam uses, Chen & He 2021, Sec. 4.1).
    ``effective_rank``: exp of the entropy of the normalized singular values of the normalized
    embeddings (Roy & Vetterli 2007; RankMe, Garrido et al. 2023): between 1 (a single
    direction) and min(B, D).
    """
    z = torch.nn.functional.normalize(embeddings.detach().float(), dim=1)
    std = float(z.std(dim=0).mean()) if len(z) > 1 else float("nan")
    s = torch.linalg.svdvals(z)
    p = s / s.sum().clamp_min(1e-12) + 1e-12
    return {"collapse_std": std, "effective_rank": float(torch.exp(-(p * p.log()).sum()))}


class CollapseMonitor:
    """Logs :func:`collapse_stats` every ``every`` steps; warns once when the embeddings collapse:
    ``collapse_std`` below ``std_floor`` / sqrt(D) or ``effective_rank`` below ``rank_floor``."""

    def __init__(self, every: int, std_floor: float = 0.05, rank_floor: float = 1.5):
        self.every, self.std_floor, self.rank_floor = every, std_floor, rank_floor
        self.warned = False

    def __call__(self, out: dict, step: int) -> dict[str, float]:
        emb = out.get("embeddings")
        if not self.every or step % self.every or not torch.is_tensor(emb) or emb.ndim != 2:
            return {}
        stats = collapse_stats(emb)
        spread = stats["collapse_std"] * math.sqrt(emb.shape[1])  # 1: spread over the sphere
        collapsed = spread < self.std_floor or stats["effective_rank"] < self.rank_floor
        if collapsed and not self.warned:
            self.warned = True
            warnings.warn(
                f"step {step}: the embeddings look collapsed (collapse_std {stats['collapse_std']:.3g}, "
                f"{1 / math.sqrt(emb.shape[1]):.3g} when spread out; effective_rank {stats['effective_rank']:.3g}, "
                "1 = one direction): every image maps to "
                "nearly the same point. Likely causes: no negatives or a missing predictor/stop-gradient, a "
                "momentum or temperature out of range, or a learning rate too high.", stacklevel=2)
        return stats
