"""Losses run in float32, also when the step runs under bf16 autocast.

With ``train.precision=bf16`` (or ``auto`` on a device that runs bf16 natively) the backbone and
heads compute in bfloat16, whose 8-bit mantissa is too coarse for what the losses do with their
inputs: L2 normalization, similarities divided by small temperatures (0.05-0.2) and then
exponentiated, log-sum-exp over thousands of negatives, Sinkhorn's exponentials, squared distances
to prototypes. A bf16 logit at 1/T = 10 is off by up to ~0.04, which shifts a softmax over 4,096
negatives visibly. So every public loss is wrapped by :func:`fp32`: autocast is switched off inside
it and its floating-point tensor arguments (also inside lists and tuples) are cast up to float32.
The cast is differentiable, so gradients flow back to the bf16 activations unchanged in meaning.
Sinkhorn (``cluster/sinkhorn.py``), k-means (run in epoch hooks, outside autocast), the E-step and
colorization's soft targets already compute in float32 on their own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])
_AUTOCAST_DEVICES = {"cpu", "cuda", "xpu", "mps"}


def _up(x: Any) -> Any:
    if torch.is_tensor(x):
        return x.float() if x.is_floating_point() and x.dtype != torch.float64 else x
    if isinstance(x, (list, tuple)) and any(torch.is_tensor(v) for v in x):
        return type(x)(_up(v) for v in x)
    return x


def _device_types(args: tuple, kwargs: dict) -> set[str]:
    found: set[str] = set()
    for x in (*args, *kwargs.values()):
        for t in (x if isinstance(x, (list, tuple)) else (x,)):
            if torch.is_tensor(t):
                found.add(t.device.type)
    return found


def fp32(fn: F) -> F:
    """Run ``fn`` with autocast off and its floating tensor arguments in float32."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args = tuple(_up(a) for a in args)
        kwargs = {k: _up(v) for k, v in kwargs.items()}
        with ExitStack() as stack:
            for d in sorted(_device_types(args, kwargs) & _AUTOCAST_DEVICES) or ["cpu"]:
                stack.enter_context(torch.autocast(d, enabled=False))
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
