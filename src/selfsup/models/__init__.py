"""Backbones, heads and momentum copies."""

from selfsup.models.ema import ema_update, momentum_at, momentum_copy
from selfsup.models.heads import MLP
from selfsup.models.resnet import ResNet, build_backbone

__all__ = ["MLP", "ResNet", "build_backbone", "ema_update", "momentum_at", "momentum_copy"]
