"""DINOv2 Vision Transformer in plain torch, with the official parameter names.

The module tree reproduces facebookresearch/dinov2 (``dinov2/models/vision_transformer.py`` as
built by ``dinov2/hub/backbones.py``: ``block_chunks=0``, MLP feed-forward, LayerScale), so the
official ``dinov2_vit{s,b,l}14[_reg4]_pretrain.pth`` files load strictly::

    cls_token, pos_embed, [register_tokens], mask_token, patch_embed.proj.{weight,bias},
    blocks.{i}.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}, norm

The same class also builds the ViT-L/16 encoders of Depth Pro (timm ``vit_large_patch14_dinov2``
with its patch embedding resampled to 16x16 and its position embedding to 24x24+1 tokens): timm's
ViT has exactly the same parameter names except that it has no ``mask_token``, so Depth Pro
builds it with ``mask_token=False, patch_size=16, img_size=384, init_values=1e-5`` and with
timm's way of resizing position embeddings (size-based bicubic with antialiasing, which is
``interpolate_offset=0, interpolate_antialias=True`` here). Depth Pro only ever runs its ViTs at
their native 384x384, where neither resizing rule applies.

Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` (the official code
uses xFormers when present and the same SDPA call otherwise).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..base import BaseModel
from ..weights import Checkpoint, register_checkpoint

_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"
_LICENSE = "Apache-2.0 (facebookresearch/dinov2)"

# Sizes of the official hub models; every hub model uses patch 14 at 518x518 (37x37 tokens).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "vits14": dict(embed_dim=384, depth=12, num_heads=6),
    "vitb14": dict(embed_dim=768, depth=12, num_heads=12),
    "vitl14": dict(embed_dim=1024, depth=24, num_heads=16),
}
# Every official DINOv2 (ViT-S/B/L/g) splits its width into heads of 64 channels.
HEAD_DIM = 64
# The input normalisation DINOv2 was trained with (timm's ImageNet defaults, used by the official
# ``dinov2/data/transforms.py``), applied to RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The "_reg" hub models add 4 register tokens and resize position embeddings by output size
# with antialiasing (hub: ``interpolate_antialias=True, interpolate_offset=0.0``).
REGISTER_OPTIONS: dict[str, Any] = dict(num_register_tokens=4, interpolate_antialias=True,
                                        interpolate_offset=0.0)


def _register_checkpoints() -> None:
    for arch in ARCHITECTURES:
        for suffix in ("", "_reg4"):
            name = f"dinov2_{arch}{suffix}_pretrain"
            register_checkpoint(Checkpoint(
                name=name, url=f"{_BASE_URL}/dinov2_{arch}/{name}.pth", filename=f"{name}.pth",
                license=_LICENSE, notes="Flat state dict, no prefix (hub loads it strictly)."))


_register_checkpoints()


class PatchEmbed(nn.Module):
    """(B, C, H, W) image -> (B, H/p * W/p, D) tokens, one strided convolution ``proj``."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, D/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class LayerScale(nn.Module):
    """Per-channel learned scale ``gamma`` on a residual branch."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool,
                 init_values: float | None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(BaseModel):
    """DINOv2 ViT backbone (official API: ``forward_features``, ``get_intermediate_layers``).

    Token layout after ``prepare_tokens_with_masks``: ``[cls, registers (R), patches (h*w)]``,
    patches in row-major order of the (H/p, W/p) grid. ``img_size`` only fixes the number of
    stored position embeddings ((img_size/p)^2 + 1); other input sizes (multiples of the patch
    size) interpolate them as the official ``interpolate_pos_encoding`` does.
    """

    kind = "backbone"
    default_conf = {
        "img_size": 518,
        "patch_size": 14,
        "in_chans": 3,
        "embed_dim": 1024,
        "depth": 24,
        "num_heads": 16,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "init_values": 1.0,  # LayerScale init; 0 disables LayerScale (no ls*.gamma keys)
        "num_register_tokens": 0,
        "interpolate_antialias": False,
        "interpolate_offset": 0.1,
        "mask_token": True,  # DINOv2 has it (iBOT masking); timm's ViT (Depth Pro) does not
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        c = self.conf
        self.embed_dim = self.num_features = c["embed_dim"]
        self.patch_size = c["patch_size"]
        self.num_register_tokens = c["num_register_tokens"]
        self.n_blocks = c["depth"]
        grid = c["img_size"] // c["patch_size"]
        dim = c["embed_dim"]

        self.patch_embed = PatchEmbed(c["patch_size"], c["in_chans"], dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.register_tokens = (nn.Parameter(torch.zeros(1, self.num_register_tokens, dim))
                                if self.num_register_tokens else None)
        self.blocks = nn.ModuleList(
            Block(dim, c["num_heads"], c["mlp_ratio"], c["qkv_bias"], c["init_values"])
            for _ in range(c["depth"]))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, dim)) if c["mask_token"] else None
        self._init_weights()

    def _init_weights(self) -> None:
        """The official random initialisation (timm ViT scheme); pretrained weights replace it."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def interpolate_pos_encoding(self, num_tokens: int, height: int, width: int,
                                 dtype: torch.dtype) -> torch.Tensor:
        """Position embeddings for an input of ``height`` x ``width`` pixels: (1, 1 + h*w, D).

        As the official code: unchanged when the token count matches and the image is square;
        otherwise the (M, M) grid is resized bicubically in float32. With ``interpolate_offset``
        the resize is given as the scale factor ((h + offset) / M, (w + offset) / M) - which
        also sets the sampling positions, so it differs slightly from a size-based resize -
        else by output size; ``interpolate_antialias`` is passed to ``F.interpolate``.
        ``num_tokens`` counts the class token and the patch tokens (no registers).
        """
        stored = self.pos_embed.shape[1] - 1
        if num_tokens - 1 == stored and height == width:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        grid = int(math.sqrt(stored))
        if grid * grid != stored:
            raise ValueError(f"pos_embed holds {stored} patch positions, not a square grid")
        h, w = height // self.patch_size, width // self.patch_size
        offset = self.conf["interpolate_offset"]
        resize = ({"scale_factor": ((h + offset) / grid, (w + offset) / grid)} if offset
                  else {"size": (h, w)})
        patch_grid = pos_embed[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patch_grid = F.interpolate(patch_grid, mode="bicubic",
                                   antialias=self.conf["interpolate_antialias"], **resize)
        if patch_grid.shape[-2:] != (h, w):
            raise RuntimeError(f"position grid resized to {tuple(patch_grid.shape[-2:])}, expected {(h, w)}")
        patch_pos = patch_grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat((pos_embed[:, :1], patch_pos), dim=1).to(dtype)

    def prepare_tokens_with_masks(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) image -> (B, 1 + R + h*w, D) tokens; ``masks`` (B, h*w) bool replaces
        the masked patch tokens by ``mask_token`` before position embeddings are added."""
        height, width = x.shape[-2:]
        tokens = self.patch_embed(x)
        if masks is not None:
            if self.mask_token is None:
                raise ValueError("this ViT was built with mask_token=False; masks are not supported")
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype).unsqueeze(0), tokens)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(tokens.shape[1], height, width, tokens.dtype)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(tokens.shape[0], -1, -1)
            tokens = torch.cat((tokens[:, :1], registers, tokens[:, 1:]), dim=1)
        return tokens

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        """Run all blocks. Returns ``x_norm_clstoken`` (B, D), ``x_norm_regtokens`` (B, R, D),
        ``x_norm_patchtokens`` (B, h*w, D), ``x_prenorm`` (B, 1+R+h*w, D) and ``masks``."""
        tokens = self.prepare_tokens_with_masks(x, masks)
        for block in self.blocks:
            tokens = block(tokens)
        normed = self.norm(tokens)
        first_patch = 1 + self.num_register_tokens
        return {
            "x_norm_clstoken": normed[:, 0],
            "x_norm_regtokens": normed[:, 1:first_patch],
            "x_norm_patchtokens": normed[:, first_patch:],
            "x_prenorm": tokens,
            "masks": masks,
        }

    def get_intermediate_layers(self, x: torch.Tensor, n: int | Sequence[int] = 1, reshape: bool = False,
                                return_class_token: bool = False, norm: bool = True) -> tuple:
        """Outputs of chosen blocks: the ``n`` last ones (int) or those indexed by ``n``.

        Each output is (B, h*w, D) patch tokens, or (B, D, h, w) with ``reshape``; ``norm``
        applies the final LayerNorm; ``return_class_token`` pairs each with its (B, D) class token.
        """
        take = set(range(self.n_blocks - n, self.n_blocks) if isinstance(n, int) else n)
        tokens = self.prepare_tokens_with_masks(x)
        outputs = []
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in take:
                outputs.append(tokens)
        if len(outputs) != len(take):
            raise ValueError(f"blocks {sorted(take)} requested but the ViT has {self.n_blocks} blocks")
        if norm:
            outputs = [self.norm(out) for out in outputs]
        class_tokens = [out[:, 0] for out in outputs]
        patches = [out[:, 1 + self.num_register_tokens:] for out in outputs]
        if reshape:
            patches = [self.tokens_to_grid(out, x.shape[-2], x.shape[-1]) for out in patches]
        if return_class_token:
            return tuple(zip(patches, class_tokens))
        return tuple(patches)

    def tokens_to_grid(self, patch_tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, h*w, D) row-major patch tokens of a ``height`` x ``width`` image -> (B, D, h, w)."""
        batch, _, dim = patch_tokens.shape
        h, w = height // self.patch_size, width // self.patch_size
        return patch_tokens.reshape(batch, h, w, dim).permute(0, 3, 1, 2).contiguous()

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """The hub model's call: the normalised class token (B, D) (its head is the identity)."""
        return self.forward_features(x, masks)["x_norm_clstoken"]


def imagenet_normalize(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> the normalised input DINOv2 expects."""
    mean = image.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = image.new_tensor(IMAGENET_STD)[:, None, None]
    return (image - mean) / std


def architecture_from_state_dict(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The :class:`DinoVisionTransformer` options a state dict in the official layout was made with.

    Read from tensor shapes: width (``cls_token``), depth (``blocks.{i}``), patch size and input
    channels (``patch_embed.proj``), stored position grid (``pos_embed`` -> ``img_size``), MLP
    ratio (``mlp.fc1``), register tokens, and whether LayerScale, the qkv bias and ``mask_token``
    exist. The head count is not in the shapes: it is ``embed_dim / 64``, as in every official
    DINOv2. The interpolation options are not in the file either (the hub ties them to the
    register variants); the caller's model family supplies them.
    """
    try:
        dim = state["cls_token"].shape[-1]
        patch = state["patch_embed.proj.weight"].shape
        positions = state["pos_embed"].shape[1] - 1
        hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as error:
        raise ValueError(f"not a DINOv2 state dict in the official layout (no {error.args[0]})") from None
    grid = math.isqrt(positions)
    if dim % HEAD_DIM or grid * grid != positions:
        raise ValueError(f"DINOv2 state dict with width {dim} and {positions} positions: the width must be a "
                         f"multiple of the head size {HEAD_DIM} and the positions a square grid")
    registers = state.get("register_tokens")
    return dict(
        embed_dim=dim, num_heads=dim // HEAD_DIM, patch_size=patch[-1], in_chans=patch[1], img_size=grid * patch[-1],
        depth=len({key.split(".")[1] for key in state if key.startswith("blocks.")}), mlp_ratio=hidden / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state, init_values=1.0 if "blocks.0.ls1.gamma" in state else 0.0,
        mask_token="mask_token" in state, num_register_tokens=0 if registers is None else registers.shape[1])


def _build(arch: str, registers: bool, conf: dict[str, Any]) -> DinoVisionTransformer:
    options = {**ARCHITECTURES[arch], **(REGISTER_OPTIONS if registers else {})}
    return DinoVisionTransformer(**{**options, **conf})


def dinov2_vits14(**conf: Any) -> DinoVisionTransformer:
    """DINOv2 ViT-S/14 (22M parameters), hub defaults; ``conf`` overrides any option."""
    return _build("vits14", False, conf)


def dinov2_vitb14(**conf: Any) -> DinoVisionTransformer:
    """DINOv2 ViT-B/14 (87M parameters), hub defaults."""
    return _build("vitb14", False, conf)


def dinov2_vitl14(**conf: Any) -> DinoVisionTransformer:
    """DINOv2 ViT-L/14 (304M parameters), hub defaults (RoMa's coarse encoder)."""
    return _build("vitl14", False, conf)


def dinov2_vits14_reg(**conf: Any) -> DinoVisionTransformer:
    """DINOv2 ViT-S/14 with 4 register tokens."""
    return _build("vits14", True, conf)


def dinov2_vitb14_reg(**conf: Any) -> DinoVisionTransformer:
    """DINOv2 ViT-B/14 with 4 register tokens."""
    return _build("vitb14", True, conf)


def dinov2_vitl14_reg(**conf: Any) -> DinoVisionTransformer:
    """DINOv2 ViT-L/14 with 4 register tokens."""
    return _build("vitl14", True, conf)
