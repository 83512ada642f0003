"""Backbones and heads."""

from selfsup.models.export import export_backbone, load_exported, read_metadata
from selfsup.models.heads import MLP
from selfsup.models.resnet import ResNet, build_backbone

__all__ = ["MLP", "ResNet", "build_backbone", "export_backbone", "load_exported", "read_metadata"]
