"""Optimizers and per-step schedules.

Schedules are precomputed arrays with one value per optimizer step (as DINO does): the loop just
reads ``schedule[step]``, resume needs only the step count, and tests can inspect the curve.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from selfsup.errors import SelfSupError


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al. 2017, arXiv 1708.03888).

    For each parameter tensor p with gradient g: g <- g + wd p, then g <- g x eta ||p|| / ||g||
    (when both norms are positive), then heavy-ball momentum. Groups with ``lars_exclude`` (biases
    and normalization parameters, as SimCLR and BYOL exclude them) get neither weight decay nor the
    trust ratio.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                                      lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["lars_exclude"]:
                    g = g.add(p, alpha=group["weight_decay"])
                    pn, gn = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    ratio = torch.where((pn > 0) & (gn > 0), group["eta"] * pn / gn, torch.ones_like(pn))
                    g = g.mul(ratio)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: weights (decayed) and biases/norm parameters (not)."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]


def build_optimizer(name: str, module: nn.Module, lr: float, weight_decay: float,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    groups = param_groups(module, weight_decay)
    if not any(g["params"] for g in groups):
        raise SelfSupError("the model has no trainable parameters")
    if name == "sgd":
        return torch.optim.SGD([{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups], lr=lr,
                               momentum=momentum)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW([{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups], lr=lr)
    raise SelfSupError(f"unknown optimizer {name!r}; choose sgd, lars or adamw")


def scaled_lr(base_lr: float, batch_size: int, scaling: str) -> float:
    """The peak lr for a global batch: ``linear`` is Goyal et al.'s lr x B/256; ``sqrt`` as SimCLR
    suggests for small batches (0.075 x sqrt(B) at ImageNet scale, here lr x sqrt(B/256))."""
    if scaling == "linear":
        return base_lr * batch_size / 256
    if scaling == "sqrt":
        return base_lr * math.sqrt(batch_size / 256)
    return base_lr


def relaid(schedule: list[float], keep: int, total_steps: int) -> list[float]:
    """A re-planned run's schedule: ``schedule``'s first ``keep`` values as they were, then its
    remaining values stretched or squeezed onto the steps up to ``total_steps`` (linear
    interpolation), so the schedule goes on from where it is, without a jump, and still ends on
    its last value."""
    head, tail = schedule[:keep], schedule[keep:]
    n = total_steps - keep
    if n <= 0:
        return schedule[:total_steps]
    if n == 1 or len(tail) <= 1:  # one step left ends on the last value; one value left lasts
        return head + [tail[-1] if tail else schedule[-1]] * n
    out = []
    for t in range(n):
        x = t * (len(tail) - 1) / (n - 1)
        i = min(int(x), len(tail) - 2)
        f = x - i
        out.append(tail[i] + f * (tail[i + 1] - tail[i]))
    return head + out


def cosine_schedule(peak: float, total_steps: int, warmup_steps: int = 0, final: float = 0.0,
                    start: float = 0.0) -> list[float]:
    """Linear warm-up from ``start`` to ``peak`` over ``warmup_steps``, then cosine decay to ``final``."""
    warmup_steps = min(warmup_steps, total_steps)
    out = [start + (peak - start) * (i + 1) / warmup_steps for i in range(warmup_steps)]
    rest = total_steps - warmup_steps
    out += [final + 0.5 * (peak - final) * (1 + math.cos(math.pi * i / max(1, rest))) for i in range(rest)]
    return out
