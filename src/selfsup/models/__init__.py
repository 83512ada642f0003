"""Backbones, heads, decoders, momentum copies and weight export."""

from selfsup.models.decoder import UpsampleDecoder, feature_geometry, upsampling_stages
from selfsup.models.ema import ema_update, momentum_at, momentum_copy
from selfsup.models.export import export_backbone, load_exported, read_metadata
from selfsup.models.heads import MLP
from selfsup.models.resnet import ResNet, build_backbone

__all__ = ["MLP", "ResNet", "UpsampleDecoder", "build_backbone", "ema_update", "export_backbone",
           "feature_geometry", "load_exported", "momentum_at", "momentum_copy", "read_metadata", "upsampling_stages"]
