"""ResNet-18/34/50 (He et al. 2016, arXiv 1512.03385) with an ImageNet or a CIFAR stem.

The CIFAR stem (a 3x3 stride-1 convolution, no max-pool) is the one SimCLR uses for 32x32 images
(Chen et al. 2020, Appendix B.9). ``width`` multiplies every layer's channels (0.25 gives a net
about 16x cheaper, useful on CPUs). Parameter and buffer names follow torchvision's ResNet
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``downsample.0``...), so exported weights load there.
The forward pass returns pooled features ``(B, out_dim)``; ``forward_features`` returns the last
feature map for methods that need local features, ``forward_stages`` the output of every stage.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.errors import SelfSupError


def _strided_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)``; a strided 3x3 convolution of a 1x1 map under CPU bf16 autocast runs in fp32.

    PyTorch 2.13's oneDNN bf16 kernel for the weight gradient of a 3x3, stride-2 convolution whose
    input is 1x1 reads memory it never wrote: measured, 5 of 30 backward passes (15 of 30 at 128
    channels) returned NaN weight gradients where the fp32 kernel never does (2x2 inputs and stride
    1 are fine). Such maps reach ResNet's last stage from inputs of 4 px or less (CIFAR stem) or
    16 px or less (ImageNet stem): small patches (jigsaw, relative position) and small local crops.
    """
    if x.device.type == "cpu" and x.shape[-1] == 1 and x.shape[-2] == 1 and conv.stride != (1, 1) \
            and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return conv(x.float())
    return conv(x)


class _Shortcut(nn.Sequential):
    """The projection shortcut, a 1x1 convolution (stride 1 or 2) and BatchNorm (``downsample.0/1``).

    PyTorch 2.13's CPU fp32 kernel for the weight gradient of a 1x1, stride-2 convolution on a
    channels_last input with few input channels (3 to 8 measured; 16 and more are fine) and maps of
    48 px or more segfaults: ResNet-18 at width 0.125 on 96 px views with channels_last crashed the
    process. On CPU channels_last inputs the stride is taken by slicing first, the same arithmetic
    (a 1x1 kernel with no padding reads exactly the strided pixels), computed by the stride-1 kernel.
    """

    def forward(self, x: Tensor) -> Tensor:
        conv, bn = self[0], self[1]
        if conv.stride != (1, 1) and x.device.type == "cpu" and not x.is_contiguous() \
                and x.is_contiguous(memory_format=torch.channels_last):
            sh, sw = conv.stride
            return bn(F.conv2d(x[:, :, ::sh, ::sw], conv.weight, conv.bias))
        return bn(conv(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = _Shortcut(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(_strided_conv(self.conv1, x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = _Shortcut(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(_strided_conv(self.conv2, out)))
        return self.relu(self.bn3(self.conv3(out)) + idt)


_DEPTHS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet34": (BasicBlock, (3, 4, 6, 3)),
           "resnet50": (Bottleneck, (3, 4, 6, 3))}


class ResNet(nn.Module):
    def __init__(self, arch: str = "resnet18", stem: str = "cifar", width: float = 1.0, in_channels: int = 3,
                 zero_init_residual: bool = True):
        super().__init__()
        if arch not in _DEPTHS:
            raise SelfSupError(f"unknown backbone {arch!r}; choose one of: {', '.join(_DEPTHS)}")
        if stem not in ("cifar", "imagenet"):
            raise SelfSupError(f"unknown stem {stem!r}; choose 'cifar' (3x3, no max-pool) or 'imagenet' (7x7 + pool)")
        if width <= 0:
            raise SelfSupError(f"model.width must be positive, got {width}")
        block, layers = _DEPTHS[arch]
        self.arch, self.stem, self.width = arch, stem, width
        c = [max(8, round(64 * width * m)) for m in (1, 2, 4, 8)]
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, c[0], 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, c[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(c[0])
        self.relu = nn.ReLU(inplace=True)
        cin = c[0]
        self.stage_dims: list[int] = []  # channels of each forward_stages output
        for i, (planes, n) in enumerate(zip(c, layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, stride=2 if (i > 0 and j == 0) else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.stage_dims.append(cin)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:  # Goyal et al. 2017: each residual branch starts as identity
            for m in self.modules():
                last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
                if isinstance(m, (BasicBlock, Bottleneck)) and last is not None:
                    nn.init.zeros_(last.weight)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The feature maps after layer1..layer4 (strides 1, 2, 4, 8 after the stem)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            out.append(x)
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[-1]

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.avgpool(self.forward_features(x)), 1)


def build_backbone(arch: str = "resnet18", stem: str = "cifar", width: float = 1.0,
                   channels_last: bool = False, zero_init_residual: bool = True) -> ResNet:
    net = ResNet(arch, stem, width, zero_init_residual=zero_init_residual)
    return net.to(memory_format=torch.channels_last) if channels_last else net
