"""CroCo ViT building blocks (naver/croco), as used by DUSt3R and MASt3R.

Written from the published architecture so that the official checkpoints load with their own
parameter names: ``PatchEmbed.proj``, ``Block.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
``DecoderBlock.{norm1,attn,cross_attn.{projq,projk,projv,proj},norm2,norm3,mlp,norm_y}``.

Positions are encoded with a 2D rotary embedding (:class:`RoPE2D`): the head dimension is split in
two halves, the first rotated by the token's row index, the second by its column index, each half
with the 1D RoPE frequencies ``base ** (-2i / d)``. CroCo's default base is 100 (``RoPE100``).

Attention uses :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient
kernels on GPU); it is the same function as the reference ``softmax(q k^T / sqrt(d)) v`` up to
float rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-6  # CroCo builds every LayerNorm with eps=1e-6


def patch_positions(batch: int, rows: int, cols: int, device: torch.device | str) -> torch.Tensor:
    """Integer (row, col) position of every patch in raster order.

    Returns (batch, rows * cols, 2) int64: ``[0, 0], [0, 1], ..., [0, cols-1], [1, 0], ...``.
    """
    y = torch.arange(rows, device=device)
    x = torch.arange(cols, device=device)
    pos = torch.cartesian_prod(y, x)
    return pos.view(1, rows * cols, 2).expand(batch, -1, -1)


class RoPE2D(nn.Module):
    """2D rotary position embedding of CroCo (no parameters).

    ``forward(tokens (B, heads, N, D), positions (B, N, 2) int (row, col)) -> (B, heads, N, D)``.
    D must be divisible by 4: the first D/2 channels encode the row, the last D/2 the column.
    """

    def __init__(self, base: float = 100.0) -> None:
        super().__init__()
        self.base = base

    def _cos_sin(self, pos1d: torch.Tensor, dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables for integer positions (B, N) and a 1D RoPE of width ``dim``: (B, 1, N, dim)."""
        inv_freq = 1.0 / (self.base ** (torch.arange(0, dim, 2, device=pos1d.device).float() / dim))
        freqs = pos1d.to(inv_freq.dtype)[..., None] * inv_freq
        freqs = torch.cat((freqs, freqs), dim=-1).to(dtype)[:, None]
        return freqs.cos(), freqs.sin()

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def _rope1d(self, tokens: torch.Tensor, pos1d: torch.Tensor) -> torch.Tensor:
        cos, sin = self._cos_sin(pos1d, tokens.shape[-1], tokens.dtype)
        return tokens * cos + self._rotate_half(tokens) * sin

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] % 4:
            raise ValueError(f"RoPE2D needs a head dimension divisible by 4, got {tokens.shape[-1]}")
        rows, cols = tokens.chunk(2, dim=-1)
        return torch.cat((self._rope1d(rows, positions[..., 0]), self._rope1d(cols, positions[..., 1])), dim=-1)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches -> tokens, any H, W divisible by the patch size.

    ``forward(img (B, 3, H, W)) -> tokens (B, H/p * W/p, dim), positions (B, N, 2) int64 (row, col)``.
    """

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, H, W = img.shape
        p = self.patch_size[0]
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}")
        x = self.proj(img)
        pos = patch_positions(B, x.shape[2], x.shape[3], img.device)
        return x.flatten(2).transpose(1, 2), pos


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (timm's ``Mlp``; keys ``fc1``, ``fc2``)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, heads, Nq, d) x (B, heads, Nk, d) -> (B, Nq, heads * d)."""
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).flatten(2)


class Attention(nn.Module):
    """Multi-head self-attention with RoPE on queries and keys (keys ``qkv``, ``proj``)."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.rope is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        return self.proj(_attend(q, k, v))


class CrossAttention(nn.Module):
    """Multi-head cross-attention, queries from x, keys/values from the other view (keys ``projq/k/v``, ``proj``)."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        return x.view(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, xpos: torch.Tensor, mpos: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.projq(x)), self._heads(self.projk(mem)), self._heads(self.projv(mem))
        if self.rope is not None:
            q, k = self.rope(q, xpos), self.rope(k, mpos)
        return self.proj(_attend(q, k, v))


class Block(nn.Module):
    """Pre-norm ViT encoder block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, rope: RoPE2D | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, rope)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """CroCo decoder block: self-attention, cross-attention to the other view's tokens, MLP.

    The other view's tokens are normalised by ``norm_y`` before being attended to.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, rope: RoPE2D | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, rope)
        self.cross_attn = CrossAttention(dim, num_heads, rope)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm3 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, y: torch.Tensor, xpos: torch.Tensor, ypos: torch.Tensor) -> torch.Tensor:
        """x (B, Nx, C) attends to y (B, Ny, C); returns the updated x."""
        x = x + self.attn(self.norm1(x), xpos)
        x = x + self.cross_attn(self.norm2(x), self.norm_y(y), xpos, ypos)
        return x + self.mlp(self.norm3(x))
