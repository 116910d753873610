"""MASt3R's prediction head: a DPT for the pointmap + confidence, an MLP for local descriptors.

Module and parameter names follow the official ``Cat_MLP_LocalFeatures_DPT_Pts3d`` (mast3r) built on
``DPTOutputAdapter_fix`` (dust3r) / ``DPTOutputAdapter`` (croco), so that state-dict keys read
``dpt.scratch.layer1_rn.weight``, ``dpt.scratch.refinenet4.resConfUnit1.conv1.weight``,
``dpt.head.4.bias``, ``dpt.act_postprocess.3.1.weight``, ``head_local_features.fc2.weight`` ...
``dpt.scratch.layer{N}_rn`` and ``dpt.scratch.layer_rn.{N-1}`` are the same modules (the official
state dict carries both names; so does ours).

Output post-processing (official ``postprocess``):

- ``pts3d = v / max(|v|, 1e-8) * expm1(|v|)`` (depth mode ``('exp', -inf, inf)``);
- ``conf = vmin + exp(c)`` clipped at ``vmax - vmin`` (conf mode ``('exp', 1, inf)``);
- ``desc`` = L2-normalised local features; ``desc_conf`` = ``exp`` mode with its own bounds.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.croco import Mlp

Mode = tuple[str, float, float]


class Upsample2x(nn.Module):
    """Bilinear x2 upsampling with ``align_corners=True`` (the DPT's ``Interpolate``; no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x)))), 3x3 convolutions with bias."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """DPT refinement stage: (x [+ rcu1(skip)]) -> rcu2 -> bilinear x2 (align_corners) -> 1x1 conv."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Scratch(nn.Module):
    """Projections of the four hooked token maps to ``feature_dim`` and the four fusion stages."""

    def __init__(self, layer_dims: list[int], feature_dim: int) -> None:
        super().__init__()
        convs = [nn.Conv2d(d, feature_dim, 3, padding=1, bias=False) for d in layer_dims]
        self.layer1_rn, self.layer2_rn, self.layer3_rn, self.layer4_rn = convs
        self.layer_rn = nn.ModuleList(convs)  # official alias of layer{1..4}_rn
        self.refinenet1 = FeatureFusionBlock(feature_dim)
        self.refinenet2 = FeatureFusionBlock(feature_dim)
        self.refinenet3 = FeatureFusionBlock(feature_dim)
        self.refinenet4 = FeatureFusionBlock(feature_dim)


class DPT(nn.Module):
    """Dense prediction transformer head over four token maps of one view.

    ``forward(tokens: list of (B, N, C_i), image_size=(H, W)) -> (B, num_channels, H, W)`` where
    N = (H/16)(W/16). The hooked maps are brought to strides 4, 8, 16 and 32 (transposed convs /
    a stride-2 conv), fused coarse to fine, and decoded to full resolution.
    """

    def __init__(self, dim_tokens: list[int], hooks: list[int], num_channels: int, patch_size: int = 16,
                 layer_dims: tuple[int, ...] = (96, 192, 384, 768), feature_dim: int = 256,
                 last_dim: int = 128) -> None:
        super().__init__()
        self.hooks = list(hooks)
        self.patch_size = patch_size
        self.scratch = Scratch(list(layer_dims), feature_dim)
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, 3, padding=1),
            Upsample2x(),
            nn.Conv2d(feature_dim // 2, last_dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_dim, num_channels, 1),
        )
        d0, d1, d2, d3 = layer_dims
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(dim_tokens[0], d0, 1), nn.ConvTranspose2d(d0, d0, 4, stride=4)),
            nn.Sequential(nn.Conv2d(dim_tokens[1], d1, 1), nn.ConvTranspose2d(d1, d1, 2, stride=2)),
            nn.Sequential(nn.Conv2d(dim_tokens[2], d2, 1)),
            nn.Sequential(nn.Conv2d(dim_tokens[3], d3, 1), nn.Conv2d(d3, d3, 3, stride=2, padding=1)),
        ])

    def forward(self, tokens: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        H, W = image_size
        rows, cols = H // self.patch_size, W // self.patch_size
        maps = []
        for i, hook in enumerate(self.hooks):
            x = tokens[hook]
            # (B, N, C) -> (B, C, rows, cols) as a channels-last view, the official layout: the
            # convolutions then run in the same memory format and sum in the same order as the
            # official head (transpose-then-reshape gives a batch stride of C for B = 1, which
            # torch takes for NCHW: other kernels, raw outputs ~1e-5 apart)
            x = x.reshape(x.shape[0], rows, cols, x.shape[2]).permute(0, 3, 1, 2)
            maps.append(self.scratch.layer_rn[i](self.act_postprocess[i](x)))
        s = self.scratch
        # the stride-2 conv rounds odd token grids up; crop back to the stride-16 map's size
        path = s.refinenet4(maps[3])[:, :, :maps[2].shape[2], :maps[2].shape[3]]
        path = s.refinenet3(path, maps[2])
        path = s.refinenet2(path, maps[1])
        path = s.refinenet1(path, maps[0])
        return self.head(path)


def reg_dense_depth(xyz: torch.Tensor, mode: Mode) -> torch.Tensor:
    """(..., 3) raw -> 3D points; only the unbounded modes the checkpoints use are supported."""
    kind, vmin, vmax = mode
    if vmin != -float("inf") or vmax != float("inf"):
        raise ValueError(f"bounded depth modes are not supported: {mode}")
    if kind == "linear":
        return xyz
    d = xyz.norm(dim=-1, keepdim=True)
    xyz = xyz / d.clip(min=1e-8)
    if kind == "square":
        return xyz * d.square()
    if kind == "exp":
        return xyz * torch.expm1(d)
    raise ValueError(f"unknown depth mode {kind!r}")


def reg_dense_conf(x: torch.Tensor, mode: Mode) -> torch.Tensor:
    """Raw logits -> confidence in [vmin, vmax]."""
    kind, vmin, vmax = mode
    if kind == "exp":
        return vmin + x.exp().clip(max=vmax - vmin)
    if kind == "sigmoid":
        return (vmax - vmin) * torch.sigmoid(x) + vmin
    raise ValueError(f"unknown confidence mode {kind!r}")


class CatMLPDPTHead(nn.Module):
    """MASt3R head of one view (``downstream_head1`` / ``downstream_head2``).

    ``forward(decout, image_size)``: ``decout`` is the list [encoder tokens, decoder block 1, ...,
    dec_norm(last block)], each (B, N, C); returns ``pts3d`` (B, H, W, 3), ``conf`` (B, H, W),
    ``desc`` (B, H, W, desc_dim) unit-norm, ``desc_conf`` (B, H, W).

    The local-feature MLP runs on concat(encoder tokens, last decoder tokens) and predicts
    ``(desc_dim + 1) * patch**2`` channels per token, pixel-shuffled to full resolution (channel
    ``c = d * patch**2 + dy * patch + dx``).
    """

    def __init__(self, enc_dim: int, dec_dim: int, dec_depth: int, patch_size: int, desc_dim: int,
                 depth_mode: Mode, conf_mode: Mode, desc_conf_mode: Mode, two_confs: bool = True,
                 hidden_dim_factor: float = 4.0) -> None:
        super().__init__()
        if dec_depth <= 9:
            raise ValueError(f"the catmlp+dpt head needs dec_depth > 9 (got {dec_depth})")
        hooks = [0, dec_depth * 2 // 4, dec_depth * 3 // 4, dec_depth]
        self.dpt = DPT([enc_dim, dec_dim, dec_dim, dec_dim], hooks, num_channels=4, patch_size=patch_size)
        idim = enc_dim + dec_dim
        self.head_local_features = Mlp(idim, int(hidden_dim_factor * idim), (desc_dim + int(two_confs)) * patch_size ** 2)
        self.patch_size = patch_size
        self.desc_dim = desc_dim
        self.two_confs = two_confs
        self.depth_mode, self.conf_mode, self.desc_conf_mode = depth_mode, conf_mode, desc_conf_mode

    def local_features(self, enc: torch.Tensor, dec: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """(B, N, Ce), (B, N, Cd) -> raw local features (B, desc_dim [+1], H, W)."""
        H, W = image_size
        p = self.patch_size
        feat = self.head_local_features(torch.cat((enc, dec), dim=-1))
        feat = feat.transpose(1, 2).reshape(feat.shape[0], -1, H // p, W // p)
        return F.pixel_shuffle(feat, p)

    def forward(self, decout: list[torch.Tensor], image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        raw = self.dpt(decout, image_size).permute(0, 2, 3, 1)
        local = self.local_features(decout[0], decout[-1], image_size).permute(0, 2, 3, 1)
        desc = local[..., :self.desc_dim]
        out = {
            "pts3d": reg_dense_depth(raw[..., 0:3], self.depth_mode),
            "conf": reg_dense_conf(raw[..., 3], self.conf_mode),
            "desc": desc / desc.norm(dim=-1, keepdim=True),
        }
        if self.two_confs:
            out["desc_conf"] = reg_dense_conf(local[..., self.desc_dim], self.desc_conf_mode)
        else:
            out["desc_conf"] = out["conf"].clone()
        return out
