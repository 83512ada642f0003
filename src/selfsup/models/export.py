"""Export a backbone as safetensors with the metadata needed to rebuild and feed it.

The file holds the backbone's ``state_dict`` (parameters and BatchNorm buffers) and, in the
safetensors header's string metadata, ``format`` (``selfsup-backbone/1``), ``arch``, ``stem``,
``width``, ``out_dim``, the input normalization ``mean`` and ``std`` (JSON lists, in [0, 1]
units), ``image_size`` (the view size it was trained on) and, when known, ``method`` and
``epoch``. Nothing in the file can execute code when loaded.

Compatibility with torchvision: tensor names follow torchvision's ResNet (``conv1.weight``,
``bn1.running_mean``, ``layer2.0.downsample.0.weight``, ...; the classifier ``fc`` is absent), so
with width 1.0 the weights load into ``torchvision.models.resnet18/34/50()`` with
``strict=False`` (only ``fc.*`` reported missing) or after replacing ``fc`` by ``nn.Identity()``.
The ImageNet stem is torchvision's exactly. The CIFAR stem's ``conv1`` is 3x3 with stride 1 and
there is no max-pool: load it into a torchvision ResNet whose ``conv1`` was replaced by
``nn.Conv2d(3, 64, 3, 1, 1, bias=False)`` and whose ``maxpool`` by ``nn.Identity()``. Other
widths have no torchvision counterpart (torchvision's wide ResNets widen only the bottleneck).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.errors import SelfSupError
from selfsup.models.resnet import ResNet

FORMAT = "selfsup-backbone/1"
_FLOATS, _INTS, _LISTS = ("width",), ("out_dim", "image_size", "epoch"), ("mean", "std")


def export_backbone(backbone: ResNet, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``backbone``'s weights and metadata (architecture + ``metadata``) to a safetensors file."""
    from safetensors.torch import save_file

    if not isinstance(backbone, ResNet):
        raise SelfSupError(f"export supports selfsup ResNet backbones, got {type(backbone).__name__}")
    meta: dict[str, Any] = {"arch": backbone.arch, "stem": backbone.stem, "width": backbone.width,
                            "out_dim": backbone.out_dim, **(metadata or {})}
    header = {"format": FORMAT}
    for k, v in meta.items():
        if v is None:
            continue
        header[k] = json.dumps(v) if k in _LISTS else str(v)
    # safetensors refuses tensors that share memory or are not contiguous (e.g. channels_last).
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in backbone.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=header)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The typed metadata of an exported file (widths as float, sizes as int, mean/std as lists)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
    except FileNotFoundError:
        raise SelfSupError(f"{path} does not exist") from None
    except Exception as e:  # noqa: BLE001 - any header the library rejects
        raise SelfSupError(f"{path} is not a safetensors file ({type(e).__name__}: {e})") from None
    if raw.get("format") != FORMAT:
        raise SelfSupError(f"{path} has no selfsup backbone metadata (format {raw.get('format')!r}); "
                           f"write it with `selfsup export RUN --out FILE`")
    meta: dict[str, Any] = dict(raw)
    for k in _FLOATS:
        if k in meta:
            meta[k] = float(meta[k])
    for k in _INTS:
        if k in meta:
            meta[k] = int(meta[k])
    for k in _LISTS:
        if k in meta:
            meta[k] = json.loads(meta[k])
    return meta


def load_exported(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the backbone of an exported file: ``(backbone in eval mode, metadata)``."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    backbone = ResNet(meta["arch"], meta["stem"], meta["width"])
    state = load_file(str(path), device=str(map_location))
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise SelfSupError(f"{path}: weights do not fit a {meta['arch']} ({meta['stem']} stem, width "
                           f"{meta['width']}): {str(e).splitlines()[0]}") from None
    return backbone.to(map_location).eval(), meta
