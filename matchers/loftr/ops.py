"""The mathematical pieces of LoFTR (Sun et al., CVPR 2021), as functions with documented shapes.

Kept apart from the modules so each can be tested against its definition: linear attention
against the explicit kernel-weighted average, the positional encoding against its closed form,
coarse matching on a crafted score matrix, window cropping against ``F.unfold``, and the fine
expectation on a peaked heatmap.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1``: the positive kernel feature map of linear attention (Katharopoulos et al.)."""
    return F.elu(x) + 1


def linear_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Multi-head linear attention: ``out_l = sum_s (phi(q_l).phi(k_s)) v_s / (sum_s phi(q_l).phi(k_s) + eps)``.

    query (B, L, H, D), key (B, S, H, D), value (B, S, H, Dv) -> (B, L, H, Dv); phi =
    :func:`elu_feature_map`. Cost O((L + S) D Dv) instead of O(L S): the keys and values are
    summarised once in a (D, Dv) matrix per head. The values are divided by S before the sum and
    the result multiplied back (what the official code does to stay inside float16's range).
    """
    q, k = elu_feature_map(query), elu_feature_map(key)
    length = value.shape[1]
    summary = torch.einsum("bshd,bshv->bhdv", k, value / length)
    normaliser = 1.0 / (torch.einsum("blhd,bhd->blh", q, k.sum(dim=1)) + eps)
    return torch.einsum("blhd,bhdv,blh->blhv", q, summary, normaliser) * length


def sine_position_encoding(channels: int, height: int, width: int, temp_bug_fix: bool = False,
                           device: torch.device | str | None = None) -> torch.Tensor:
    """LoFTR's 2-D sinusoidal positional encoding, (1, channels, height, width) float32.

    Channel ``4g + (0, 1, 2, 3)`` holds ``(sin(x w_g), cos(x w_g), sin(y w_g), cos(y w_g))`` with
    ``x = column + 1``, ``y = row + 1`` and ``w_g = exp(2 g r)``, g = 0 .. channels/4 - 1.
    ``temp_bug_fix=True`` is the intended rate ``r = -ln(10000) / (channels / 2)``; the released
    LoFTR models and GIM's (``temp_bug_fix=False``) were trained with the operator-precedence slip
    ``r = (-ln(10000) / channels) // 2``, i.e. ``r = -1`` (zju3dv/LoFTR issue 41).
    The official module precomputes a 256 x 256 map (inputs up to 2048 px); this computes any size.
    """
    if channels % 4:
        raise ValueError(f"sine_position_encoding: channels must be a multiple of 4, got {channels}")
    if temp_bug_fix:
        rate = -math.log(10000.0) / (channels // 2)
    else:
        rate = (-math.log(10000.0) / channels) // 2
    frequencies = torch.exp(torch.arange(0, channels // 2, 2, dtype=torch.float32, device=device) * rate)
    ys = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    xs = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    angle_x = (frequencies[:, None] * xs[None])[:, None, :].expand(-1, height, -1)  # (C/4, H, W)
    angle_y = (frequencies[:, None] * ys[None])[:, :, None].expand(-1, -1, width)
    encoding = torch.stack((angle_x.sin(), angle_x.cos(), angle_y.sin(), angle_y.cos()), dim=1)  # (C/4, 4, H, W)
    return encoding.reshape(1, channels, height, width)


def dual_softmax(feat0: torch.Tensor, feat1: torch.Tensor, temperature: float) -> torch.Tensor:
    """Matching confidence ``softmax_rows(S) * softmax_cols(S)`` with ``S = <f0, f1> / (C tau)``.

    feat0 (B, L, C), feat1 (B, S, C) -> (B, L, S) in [0, 1]; each feature is scaled by
    1/sqrt(C) before the dot product, as in LoFTR's coarse matching.
    """
    scale = feat0.shape[-1] ** 0.5
    similarity = torch.einsum("blc,bsc->bls", feat0 / scale, feat1 / scale) / temperature
    confidence = similarity.softmax(dim=1)
    return confidence.mul_(similarity.softmax(dim=2))


def border_mask(height: int, width: int, border: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(height * width,) bool, row-major: False for cells within ``border`` cells of an edge."""
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    inside_rows = (rows >= border) & (rows < height - border)
    inside_cols = (cols >= border) & (cols < width - border)
    return (inside_rows[:, None] & inside_cols[None]).reshape(-1)


def mutual_nearest_matches(confidence: torch.Tensor, threshold: float, valid0: torch.Tensor | None = None,
                           valid1: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coarse matches: pairs (i, j) that are each other's best, score above ``threshold``, and
    lie on valid cells.

    confidence (B, L, S); valid0 (L,) / valid1 (S,) bool (e.g. :func:`border_mask`; the maxima
    are still taken over all cells, as the official code masks after comparing). Returns
    ``(b_ids, i_ids, j_ids, scores)``, each (M,), ordered by batch then i. Rows with tied maxima
    keep the first (ties have probability zero on real features).
    """
    row_best, j_best = confidence.max(dim=2)  # (B, L)
    col_best = confidence.max(dim=1).values  # (B, S)
    keep = (row_best == col_best.gather(1, j_best)) & (row_best > threshold)
    if valid0 is not None:
        keep &= valid0[None]
    if valid1 is not None:
        keep &= valid1[j_best]
    b_ids, i_ids = torch.nonzero(keep, as_tuple=True)
    return b_ids, i_ids, j_best[b_ids, i_ids], row_best[b_ids, i_ids]


def crop_windows(features: torch.Tensor, b_ids: torch.Tensor, cell_ids: torch.Tensor, coarse_width: int,
                 stride: int, window: int) -> torch.Tensor:
    """The ``window`` x ``window`` fine-feature patch centred on each selected coarse cell.

    features (B, C, Hf, Wf) (Hf = stride * coarse height); ``cell_ids`` (M,) row-major coarse
    cells of batch items ``b_ids`` (M,). Returns (M, window * window, C), row-major within the
    window and zero outside the map: ``F.unfold(features, window, padding=window // 2,
    stride=stride)`` at those cells (the official code), without unfolding every cell.
    """
    half = window // 2
    padded = F.pad(features, (half, half, half, half))
    offsets = torch.arange(window, device=features.device)
    rows = (cell_ids // coarse_width * stride)[:, None] + offsets  # (M, window), padded coordinates
    cols = (cell_ids % coarse_width * stride)[:, None] + offsets
    patches = padded[b_ids[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (M, window, window, C)
    return patches.reshape(len(cell_ids), window * window, features.shape[1])


def fine_expectation(window0: torch.Tensor, window1: torch.Tensor) -> torch.Tensor:
    """Sub-pixel position in window 1 of the centre of window 0, by soft-argmax.

    window0, window1 (M, W*W, C) -> (M, 2) as (x, y) in [-1, 1] (-1 / +1: centres of the first /
    last column or row): the expectation of the grid under ``softmax(<f0_centre, f1_r> /
    sqrt(C))`` over the W*W positions r (kornia's ``spatial_expectation2d`` with normalised
    coordinates, as LoFTR's fine matching uses).
    """
    cells, channels = window1.shape[1:]
    size = math.isqrt(cells)
    centre = window0[:, cells // 2]
    heatmap = torch.einsum("mc,mrc->mr", centre, window1).div(channels ** 0.5).softmax(dim=1)
    axis = torch.linspace(-1, 1, size, device=window1.device, dtype=heatmap.dtype)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(cells, 2)  # (x, y)
    return heatmap @ grid
