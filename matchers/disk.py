"""DISK (Tyszkiewicz et al., 2020) through kornia, configured like cvg/LightGlue's DISK wrapper.

cvg/LightGlue's ``lightglue/disk.py`` (and glue-factory, on whose DISK features
``disk_lightglue.pth`` was trained) itself calls ``kornia.feature.DISK``: kornia *is* the
reference here. Note that kornia's NMS keeps strict maxima only and never a keypoint whose window
runs off the image (the original cvlab-epfl/disk code judges border positions on a clipped window);
see kornia's ``DISK`` docstring. Adapter: kornia's ``DISK`` module is built without weights and
its ``unet`` is registered here under its official name, so the state dict is kornia's
(``unet.*``) and the official ``depth-save.pth`` / ``epipolar-save.pth`` (``{"extractor": ...}``)
load strictly through ``matchers.weights``.

Options (cvg/LightGlue names and defaults): ``max_num_keypoints`` (<= 0: all), ``desc_dim``,
``nms_window_size``, ``detection_threshold``, ``pad_if_not_divisible`` (zero-pad bottom/right to a
multiple of 16, crop the maps back).

Input ``{"image": (B, 3, H, W) RGB in [0, 1]}``. Output ``keypoints`` (B, N, 2) integer pixel
positions, ``descriptors`` (B, N, 128) L2-normalised, ``scores`` (B, N) heatmap logits.
"""
from __future__ import annotations

from typing import Any

import torch
from kornia.feature import DISK as KorniaDISK

from .base import BaseModel
from .keypoints import stack_per_image
from .weights import Checkpoint, StateDict, register_checkpoint


def disk_state_dict(raw: dict[str, Any]) -> StateDict:
    """The official DISK files store the network under ``"extractor"``."""
    return raw["extractor"]


for _variant in ("depth", "epipolar"):
    register_checkpoint(Checkpoint(
        name=f"disk-{_variant}",
        url=f"https://raw.githubusercontent.com/cvlab-epfl/disk/master/{_variant}-save.pth",
        filename=f"{_variant}-save.pth",
        license="Apache-2.0 (cvlab-epfl/disk)",
        extract=disk_state_dict,
        notes="cvg/LightGlue's DISK uses the 'depth' weights.",
    ))


class DISK(BaseModel):
    default_conf = {
        "max_num_keypoints": -1,
        "desc_dim": 128,
        "nms_window_size": 5,
        "detection_threshold": 0.0,
        "pad_if_not_divisible": True,
    }
    default_resize_max = 1024  # longest side the pipeline resizes to (hloc's conf)
    required_inputs = ("image",)
    kind = "extractor"
    grayscale = False

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        net = KorniaDISK(desc_dim=self.conf["desc_dim"])
        object.__setattr__(self, "_net", net)  # runs forward; its unet is registered below (shared)
        self.unet = net.unet

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_inputs(data)
        image = data["image"]
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        budget = self.conf["max_num_keypoints"]
        features = self._net(image, n=budget if budget > 0 else None, window_size=self.conf["nms_window_size"],
                             score_threshold=self.conf["detection_threshold"],
                             pad_if_not_divisible=self.conf["pad_if_not_divisible"])
        return {
            "keypoints": stack_per_image([f.keypoints.to(image.dtype) for f in features], "DISK"),
            "descriptors": stack_per_image([f.descriptors for f in features], "DISK"),
            "scores": stack_per_image([f.detection_scores for f in features], "DISK"),
        }
