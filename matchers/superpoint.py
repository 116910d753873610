"""SuperPoint (DeTone, Malisiewicz and Rabinovich, 2018), written here: kornia has none.

Parameter names are Magic Leap's (``SuperPointNet`` in magicleap/SuperPointPretrainedNetwork:
``conv1a`` ... ``conv4b``, ``convPa``/``convPb`` detector head, ``convDa``/``convDb`` descriptor
head; convolutions with biases, no BatchNorm), so ``superpoint_v1.pth`` (Magic Leap, mirrored in
the cvg/LightGlue release) loads strictly, and so does the detector half of GIM's
``gim_lightglue_100h.ckpt`` after our documented remapping (:func:`superpoint_state_dict`).

Post-processing is the one hloc and cvg/LightGlue use (not Magic Leap's demo grid NMS): softmax
over the 65 cells, drop the dustbin, pixel-shuffle to full resolution, ``simple_nms``, scores of
the ``remove_borders`` outermost pixels set to -1, keep scores ``> detection_threshold``, then the
``max_num_keypoints`` best (``<= 0``: all). Keypoints are integer pixel positions; descriptors are
sampled from the 1/8 descriptor map with SuperGlue's original ("legacy") sampling formula, which
GIM also trained with (``legacy_sampling=True``).

GIM's detector options (``gim_superpoint`` in ``matchers/registry.py``): nms_radius 3,
detection_threshold 0, max_num_keypoints 2048. GIM's ``force_num_keypoints`` (pads an image with
*random* keypoints up to 2048, for fixed-size training batches) is not implemented: it makes the
output random and adds nothing to matching.

Input ``{"image": (B, 1, H, W) gray in [0, 1]}`` (RGB is converted with kornia's
``rgb_to_grayscale``, 0.299/0.587/0.114, as cvg/LightGlue does).
Output ``keypoints`` (B, N, 2), ``descriptors`` (B, N, 256) L2-normalised, ``scores`` (B, N).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_grayscale
from torch import nn

from .base import BaseModel
from .keypoints import select_keypoints
from .weights import LIGHTNING_ALLOWLIST, Checkpoint, StateDict, register_checkpoint


def superpoint_state_dict(raw: dict[str, Any]) -> StateDict:
    """Flat SuperPoint state dict from Magic Leap's file (already flat) or from GIM's Lightning
    checkpoint, whose ``state_dict`` holds the detector as ``superpoint.<key>`` next to the
    matcher's ``model.<key>`` entries (GIM's ``demo.py`` strips the prefix the same way)."""
    if "state_dict" in raw:
        return {k[len("superpoint."):]: v for k, v in raw["state_dict"].items() if k.startswith("superpoint.")}
    return dict(raw)


register_checkpoint(Checkpoint(
    name="superpoint_v1",
    url="https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/superpoint_v1.pth",
    filename="superpoint_v1.pth",
    license="Magic Leap non-commercial research license (magicleap/SuperPointPretrainedNetwork)",
    extract=superpoint_state_dict,
    notes="Same file as https://github.com/magicleap/SuperPointPretrainedNetwork/raw/master/superpoint_v1.pth.",
))
register_checkpoint(Checkpoint(
    name="gim_superpoint",
    url="https://github.com/xuelunshen/gim/raw/main/weights/gim_lightglue_100h.ckpt",
    filename="gim_lightglue_100h.ckpt",
    license="MIT (xuelunshen/gim)",
    extract=superpoint_state_dict,
    allowlist=LIGHTNING_ALLOWLIST,
    notes="The detector half of GIM's LightGlue checkpoint (keys 'superpoint.*').",
))


def sample_descriptors(keypoints: torch.Tensor, descriptors: torch.Tensor, s: int = 8) -> torch.Tensor:
    """Bilinearly sample a coarse descriptor map at full-resolution keypoints (SuperGlue's formula).

    Args:
        keypoints: ``(B, N, 2)`` x, y in full-resolution pixels.
        descriptors: ``(B, D, h, w)`` descriptor map at stride ``s``.

    Returns:
        ``(B, N, D)`` L2-normalised descriptors.
    """
    b, c, h, w = descriptors.shape
    size = keypoints.new_tensor([w * s - s / 2 - 0.5, h * s - s / 2 - 0.5])
    grid = (keypoints - s / 2 + 0.5) / size * 2 - 1
    sampled = F.grid_sample(descriptors, grid.view(b, 1, -1, 2), mode="bilinear", align_corners=True)
    return F.normalize(sampled.reshape(b, c, -1), p=2, dim=1).transpose(1, 2)


class SuperPoint(BaseModel):
    """SuperPoint with hloc / cvg/LightGlue options and defaults (``max_num_keypoints`` -1 = all)."""

    default_conf = {
        "descriptor_dim": 256,
        "nms_radius": 4,
        "max_num_keypoints": -1,
        "detection_threshold": 0.0005,
        "remove_borders": 4,
    }
    default_resize_max = 1024  # longest side the pipeline resizes to (hloc's conf)
    required_inputs = ("image",)
    kind = "extractor"
    grayscale = True

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        c1, c2, c3, c4, c5 = 64, 64, 128, 128, 256
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv1a = nn.Conv2d(1, c1, 3, padding=1)
        self.conv1b = nn.Conv2d(c1, c1, 3, padding=1)
        self.conv2a = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv2b = nn.Conv2d(c2, c2, 3, padding=1)
        self.conv3a = nn.Conv2d(c2, c3, 3, padding=1)
        self.conv3b = nn.Conv2d(c3, c3, 3, padding=1)
        self.conv4a = nn.Conv2d(c3, c4, 3, padding=1)
        self.conv4b = nn.Conv2d(c4, c4, 3, padding=1)
        self.convPa = nn.Conv2d(c4, c5, 3, padding=1)
        self.convPb = nn.Conv2d(c5, 65, 1)
        self.convDa = nn.Conv2d(c4, c5, 3, padding=1)
        self.convDb = nn.Conv2d(c5, self.conf["descriptor_dim"], 1)

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense outputs of a ``(B, 1, H, W)`` image: scores ``(B, 8h, 8w)`` (h = H // 8) and
        L2-normalised descriptors ``(B, D, h, w)``."""
        x = image
        for first, second, pool in ((self.conv1a, self.conv1b, True), (self.conv2a, self.conv2b, True),
                                    (self.conv3a, self.conv3b, True), (self.conv4a, self.conv4b, False)):
            x = self.relu(second(self.relu(first(x))))
            if pool:
                x = self.pool(x)
        scores = F.pixel_shuffle(F.softmax(self.convPb(self.relu(self.convPa(x))), 1)[:, :-1], 8)[:, 0]
        descriptors = F.normalize(self.convDb(self.relu(self.convDa(x))), p=2, dim=1)
        return scores, descriptors

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_inputs(data)
        image = data["image"]
        if image.shape[1] == 3:
            image = rgb_to_grayscale(image)  # what cvg/LightGlue does; bit-identical keypoint order
        dense_scores, dense_descriptors = self.encode(image)
        keypoints, scores = select_keypoints(dense_scores, self.conf["nms_radius"], self.conf["remove_borders"],
                                             self.conf["detection_threshold"], self.conf["max_num_keypoints"],
                                             "SuperPoint")
        return {
            "keypoints": keypoints,
            "descriptors": sample_descriptors(keypoints, dense_descriptors, 8),
            "scores": scores,
        }
