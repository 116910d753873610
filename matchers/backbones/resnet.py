"""ResNet-50 (torchvision's v1.5 layout and parameter names) returning a feature pyramid.

Names follow ``torchvision.models.resnet50``: ``conv1``, ``bn1``, ``layer{1..4}.{i}.conv{1,2,3}``,
``bn{1,2,3}``, ``downsample.{0,1}`` and ``fc``; the stride-2 convolution of each stage is the 3x3
``conv2`` (v1.5). DKM keeps the network without ``fc`` (``include_fc=False``).
"""
from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, plus the (projected) identity."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 returning ``{1: x, 2: (B,64,H/2,W/2), 4: (B,256,H/4,W/4), 8: (B,512,H/8,W/8),
    16: (B,1024,H/16,W/16), 32: (B,2048,H/32,W/32)}`` (the pyramid DKM reads).

    ``max_stride`` stops early (e.g. 8 skips layer3/layer4 when only fine features are needed);
    ``include_fc`` adds torchvision's 1000-class ``fc`` so ImageNet checkpoints load strictly;
    ``stages`` < 4 builds only ``layer1`` .. ``layer{stages}`` (GIM's LoFTR encoder has no
    ``layer4``, so its checkpoint holds none; ``include_fc`` needs all four).
    """

    def __init__(self, include_fc: bool = False, num_classes: int = 1000, stages: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = 64
        if not 1 <= stages <= 4 or (include_fc and stages != 4):
            raise ValueError(f"ResNet50: stages must be 1..4 (4 with include_fc), got {stages}")
        self.stages = stages
        for index, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))[:stages]):
            stage = []
            for block in range(blocks):
                stage.append(Bottleneck(channels, width, stride if block == 0 else 1))
                channels = width * Bottleneck.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes) if include_fc else None

    def forward(self, x: torch.Tensor, max_stride: int = 32) -> dict[int, torch.Tensor]:
        features = {1: x}
        x = self.relu(self.bn1(self.conv1(x)))
        features[2] = x
        x = self.maxpool(x)
        for index in range(self.stages):
            stride = 4 * 2 ** index
            if stride > max_stride:
                break
            x = getattr(self, f"layer{index + 1}")(x)
            features[stride] = x
        return features
