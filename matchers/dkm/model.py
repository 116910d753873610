"""DKMv3: dense kernelized feature matching (Edstedt et al., CVPR 2023), official architecture.

Reference: Parskatt/DKM ``dkm/models/dkm.py`` and ``model_zoo/DKMv3.py`` as vendored by
xuelunshen/gim (``networks/dkm``), the code GIM_DKM's checkpoint was trained with.
ResNet-50 features at strides 1-32; Gaussian-process match embeddings at strides 32 and 16,
decoded into a flow and certainty by a DFN-style network (residual refinement blocks ``RRB``
and channel attention ``CAB``); convolutional refiners with local correlation at strides 16-1.
It shares RoMa's GP, refiner and coarse-to-fine loop (:mod:`matchers.roma.layers`) and the
two-pass symmetric matching of :class:`matchers.roma.DenseMatcher`.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..backbones.resnet import ResNet50
from ..roma.layers import GP, ConvRefiner, Decoder
from ..roma.model import DenseMatcher


class RRB(nn.Module):
    """Residual refinement block: 1x1 projection, then x + conv3(relu(bn(conv2(x)))), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm2d(out_channels)
        self.conv3 = nn.Conv2d(out_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.relu(x + self.conv3(self.relu(self.bn(self.conv2(x)))))


class CAB(nn.Module):
    """Channel attention: gate the new features by a squeeze of [old, new], add the old ones."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 1)
        self.sigmod = nn.Sigmoid()  # the official attribute name

    def forward(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        gate = self.sigmod(self.conv2(self.relu(self.conv1(self.global_pooling(torch.cat((old, new), dim=1))))))
        return gate * new + old


class DFN(nn.Module):
    """DKM's coarse decoder: [features, GP embedding] -> context -> (flow (B,2,H,W), certainty (B,1,H,W))."""

    is_classifier = False

    def __init__(self, scales: tuple[str, ...] = ("32", "16"), gp_dim: int = 256, feat_dim: int = 256,
                 internal_dim: int = 384, feature_channels: int = 512) -> None:
        super().__init__()
        self.hidden_dim = internal_dim
        self.feat_input_modules = nn.ModuleDict({s: nn.Conv2d(feature_channels, feat_dim, 1, 1) for s in scales})
        self.pred_input_modules = nn.ModuleDict({s: nn.Identity() for s in scales})
        self.rrb_d = nn.ModuleDict({s: RRB(gp_dim + feat_dim, internal_dim) for s in scales})
        self.cab = nn.ModuleDict({s: CAB(2 * internal_dim, internal_dim) for s in scales})
        self.rrb_u = nn.ModuleDict({s: RRB(internal_dim, internal_dim) for s in scales})
        self.terminal_module = nn.ModuleDict({s: nn.Conv2d(internal_dim, 3, 1, 1, 0) for s in scales})

    def scales(self) -> list[int]:
        return [int(s) for s in self.terminal_module]

    def forward(self, embeddings: torch.Tensor, features: torch.Tensor, context: torch.Tensor,
                scale: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.rrb_d[scale](torch.cat((self.feat_input_modules[scale](features), embeddings), dim=1))
        context = self.rrb_u[scale](self.cab[scale](context, x))
        preds = self.terminal_module[scale](context)
        return preds[:, -2:], preds[:, :-2], context


class ResNetEncoder(nn.Module):
    """DKM's encoder: ResNet-50 without ``fc`` under ``net`` (keys ``encoder.net.*``)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = ResNet50(include_fc=False)

    def forward(self, x: torch.Tensor, upsample: bool = False) -> dict[int, torch.Tensor]:
        """{1: x, 2, 4, 8, 16, 32: features}; the upsampling pass only reads strides 1-8."""
        return self.net(x, max_stride=8 if upsample else 32)


def dkm_decoder(hidden_blocks: int = 8, kernel_size: int = 5) -> Decoder:
    """DKMv3's decoder at the official sizes (``DKMv3()`` in the model zoo)."""
    refiners = {"16": (2 * 512, 128, 7), "8": (2 * 512, 64, 3), "4": (2 * 256, 32, 2), "2": (2 * 64, 16, None),
                "1": (2 * 3, 6, None)}
    conv_refiner = nn.ModuleDict()
    for scale, (feature_width, emb_dim, radius) in refiners.items():
        in_dim = feature_width + emb_dim + ((2 * radius + 1) ** 2 if radius else 0)
        hidden = in_dim if scale != "1" else 24  # the official stride-1 refiner widens 12 -> 24 channels
        conv_refiner[scale] = ConvRefiner(in_dim, hidden, 3, kernel_size=kernel_size, hidden_blocks=hidden_blocks,
                                          displacement_emb_dim=emb_dim, local_corr_radius=radius,
                                          certainty_first=True)
    gps = nn.ModuleDict({s: GP(256, temperature=0.2, sigma_noise=0.1) for s in ("32", "16")})
    proj = nn.ModuleDict({"16": nn.Conv2d(1024, 512, 1, 1), "32": nn.Conv2d(2048, 512, 1, 1)})
    return Decoder(DFN(), gps, proj, conv_refiner, scales=["32", "16", "8", "4", "2", "1"],
                   scale_displacement_emb=False)


class DKMv3(DenseMatcher):
    """DKMv3 (ResNet-50 encoder). Defaults are DKMv3-outdoor's resolutions; GIM_DKM overrides them."""

    default_conf: ClassVar[dict[str, Any]] = {
        **DenseMatcher.default_conf,
        "coarse_res": (540, 720),
        "upsample_res": (864, 1152),
        "interpolation": "bilinear",
        "antialias": False,
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        self.encoder = ResNetEncoder()
        self.decoder = dkm_decoder()
