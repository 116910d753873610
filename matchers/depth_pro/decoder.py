"""Depth Pro's decoder (DPT-style fusion of the five encodings) and field-of-view head
(apple/ml-depth-pro ``network/decoder.py`` and ``network/fov.py``; same parameter names)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.dinov2 import DinoVisionTransformer


class ResidualBlock(nn.Module):
    """x + residual(x); ``residual`` = ReLU, conv3x3, ReLU, conv3x3 (keys ``residual.1``/``.3``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.ReLU(), nn.Conv2d(dim, dim, kernel_size=3, padding=1),
            nn.ReLU(), nn.Conv2d(dim, dim, kernel_size=3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)


class FeatureFusionBlock2d(nn.Module):
    """Fuse a coarser decoder state with a skip feature: (x + resnet1(skip)) -> resnet2 ->
    [x2 transposed conv] -> 1x1 conv."""

    def __init__(self, dim: int, deconv: bool) -> None:
        super().__init__()
        self.resnet1 = ResidualBlock(dim)
        self.resnet2 = ResidualBlock(dim)
        self.deconv = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2, bias=False) if deconv else None
        self.out_conv = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resnet1(skip)
        x = self.resnet2(x)
        if self.deconv is not None:
            x = self.deconv(x)
        return self.out_conv(x)


class MultiresConvDecoder(nn.Module):
    """Fuse encodings from the coarsest (last) to the finest (first).

    ``convs[i]`` projects encoding i to ``dim_decoder`` channels (3x3, no bias; encoding 0 uses a
    1x1 conv, or nothing when it already has ``dim_decoder`` channels, as in the released model).
    Returns the fused finest features (B, dim_decoder, H0, W0) and the projected coarsest
    encoding (B, dim_decoder, H4, W4), which the field-of-view head reads.
    """

    def __init__(self, dims_encoder: list[int], dim_decoder: int) -> None:
        super().__init__()
        self.dim_decoder = dim_decoder
        first = (nn.Identity() if dims_encoder[0] == dim_decoder
                 else nn.Conv2d(dims_encoder[0], dim_decoder, kernel_size=1, bias=False))
        self.convs = nn.ModuleList([first] + [nn.Conv2d(d, dim_decoder, kernel_size=3, padding=1, bias=False)
                                              for d in dims_encoder[1:]])
        self.fusions = nn.ModuleList(FeatureFusionBlock2d(dim_decoder, deconv=i != 0) for i in range(len(dims_encoder)))

    def forward(self, encodings: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(encodings) != len(self.convs):
            raise ValueError(f"expected {len(self.convs)} encodings, got {len(encodings)}")
        lowres = self.convs[-1](encodings[-1])
        features = self.fusions[-1](lowres)
        for level in range(len(encodings) - 2, -1, -1):
            features = self.fusions[level](features, self.convs[level](encodings[level]))
        return features, lowres


class FOVNetwork(nn.Module):
    """Horizontal field of view in degrees, (B, 1, 1, 1), from its own ViT on the 384-px image
    plus the decoder's coarsest features (B, F, 48, 48).

    ``encoder`` = [ViT, Linear(D -> F/2)] (keys ``encoder.0.*``, ``encoder.1.*``),
    ``downsample`` = stride-2 conv F -> F/2, ``head`` = two stride-2 convs and a 6x6 conv to 1.
    """

    def __init__(self, num_features: int, fov_encoder: DinoVisionTransformer) -> None:
        super().__init__()
        self.encoder = nn.ModuleList([fov_encoder, nn.Linear(fov_encoder.embed_dim, num_features // 2)])
        self.downsample = nn.Sequential(
            nn.Conv2d(num_features, num_features // 2, kernel_size=3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(
            nn.Conv2d(num_features // 2, num_features // 4, kernel_size=3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(num_features // 4, num_features // 8, kernel_size=3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(num_features // 8, 1, kernel_size=6))

    def forward(self, x: torch.Tensor, lowres_feature: torch.Tensor) -> torch.Tensor:
        vit, project = self.encoder
        image = F.interpolate(x, scale_factor=0.25, mode="bilinear", align_corners=False)
        tokens = project(vit.forward_features(image)["x_norm_patchtokens"])  # (B, h*w, F/2)
        lowres = self.downsample(lowres_feature)
        return self.head(tokens.transpose(1, 2).reshape_as(lowres) + lowres)
