"""RoMa's decoder modules with the official parameter names (``romatch/models/matcher.py``).

The coarse Gaussian-process match module (:class:`GP`), the transformer match decoder that
classifies a 64x64 anchor grid (:class:`TransformerDecoder`), the per-scale convolutional
refiners with local correlation (:class:`ConvRefiner`) and the coarse-to-fine loop
(:class:`Decoder`). DKM reuses ``GP``, ``ConvRefiner`` and ``Decoder`` with its own coarse module.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import ContextManager

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.dinov2 import Mlp
from .ops import cls_to_flow_refine, gp_posterior_mean, local_correlation, pixel_grid


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """Mixed precision on CUDA only (as RoMa: on CPU everything runs in float32)."""
    if dtype is None or dtype == torch.float32 or device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=dtype)


class GP(nn.Module):
    """Gaussian-process regression of image B's position embedding at image A's features.

    ``pos_conv`` (2 -> gp_dim, 1x1) followed by ``cos(8 pi .)`` is RoMa's Fourier basis embedding
    of B's coordinates; the output (B, gp_dim, H, W) is the posterior mean of that embedding at
    every A feature under a cosine kernel with temperature ``T`` (0.2) and noise ``sigma_noise``.
    """

    def __init__(self, gp_dim: int, temperature: float = 0.2, sigma_noise: float = 0.1) -> None:
        super().__init__()
        self.pos_conv = nn.Conv2d(2, gp_dim, 1, 1)
        self.temperature = temperature
        self.sigma_noise = sigma_noise

    def position_embedding(self, b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        """Fourier features of the pixel-centre coordinates, (B, gp_dim, H, W)."""
        return torch.cos(8 * math.pi * self.pos_conv(pixel_grid(b, h, w, device)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: A features (B, C, H1, W1), y: B features (B, C, H2, W2) -> (B, gp_dim, H1, W1)."""
        b, _, h1, w1 = x.shape
        _, _, h2, w2 = y.shape
        f = self.position_embedding(b, h2, w2, y.device).flatten(2).transpose(1, 2)
        mean = gp_posterior_mean(x.float().flatten(2).transpose(1, 2), y.float().flatten(2).transpose(1, 2),
                                 f, self.temperature, self.sigma_noise)
        return mean.transpose(1, 2).reshape(b, -1, h1, w1)


