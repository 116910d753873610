"""Oracles that know the answer for a scene written by ``recon.datasets.render`` (with ``--depth``):
a dense matcher giving its exact correspondences, and a depth source giving its exact depth maps
and focal lengths (the priors stage's ``ground_truth`` choice).

It stands where a dense network (RoMa, DKM, MASt3R) stands in the pipeline, so the dense-to-
COLMAP path can be tested against ground truth: for a pair of views of a scene written by
``recon.datasets.render`` (with ``--depth``), every sampled pixel of image 0 is lifted with its
depth, moved into image 1 with the true poses, and kept when image 1 sees that same surface point
(its depth there agrees) - the exact warp and covisibility a perfect network would predict.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import pycolmap
import torch

from matchers.base import BaseModel


class GroundTruthDenseMatcher(BaseModel):
    """Inputs ``image0``/``image1`` (1, 3, H, W) and ``name0``/``name1`` (image names in the scene);
    outputs ``keypoints0``/``keypoints1`` (M, 2) in input-image pixels (hloc convention) and
    ``scores`` (M,) all ones. ``scene`` is the folder ``render_scene(..., write_depth=True)`` wrote."""

    default_conf = {"scene": "", "grid_step": 4, "depth_tolerance": 0.01}
    required_inputs = ("image0", "image1", "name0", "name1")
    kind = "dense_matcher"

    def __init__(self, **conf) -> None:
        super().__init__(**conf)
        if not self.conf["scene"] or not (Path(self.conf["scene"]) / "depth").is_dir():
            raise ValueError("GroundTruthDenseMatcher needs conf scene=<folder rendered with depth maps>")
        self._depths: dict[str, np.ndarray] = {}

    @cached_property
    def truth(self) -> pycolmap.Reconstruction:
        return pycolmap.Reconstruction(Path(self.conf["scene"]) / "gt")

    @cached_property
    def images(self) -> dict[str, pycolmap.Image]:
        return {image.name: image for image in self.truth.images.values()}

    def depth(self, name: str) -> np.ndarray:
        """Depth map of one view, loaded once (every pair of an image reuses it)."""
        if name not in self._depths:
            self._depths[name] = np.load(Path(self.conf["scene"]) / "depth" / (Path(name).stem + ".npy"))
        return self._depths[name]

    def forward(self, data: dict) -> dict:
        self.check_inputs(data)
        image0, image1 = self.images[data["name0"]], self.images[data["name1"]]
        camera0, camera1 = self.truth.cameras[image0.camera_id], self.truth.cameras[image1.camera_id]
        depth0, depth1 = self.depth(image0.name), self.depth(image1.name)
        step = self.conf["grid_step"]
        v, u = np.mgrid[step // 2:depth0.shape[0]:step, step // 2:depth0.shape[1]:step].reshape(2, -1)
        z0 = depth0[v, u]
        seen = np.isfinite(z0) & (z0 > 0)
        u, v, z0 = u[seen], v[seen], z0[seen]
        rays = camera0.cam_from_img(np.stack([u + 0.5, v + 0.5], -1).astype(np.float64))  # COLMAP pixels
        points_cam0 = np.concatenate([rays, np.ones((len(rays), 1))], 1) * z0[:, None]
        world = image0.cam_from_world().inverse() * points_cam0
        points_cam1 = image1.cam_from_world() * world
        in_front = points_cam1[:, 2] > 1e-6
        projected = camera1.img_from_cam(points_cam1[in_front])  # COLMAP pixels
        kp0 = np.stack([u, v], -1)[in_front].astype(np.float64)
        z1 = points_cam1[in_front, 2]
        column = np.floor(projected[:, 0]).astype(int)
        row = np.floor(projected[:, 1]).astype(int)
        inside = (column >= 0) & (row >= 0) & (column < depth1.shape[1]) & (row < depth1.shape[0])
        visible = np.zeros(len(projected), bool)
        visible[inside] = np.abs(depth1[row[inside], column[inside]] - z1[inside]) <= self.conf["depth_tolerance"] * z1[inside]
        kp1 = projected[visible] - 0.5  # COLMAP -> hloc pixel convention
        kp0 = kp0[visible]
        # Into the (possibly resized) input images' pixels: hloc's (x + 0.5) * s - 0.5 rule.
        scale0 = np.array([data["image0"].shape[-1] / depth0.shape[1], data["image0"].shape[-2] / depth0.shape[0]])
        scale1 = np.array([data["image1"].shape[-1] / depth1.shape[1], data["image1"].shape[-2] / depth1.shape[0]])
        to_input = lambda kp, s: (kp + 0.5) * s - 0.5  # noqa: E731
        device = data["image0"].device
        return {
            "keypoints0": torch.from_numpy(to_input(kp0, scale0)).float().to(device),
            "keypoints1": torch.from_numpy(to_input(kp1, scale1)).float().to(device),
            "scores": torch.ones(len(kp0), device=device),
        }


class SceneDepthSource:
    """:class:`~recon.priors.depth.DepthSource` of a rendered scene: its exact depth maps
    (``depth/<stem>.npy``, camera z in metres at every pixel centre) and each view's true focal
    (the mean of fx and fy of its ``gt/`` camera). The renderer works in metres, so these are the
    metric truth the metric-scale step must recover."""

    name = "ground_truth"

    def __init__(self, scene: str | Path) -> None:
        self.scene = Path(scene)
        if not scene or not (self.scene / "depth").is_dir() or not (self.scene / "gt").is_dir():
            raise ValueError(f"ground_truth priors need scene=<folder rendered with --depth>, got '{scene}'")
        truth = pycolmap.Reconstruction(self.scene / "gt")
        self.focals = {image.name: float(truth.cameras[image.camera_id].mean_focal_length())
                       for image in truth.images.values()}

    def depth(self, image_name: str) -> np.ndarray:
        path = self.scene / "depth" / (Path(image_name).stem + ".npy")
        if not path.exists():
            raise KeyError(f"ground_truth: no depth map for image '{image_name}' ({path})")
        return np.load(path).astype(np.float32)

    def focal_px(self, image_name: str) -> float | None:
        return self.focals.get(image_name)
