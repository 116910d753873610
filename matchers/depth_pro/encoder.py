"""Depth Pro's multi-scale encoder: overlapping 384-px patches at three scales through one ViT,
plus a global ViT on the whole image at 384 px (apple/ml-depth-pro ``network/encoder.py``).

Parameter names follow the official ``DepthProEncoder``: ``patch_encoder.*``, ``image_encoder.*``
(both DINOv2-style ViTs), ``upsample_latent0``, ``upsample_latent1``, ``upsample0..2`` (1x1
projection then 2x2 stride-2 transposed convolutions, no biases), ``upsample_lowres``,
``fuse_lowres``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.dinov2 import DinoVisionTransformer


def project_upsample(dim_in: int, dim_out: int, upsample_layers: int, dim_int: int | None = None) -> nn.Sequential:
    """1x1 projection ``dim_in -> dim_int`` then ``upsample_layers`` x2 transposed convolutions."""
    dim_int = dim_out if dim_int is None else dim_int
    layers: list[nn.Module] = [nn.Conv2d(dim_in, dim_int, kernel_size=1, bias=False)]
    layers += [nn.ConvTranspose2d(dim_int if i == 0 else dim_out, dim_out, kernel_size=2, stride=2, bias=False)
               for i in range(upsample_layers)]
    return nn.Sequential(*layers)


def split_patches(x: torch.Tensor, patch_size: int, overlap_ratio: float) -> torch.Tensor:
    """Overlapping square tiles of ``x`` (B, C, S, S) -> (n*n*B, C, p, p).

    Tiles are ordered row by row (tile row j outer, column i inner), the batch innermost, as the
    official ``split``; the stride is ``int(p * (1 - overlap_ratio))`` and must tile S exactly
    (1536 px: 5x5 tiles at stride 288; 768 px: 3x3 at stride 192).
    """
    stride = int(patch_size * (1 - overlap_ratio))
    size = x.shape[-1]
    if x.shape[-2] != size or (size - patch_size) % stride:
        raise ValueError(f"cannot tile a {tuple(x.shape[-2:])} image with {patch_size}-px tiles at stride {stride}")
    tiles = x.unfold(2, patch_size, stride).unfold(3, patch_size, stride)  # (B, C, n, n, p, p)
    batch, channels, n = tiles.shape[:3]
    return tiles.permute(2, 3, 0, 1, 4, 5).reshape(n * n * batch, channels, patch_size, patch_size)


def _merge_index(steps: int, size: int, padding: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each output row of a merged map: (tile index, row inside the tile).

    Every tile loses ``padding`` rows on each side that touches another tile; outer borders are
    kept. Rows: tile 0 gives [0, size - padding), inner tiles [padding, size - padding), the last
    tile [padding, size).
    """
    starts = [0 if j == 0 else padding for j in range(steps)]
    ends = [size if j == steps - 1 else size - padding for j in range(steps)]
    tile = torch.cat([torch.full((e - s,), j, dtype=torch.long) for j, (s, e) in enumerate(zip(starts, ends))])
    local = torch.cat([torch.arange(s, e) for s, e in zip(starts, ends)])
    return tile.to(device), local.to(device)


