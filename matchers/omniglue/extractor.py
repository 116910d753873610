"""The ``omniglue_superpoint`` extractor: sp_v6 SuperPoint plus DINOv2 guidance features.

OmniGlue's matcher needs, per keypoint, the SuperPoint descriptor and the DINOv2 ViT-B/14 feature
at that keypoint. To keep recon's pipeline unchanged (features.h5 holds one descriptor matrix per
image) this extractor concatenates them: ``descriptors`` is (B, N, 256 + 768) = [SuperPoint |
DINOv2], stored as a (1024, N) dataset, and the ``omniglue`` matcher splits it again
(:meth:`OmniGlue.split_descriptors`). Only the first 256 channels are unit vectors.

Both halves follow ``omniglue_extract.py`` / ``superpoint_extract.py`` / ``dino_extract.py``:

* SuperPoint sees the gray image resized so that each side is rounded to the nearest multiple of
  8, and its keypoints are mapped back by ``(old - 1) / (new - 1)`` per axis; 1024 keypoints.
* DINOv2 sees the RGB image with its long side limited to 630 (the short side scaled and
  truncated), both sides floored to multiples of 14, bilinear resize, ImageNet normalisation; the
  features are the last layer's normalised patch tokens (``get_intermediate_layers(n=1)``, i.e.
  ``forward_features()["x_norm_patchtokens"]``).
* The DINOv2 map (h, w) is read at ``xy / (W, H) * (w, h)`` with OmniGlue's bilinear lookup
  (corner-aligned cells, zero weight beyond the last cell), which is ``grid_sample`` with
  ``align_corners=True`` and zero padding.

Keypoints are in the input image's pixels (centre of the top-left pixel at (0, 0)).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..backbones.dinov2 import dinov2_vitb14, imagenet_normalize
from ..base import BaseModel
from ..superpoint_v6 import SuperPointV6
from ..weights import load_state_dict


def nearest_multiple_of_8(size: int) -> int:
    """OmniGlue's SuperPoint resize: round down when ``size % 8 < 4``, else up."""
    return size - size % 8 if size % 8 < 4 else size + 8 - size % 8


def dino_input_size(height: int, width: int, max_side: int = 630, patch: int = 14) -> tuple[int, int]:
    """DINOv2 input (H, W): long side limited to ``max_side`` (short side truncated), then floored
    to multiples of ``patch`` (``dino_extract._resize_input_image``)."""
    if max(height, width) > max_side:
        if height > width:
            height, width = max_side, int(max_side * width / height)
        else:
            height, width = int(max_side * height / width), max_side
    return height // patch * patch, width // patch * patch


def sample_dino(features: torch.Tensor, keypoints: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """DINOv2 features at keypoints, as ``dino_extract.get_dino_descriptors``.

    Args:
        features: ``(B, C, h, w)`` patch-token grid.
        keypoints: ``(B, N, 2)`` (x, y) in pixels of an image of ``image_size`` = (H, W).

    Returns:
        ``(B, N, C)``.
    """
    b, c, h, w = features.shape
    height, width = image_size
    cells = keypoints / keypoints.new_tensor([width, height]) * keypoints.new_tensor([w, h])
    grid = cells / keypoints.new_tensor([max(w - 1, 1), max(h - 1, 1)]) * 2 - 1
    sampled = F.grid_sample(features, grid.view(b, 1, -1, 2), mode="bilinear", padding_mode="zeros",
                            align_corners=True)
    return sampled.reshape(b, c, -1).transpose(1, 2)


class OmniGlueSuperPoint(BaseModel):
    """Extractor for OmniGlue: ``{"image": (B, 3, H, W) RGB in [0, 1]}`` -> ``keypoints`` (B, N, 2),
    ``descriptors`` (B, N, 1024) = [SuperPoint 256 | DINOv2 768], ``scores`` (B, N).

    Submodules ``superpoint`` (rpautrat sp_v6 names) and ``dino`` (official DINOv2 hub names).
    """

    default_conf = {
        "max_num_keypoints": 1024,
        "nms_radius": 4,
        "detection_threshold": 0.005,
        "remove_borders": 4,
        "dino_max_side": 630,
    }
    default_resize_max = 0  # OmniGlue runs on the original image (DINOv2 resizes to 630 itself)
    required_inputs = ("image",)
    kind = "extractor"
    grayscale = False

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        c = self.conf
        self.superpoint = SuperPointV6(max_num_keypoints=c["max_num_keypoints"], nms_radius=c["nms_radius"],
                                       detection_threshold=c["detection_threshold"],
                                       remove_borders=c["remove_borders"])
        self.dino = dinov2_vitb14()

    def superpoint_features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """SuperPoint on the image resized to multiples of 8; keypoints in the input's pixels."""
        h, w = image.shape[-2:]
        h8, w8 = nearest_multiple_of_8(h), nearest_multiple_of_8(w)
        resized = image if (h8, w8) == (h, w) else F.interpolate(image, size=(h8, w8), mode="bilinear",
                                                                  align_corners=False)
        pred = self.superpoint({"image": resized})
        factor = image.new_tensor([(w8 - 1) / max(w - 1, 1), (h8 - 1) / max(h - 1, 1)])
        return {**pred, "keypoints": pred["keypoints"] / factor}

    def dino_features(self, image: torch.Tensor) -> torch.Tensor:
        """Normalised last-layer patch tokens as a ``(B, 768, h, w)`` grid."""
        size = dino_input_size(*image.shape[-2:], max_side=self.conf["dino_max_side"])
        resized = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        tokens = self.dino.forward_features(imagenet_normalize(resized))["x_norm_patchtokens"]
        return self.dino.tokens_to_grid(tokens, *size)

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_inputs(data)
        image = data["image"]
        if image.shape[1] != 3:
            raise ValueError(f"omniglue_superpoint needs RGB images (B, 3, H, W), got {tuple(image.shape)}")
        pred = self.superpoint_features(image)
        dino = sample_dino(self.dino_features(image), pred["keypoints"], tuple(image.shape[-2:]))
        return {"keypoints": pred["keypoints"], "scores": pred["scores"],
                "descriptors": torch.cat([pred["descriptors"], dino], -1)}


def load_weights(model: OmniGlueSuperPoint, weights: str | Path) -> None:
    """Load both halves strictly: SuperPoint from ``weights`` (the registered
    ``superpoint_v6_from_tf``, rpautrat's file, or our converter's output, whose ``superpoint``
    entry is used) and DINOv2 from the registered ``dinov2_vitb14_pretrain``."""
    model.superpoint.load_state_dict(load_state_dict(weights, entry="superpoint_v6_from_tf"), strict=True)
    model.dino.load_state_dict(load_state_dict("dinov2_vitb14_pretrain"), strict=True)
