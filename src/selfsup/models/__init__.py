"""Backbones and heads."""

from selfsup.models.decoder import UpsampleDecoder, feature_geometry, upsampling_stages
from selfsup.models.heads import MLP
from selfsup.models.resnet import ResNet, build_backbone

__all__ = ["MLP", "ResNet", "UpsampleDecoder", "build_backbone", "feature_geometry", "upsampling_stages"]
