"""Backbones and heads."""

from selfsup.models.heads import MLP
from selfsup.models.resnet import ResNet, build_backbone

__all__ = ["MLP", "ResNet", "build_backbone"]
