"""Momentum (EMA) copies of a network, as MoCo's key encoder and BYOL's target network.

The copy receives no gradient: its parameters follow xi <- m xi + (1 - m) theta after each
optimizer step (He et al. 2019, arXiv 1911.05722, Eq. 2; Grill et al. 2020, arXiv 2006.07733,
Sec. 3.1). Buffers (BatchNorm statistics) are not averaged: the copy keeps its own, updated by its
own forward passes in training mode, as both papers' code does.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from selfsup.errors import SelfSupError


def momentum_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters never require gradients."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter."""
    tp = [p for p in target.parameters()]
    op = [p.detach() for p in online.parameters()]
    if len(tp) != len(op):
        raise SelfSupError("ema_update: target and online networks have different parameters")
    torch._foreach_mul_(tp, momentum)
    torch._foreach_add_(tp, op, alpha=1.0 - momentum)


def momentum_at(step: int, total_steps: int, base: float, final: float = 1.0, schedule: str = "cosine") -> float:
    """The momentum for optimizer step ``step`` of ``total_steps``.

    ``cosine`` is BYOL's schedule, m = 1 - (1 - m0)(cos(pi k / K) + 1) / 2 for final=1, rising from
    ``base`` at k=0 to ``final`` at k=K (also MoCo v3's). ``constant`` keeps ``base`` (MoCo v1/v2).
    """
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise SelfSupError(f"unknown momentum schedule {schedule!r}; use 'cosine' or 'constant'")
    k = min(max(step, 0), total_steps)
    return final - (final - base) * (math.cos(math.pi * k / max(1, total_steps)) + 1) / 2
