"""XFeat's convolutional trunk (verlab/accelerated_features ``XFeatModel``) without its heads.

Tiny RoMa uses XFeat's stride-4 features (``block2``, 24 channels) and its fused stride-8
features (``block_fusion``, 64 channels); the keypoint, heatmap and fine-matcher heads are
deleted in the official Tiny RoMa, so they are not built here. Parameter names are XFeat's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicLayer(nn.Module):
    """Conv (no bias) -> BatchNorm without affine parameters -> ReLU (optional), under ``layer``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, relu: bool = True) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels, affine=False),
            nn.ReLU(inplace=True) if relu else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class XFeatBackbone(nn.Module):
    """XFeat trunk: grayscale instance-normalised input -> (stride-4 (B,24,H/4,W/4), stride-8 (B,64,H/8,W/8))."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(1)
        self.skip1 = nn.Sequential(nn.AvgPool2d(4, stride=4), nn.Conv2d(1, 24, 1, stride=1, padding=0))
        self.block1 = nn.Sequential(BasicLayer(1, 4, stride=1), BasicLayer(4, 8, stride=2),
                                    BasicLayer(8, 8, stride=1), BasicLayer(8, 24, stride=2))
        self.block2 = nn.Sequential(BasicLayer(24, 24), BasicLayer(24, 24))
        self.block3 = nn.Sequential(BasicLayer(24, 64, stride=2), BasicLayer(64, 64), BasicLayer(64, 64, 1, padding=0))
        self.block4 = nn.Sequential(BasicLayer(64, 64, stride=2), BasicLayer(64, 64), BasicLayer(64, 64))
        self.block5 = nn.Sequential(BasicLayer(64, 128, stride=2), BasicLayer(128, 128), BasicLayer(128, 128),
                                    BasicLayer(128, 64, 1, padding=0))
        self.block_fusion = nn.Sequential(BasicLayer(64, 64), BasicLayer(64, 64), nn.Conv2d(64, 64, 1, padding=0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W), H and W multiples of 32 -> (stride-4 features, fused stride-8 features)."""
        x = self.norm(x.mean(dim=1, keepdim=True))
        x2 = self.block2(self.block1(x) + self.skip1(x))
        x3 = self.block3(x2)
        x4 = self.block4(x3)
        x5 = self.block5(x4)
        size = x3.shape[-2:]
        fused = x3 + F.interpolate(x4, size, mode="bilinear") + F.interpolate(x5, size, mode="bilinear")
        return x2, self.block_fusion(fused)