def merge_patches(x: torch.Tensor, batch_size: int, padding: int) -> torch.Tensor:
    """Inverse of :func:`split_patches` on feature maps: (n*n*B, C, h, w) -> (B, C, H', W'),
    dropping ``padding`` pixels on every side shared by two tiles (the official ``merge``)."""
    steps = round((x.shape[0] // batch_size) ** 0.5)
    _, channels, height, width = x.shape
    grid = x.reshape(steps, steps, batch_size, channels, height, width).permute(2, 3, 0, 4, 1, 5)
    rows, row_local = _merge_index(steps, height, padding, x.device)
    cols, col_local = _merge_index(steps, width, padding, x.device)
    return grid[:, :, rows, row_local][..., cols, col_local]  # (B, C, H', W')


class DepthProEncoder(nn.Module):
    """Multi-resolution encodings of a (B, 3, 4p, 4p) image, p = the ViT's image size (384).

    Returns five maps (channels and sizes of the released model at 1536 px)::

        latent0  (B, decoder_features, 768, 768)   blocks[hook0] of the 5x5 tiles, x8
        latent1  (B, dims[0], 384, 384)            blocks[hook1] of the 5x5 tiles, x4
        x0       (B, dims[1], 192, 192)            final tokens of the 5x5 tiles at 1536 px, x2
        x1       (B, dims[2], 96, 96)              final tokens of the 3x3 tiles at 768 px, x2
        global   (B, dims[3], 48, 48)              384-px image through both ViTs, fused
    """

    OVERLAPS = (0.25, 0.5)  # tile overlap at full and at half resolution

    def __init__(self, dims_encoder: list[int], patch_encoder: DinoVisionTransformer,
                 image_encoder: DinoVisionTransformer, hook_block_ids: list[int], decoder_features: int) -> None:
        super().__init__()
        self.dims_encoder = list(dims_encoder)
        self.patch_encoder = patch_encoder
        self.image_encoder = image_encoder
        self.hook_block_ids = list(hook_block_ids)
        self.patch_pixels = patch_encoder.conf["img_size"]
        # Half the tile overlap, in tokens, is cropped from each shared side when merging:
        # 3 and 6 tokens for the released 24x24-token tiles (the official hard-coded paddings).
        grid = self.patch_pixels // patch_encoder.patch_size
        if any((grid * ratio / 2) % 1 for ratio in self.OVERLAPS):
            raise ValueError(f"a ViT grid of {grid} tokens cannot be tiled with overlaps {self.OVERLAPS}")
        self.merge_padding = {ratio: int(grid * ratio / 2) for ratio in self.OVERLAPS}
        dim = patch_encoder.embed_dim
        self.upsample_latent0 = project_upsample(dim, decoder_features, 3, dim_int=self.dims_encoder[0])
        self.upsample_latent1 = project_upsample(dim, self.dims_encoder[0], 2)
        self.upsample0 = project_upsample(dim, self.dims_encoder[1], 1)
        self.upsample1 = project_upsample(dim, self.dims_encoder[2], 1)
        self.upsample2 = project_upsample(dim, self.dims_encoder[3], 1)
        self.upsample_lowres = nn.ConvTranspose2d(image_encoder.embed_dim, self.dims_encoder[3],
                                                  kernel_size=2, stride=2, bias=True)
        self.fuse_lowres = nn.Conv2d(2 * self.dims_encoder[3], self.dims_encoder[3], kernel_size=1, bias=True)

    @property
    def img_size(self) -> int:
        """Network input size: four ViT images side by side (1536 for the released model)."""
        return 4 * self.patch_pixels

    def _patch_tokens(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patch-encoder grids (N, D, h, w) for the two hooked blocks (before the final norm,
        as the official forward hooks see them) and for the normalised last block."""
        vit = self.patch_encoder
        last = vit.n_blocks - 1
        wanted = sorted({*self.hook_block_ids[:2], last})
        outputs = dict(zip(wanted, vit.get_intermediate_layers(patches, n=wanted, norm=False)))
        size = patches.shape[-1]
        hook0, hook1 = (vit.tokens_to_grid(outputs[i], size, size) for i in self.hook_block_ids[:2])
        final = vit.tokens_to_grid(vit.norm(outputs[last]), size, size)
        return hook0, hook1, final

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        batch = x.shape[0]
        p = self.patch_pixels
        x1 = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        x2 = F.interpolate(x, scale_factor=0.25, mode="bilinear", align_corners=False)
        full, half = self.OVERLAPS
        tiles0 = split_patches(x, p, overlap_ratio=full)   # 5x5 at 1536
        tiles1 = split_patches(x1, p, overlap_ratio=half)  # 3x3 at 768
        hook0, hook1, final = self._patch_tokens(torch.cat((tiles0, tiles1, x2), dim=0))

        n0 = tiles0.shape[0]
        pad0, pad1 = self.merge_padding[full], self.merge_padding[half]
        latent0 = merge_patches(hook0[:n0], batch, pad0)
        latent1 = merge_patches(hook1[:n0], batch, pad0)
        final0, final1, final2 = torch.split(final, [n0, tiles1.shape[0], batch], dim=0)
        features0 = merge_patches(final0, batch, pad0)
        features1 = merge_patches(final1, batch, pad1)

        image_tokens = self.image_encoder.forward_features(x2)["x_norm_patchtokens"]
        global_features = self.image_encoder.tokens_to_grid(image_tokens, p, p)

        features2 = self.upsample2(final2)
        global_features = self.fuse_lowres(torch.cat((features2, self.upsample_lowres(global_features)), dim=1))
        return [
            self.upsample_latent0(latent0),
            self.upsample_latent1(latent1),
            self.upsample0(features0),
            self.upsample1(features1),
            global_features,
        ]
