"""The generic training loop, optimizers, schedules and checkpoints."""

from selfsup.train.pretrain import load_run, pretrain
from selfsup.train.trainer import FitResult, fit

__all__ = ["FitResult", "fit", "load_run", "pretrain"]