class Attention(nn.Module):
    """Multi-head self-attention (``qkv`` without bias, ``proj`` with) through torch's SDPA kernel."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block of the match decoder (DINOv2's ``Block`` without LayerScale)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerDecoder(nn.Module):
    """Match decoder: tokens = [GP posterior, A features] per coarse pixel -> anchor logits + certainty.

    Input (B, gp_dim, H, W) and (B, feat_dim, H, W); output ``(logits (B, R^2, H, W), certainty
    logit (B, 1, H, W), None)``, R = ``cls_res`` (64 in RoMa). No positional encoding (the GP
    posterior already encodes position), as in the official ``pos_enc=False`` configuration.
    """

    is_classifier = True

    def __init__(self, dim: int, depth: int, num_heads: int, cls_res: int, amp_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Block(dim, num_heads) for _ in range(depth)])
        self.hidden_dim = dim
        self.out_dim = cls_res ** 2 + 1
        self.to_out = nn.Linear(dim, self.out_dim)
        self.amp_dtype = amp_dtype

    def scales(self) -> list[int]:
        return [16]

    def forward(self, gp_posterior: torch.Tensor, features: torch.Tensor, context: torch.Tensor | None,
                scale: str) -> tuple[torch.Tensor, torch.Tensor, None]:
        with autocast(gp_posterior.device, self.amp_dtype):
            x = torch.cat((gp_posterior, features), dim=1)
            b, c, h, w = x.shape
            out = self.to_out(self.blocks(x.flatten(2).transpose(1, 2)))
            out = out.transpose(1, 2).reshape(b, self.out_dim, h, w)
        return out[:, :-1], out[:, -1:], None


def refiner_block(in_dim: int, out_dim: int, kernel_size: int, bn_momentum: float) -> nn.Sequential:
    """Depthwise kxk conv -> BatchNorm -> ReLU -> 1x1 conv (``create_block`` with ``dw=True``)."""
    if out_dim % in_dim:
        raise ValueError(f"depthwise block needs out_dim ({out_dim}) divisible by in_dim ({in_dim})")
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel_size, 1, kernel_size // 2, groups=in_dim),
        nn.BatchNorm2d(out_dim, momentum=bn_momentum),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_dim, out_dim, 1, 1, 0),
    )


class ConvRefiner(nn.Module):
    """Predicts a flow correction and a certainty update at one scale.

    Input channels: A features x, B features sampled at the current warp (x_hat), a linear
    embedding (``disp_emb``) of the current displacement, and - with ``local_corr_radius`` r -
    the local correlation of x with B over a (2r+1)^2 window around the warp target.
    Output: (delta flow (B, 2, H, W) in units of 1/4 pixel at this scale, delta certainty
    (B, 1, H, W)). RoMa's ``out_conv`` puts the displacement first, DKM's the certainty
    (``certainty_first``).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int = 3, kernel_size: int = 5, hidden_blocks: int = 8,
                 displacement_emb_dim: int = 16, local_corr_radius: int | None = None, bn_momentum: float = 0.1,
                 certainty_first: bool = False, amp_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.block1 = refiner_block(in_dim, hidden_dim, kernel_size, bn_momentum)
        self.hidden_blocks = nn.Sequential(*[refiner_block(hidden_dim, hidden_dim, kernel_size, bn_momentum)
                                             for _ in range(hidden_blocks)])
        self.out_conv = nn.Conv2d(hidden_dim, out_dim, 1, 1, 0)
        self.disp_emb = nn.Conv2d(2, displacement_emb_dim, 1, 1, 0)
        self.local_corr_radius = local_corr_radius
        self.certainty_first = certainty_first
        self.amp_dtype = amp_dtype

    def forward(self, x: torch.Tensor, y: torch.Tensor, warp: torch.Tensor,
                displacement_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y (B, C, H, W) features of A and B at this scale; warp (B, 2, H, W) A -> B."""
        b, _, h, w = x.shape
        with autocast(x.device, self.amp_dtype):
            x_hat = F.grid_sample(y, warp.permute(0, 2, 3, 1).to(y.dtype), align_corners=False, mode="bilinear")
            displacement = warp - pixel_grid(b, h, w, x.device, warp.dtype)
            inputs = [x, x_hat, self.disp_emb(displacement_scale * displacement)]
            if self.local_corr_radius:
                inputs.append(local_correlation(x, y, self.local_corr_radius, warp))
            d = self.hidden_blocks(self.block1(torch.cat(inputs, dim=1)))
        d = self.out_conv(d.float())
        if self.certainty_first:
            return d[:, 1:], d[:, :1]
        return d[:, :-1], d[:, -1:]


class Decoder(nn.Module):
    """Coarse-to-fine loop shared by RoMa and DKM.

    ``embedding_decoder`` produces the coarse match at its ``scales()`` (anchor logits for RoMa,
    a flow for DKM); each scale in ``conv_refiner`` then adds ``s * delta / (4 W)`` (x) and
    ``s * delta / (4 H)`` (y), with H, W the stride-1 size, and adds the certainty update; flow and
    certainty are bilinearly upsampled to the next scale. ``upsample=True`` is the second,
    high-resolution pass: it starts from a given flow/certainty at stride 8.

    ``scale_displacement_emb``: RoMa multiplies the displacement fed to ``disp_emb`` by
    ``40/32 * scale_factor`` (resolution relative to training); DKM does not.
    """

    def __init__(self, embedding_decoder: nn.Module, gps: nn.ModuleDict, proj: nn.ModuleDict,
                 conv_refiner: nn.ModuleDict, scales: list[str], scale_displacement_emb: bool = True) -> None:
        super().__init__()
        self.embedding_decoder = embedding_decoder
        self.gps = gps
        self.proj = proj
        self.conv_refiner = conv_refiner
        self.scales = scales
        self.scale_displacement_emb = scale_displacement_emb
        self.refine_init = 4

    def forward(self, f1: dict[int, torch.Tensor], f2: dict[int, torch.Tensor], upsample: bool = False,
                flow: torch.Tensor | None = None, certainty: torch.Tensor | None = None,
                scale_factor: float = 1.0) -> dict[int, dict[str, torch.Tensor]]:
        """f1, f2: feature pyramids {stride: (B, C_s, H/s, W/s)} of A and B.

        Returns ``{stride: {"flow": (B, 2, h, w) A->B normalised, "certainty": (B, 1, h, w) logit}}``.
        """
        coarse_scales = self.embedding_decoder.scales()
        scales = ["8", "4", "2", "1"] if upsample else self.scales
        sizes = {s: f1[s].shape[-2:] for s in f1}
        h, w = sizes[1]
        b = f1[1].shape[0]
        device = f1[1].device
        coarsest = int(scales[0])
        context = torch.zeros(b, self.embedding_decoder.hidden_dim, *sizes[coarsest], device=device)
        if upsample:
            flow = F.interpolate(flow, size=sizes[coarsest], mode="bilinear", align_corners=False)
            certainty = F.interpolate(certainty, size=sizes[coarsest], mode="bilinear", align_corners=False)
        else:
            flow = pixel_grid(b, *sizes[coarsest], device)
            certainty = torch.zeros(b, 1, *sizes[coarsest], device=device)
        displacement_scale = 40 / 32 * scale_factor if self.scale_displacement_emb else 1.0
        corresps: dict[int, dict[str, torch.Tensor]] = {}
        for scale in scales:
            s = int(scale)
            f1_s, f2_s = f1[s], f2[s]
            if scale in self.proj:
                f1_s, f2_s = self.proj[scale](f1_s.float()), self.proj[scale](f2_s.float())
            if s in coarse_scales:
                context = F.interpolate(context, size=sizes[s], mode="bilinear", align_corners=False)
                posterior = self.gps[scale](f1_s, f2_s)
                coarse, certainty, context = self.embedding_decoder(posterior, f1_s, context, scale)
                flow = cls_to_flow_refine(coarse.float()).permute(0, 3, 1, 2) if self.embedding_decoder.is_classifier \
                    else coarse
                certainty = certainty.float()
            if scale in self.conv_refiner:
                delta_flow, delta_certainty = self.conv_refiner[scale](f1_s, f2_s, flow, displacement_scale)
                flow = flow + s * torch.stack((delta_flow[:, 0] / (self.refine_init * w),
                                               delta_flow[:, 1] / (self.refine_init * h)), dim=1)
                certainty = certainty + delta_certainty
            corresps[s] = {"flow": flow, "certainty": certainty}
            if scale != "1":
                flow = F.interpolate(flow, size=sizes[s // 2], mode="bilinear", align_corners=False)
                certainty = F.interpolate(certainty, size=sizes[s // 2], mode="bilinear", align_corners=False)
        return corresps
