"""ResNet feature extractor with torchvision's parameter names, so its ImageNet weights load.

Only the convolutional trunk is built (no ``fc``); ``forward`` returns the 1/8, 1/16 and
1/32 features. Weights are never fetched implicitly: call :func:`load_backbone_weights`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from bisenet_pl.errors import ConfigError
from bisenet_pl.models.weights import compare_state_dicts, read_state_dict

ResNetName = Literal["resnet18", "resnet34", "resnet50", "resnet101"]

#: torchvision's ImageNet-1k checkpoints (the "V1" weights), used for ``weights="imagenet"``.
IMAGENET_URLS: dict[str, str] = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, channels * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's bottleneck: the stride sits on the 3x3 conv (ResNet v1.5)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


_ARCHITECTURES: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """ResNet trunk returning the features at strides 8, 16 and 32."""

    def __init__(self, name: ResNetName = "resnet18", in_channels: int = 3) -> None:
        super().__init__()
        if name not in _ARCHITECTURES:
            raise ValueError(f"unknown ResNet {name!r}; choose from {list(_ARCHITECTURES)}")
        block, depths = _ARCHITECTURES[name]
        self.name = name
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels_in = 64
        layers = []
        for index, (channels, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            stride = 1 if index == 0 else 2
            blocks = [block(channels_in, channels, stride)]
            channels_in = channels * block.expansion
            blocks += [block(channels_in, channels) for _ in range(depth - 1)]
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        #: Channels of the 1/8, 1/16 and 1/32 features.
        self.feature_channels = tuple(c * block.expansion for c in (128, 256, 512))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's initialisation, for training from scratch."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


def load_backbone_weights(backbone: ResNet, weights: str | Path) -> None:
    """Load ImageNet weights into ``backbone``.

    ``weights`` is ``"imagenet"`` (torchvision's checkpoint for this depth, downloaded once
    into the torch.hub cache), a local path or a URL. The classifier (``fc``) is dropped;
    every other tensor must match, or a ``ConfigError`` names the differences.
    """
    source = IMAGENET_URLS[backbone.name] if str(weights) == "imagenet" else weights
    state = {
        k.removeprefix("module."): v
        for k, v in read_state_dict(source).items()
        if not k.startswith(("fc.", "module.fc."))
    }
    diff = compare_state_dicts(backbone.state_dict(), state)
    if diff.missing or diff.unexpected or diff.wrong_shape:
        raise ConfigError(
            f"{source} is not a torchvision-style {backbone.name} checkpoint: "
            f"missing {diff.missing[:3]}, unexpected {diff.unexpected[:3]}, wrong shape {diff.wrong_shape[:3]}"
        )
    backbone.load_state_dict(state, strict=True)
