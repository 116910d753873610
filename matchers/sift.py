"""SIFT through pycolmap (COLMAP's own implementation), behind recon's extractor interface.

Keypoints are returned in hloc's convention (centre of the top-left pixel at (0, 0)), i.e.
COLMAP's coordinates minus 0.5, so they survive hloc's +0.5 on import into COLMAP unchanged.
Descriptors are COLMAP's (RootSIFT by default, ``normalization="L1_ROOT"``) as unit-norm float32
rows, so the nearest-neighbour matcher's dot products are cosine similarities. COLMAP exposes no
detection score; ``scores`` holds each keypoint's scale (larger = coarser, more stable blob),
which is what COLMAP itself ranks by when it trims to ``max_num_features``.
"""
from __future__ import annotations

import numpy as np
import pycolmap
import torch

from .base import BaseModel


class SIFT(BaseModel):
    """COLMAP SIFT. Input ``image`` (1, 1, H, W) in [0, 1]; outputs (1, N, 2), (1, N, 128), (1, N)."""

    default_conf = {
        "max_num_features": 8192,
        "first_octave": -1,
        "num_octaves": 4,
        "peak_threshold": 0.02 / 3,
        "edge_threshold": 10.0,
        "upright": False,
        "max_num_orientations": 2,
        "domain_size_pooling": False,
        "estimate_affine_shape": False,
        "normalization": "L1_ROOT",
        "num_threads": -1,
    }
    required_inputs = ("image",)
    kind = "extractor"
    grayscale = True

    def __init__(self, **conf) -> None:
        super().__init__(**conf)
        options = pycolmap.FeatureExtractionOptions()
        options.num_threads = self.conf["num_threads"]
        sift = options.sift
        for key in ("max_num_features", "first_octave", "num_octaves", "peak_threshold", "edge_threshold",
                    "upright", "max_num_orientations", "domain_size_pooling", "estimate_affine_shape"):
            setattr(sift, key, self.conf[key])
        sift.normalization = getattr(pycolmap.Normalization, self.conf["normalization"])
        self._extractor = pycolmap.FeatureExtractor.create(options, pycolmap.Device.cpu)

    def forward(self, data: dict) -> dict:
        self.check_inputs(data)
        image = data["image"]
        if image.ndim != 4 or image.shape[:2] != (1, 1):
            raise ValueError(f"SIFT takes one gray image (1, 1, H, W); got {tuple(image.shape)}")
        pixels = (image[0, 0].detach().cpu().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
        keypoints, descriptors = self._extractor.extract_from_uint8_array(pixels)
        matrix = pycolmap.keypoints_to_matrix(keypoints)  # x, y, scale, orientation
        desc = np.asarray(descriptors.data, dtype=np.float32)
        desc /= np.linalg.norm(desc, axis=1, keepdims=True).clip(min=1e-12)
        device = image.device
        return {
            "keypoints": torch.from_numpy(matrix[:, :2] - 0.5)[None].to(device),
            "descriptors": torch.from_numpy(desc)[None].to(device),
            "scores": torch.from_numpy(matrix[:, 2].copy())[None].to(device),
        }
