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
from matchers.roma.ops import mutual_nearest_matches, pixels_to_normalized
from ..match import rescale_keypoints


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

    def transfer(self, name0: str, name1: str, keypoints0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where points of view ``name0`` land in view ``name1``, exactly.

        keypoints0 (N, 2) in view 0's original pixels (hloc convention), lifted with the depth of
        the pixel they fall in -> (N, 2) positions in view 1's original pixels and a (N,) mask of
        the points view 1 actually sees (in front, inside, and its depth there agrees).
        """
        image0, image1 = self.images[name0], self.images[name1]
        camera0, camera1 = self.truth.cameras[image0.camera_id], self.truth.cameras[image1.camera_id]
        depth0, depth1 = self.depth(image0.name), self.depth(image1.name)
        pixel = np.rint(keypoints0).astype(int)
        inside0 = (pixel >= 0).all(1) & (pixel[:, 0] < depth0.shape[1]) & (pixel[:, 1] < depth0.shape[0])
        z0 = np.full(len(keypoints0), np.nan)
        z0[inside0] = depth0[pixel[inside0, 1], pixel[inside0, 0]]
        rays = camera0.cam_from_img(keypoints0.astype(np.float64) + 0.5)  # COLMAP pixels
        points_cam1 = image1.cam_from_world() * (image0.cam_from_world().inverse()
                                                 * (np.concatenate([rays, np.ones((len(rays), 1))], 1) * z0[:, None]))
        z1 = points_cam1[:, 2]
        in_front = np.isfinite(z0) & (z0 > 0) & (z1 > 1e-6)
        projected = np.full((len(keypoints0), 2), -1.0)
        projected[in_front] = camera1.img_from_cam(points_cam1[in_front]) - 0.5  # COLMAP -> hloc pixels
        column, row = np.floor(projected[:, 0] + 0.5).astype(int), np.floor(projected[:, 1] + 0.5).astype(int)
        visible = in_front & (column >= 0) & (row >= 0) & (column < depth1.shape[1]) & (row < depth1.shape[0])
        visible[visible] = (np.abs(depth1[row[visible], column[visible]] - z1[visible])
                            <= self.conf["depth_tolerance"] * z1[visible])
        return projected, visible

    def forward(self, data: dict) -> dict:
        self.check_inputs(data)
        depth0, depth1 = self.depth(data["name0"]), self.depth(data["name1"])
        step = self.conf["grid_step"]
        v, u = np.mgrid[step // 2:depth0.shape[0]:step, step // 2:depth0.shape[1]:step].reshape(2, -1)
        grid = np.stack([u, v], -1).astype(np.float64)
        projected, visible = self.transfer(data["name0"], data["name1"], grid)
        kp0, kp1 = grid[visible], projected[visible]
        scale0, scale1 = (input_scale(data[key], depth) for key, depth in (("image0", depth0), ("image1", depth1)))
        device = data["image0"].device
        return {
            "keypoints0": torch.from_numpy(rescale_keypoints(kp0, scale0)).float().to(device),
            "keypoints1": torch.from_numpy(rescale_keypoints(kp1, scale1)).float().to(device),
            "scores": torch.ones(len(kp0), device=device),
        }

    def match_keypoints(self, data: dict, max_distance: float = 0.005, min_certainty: float = 0.0
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Given keypoints matched through the exact warp, by the rule a network uses
        (:func:`matchers.roma.ops.mutual_nearest_matches`; certainty 1 where view 1 sees the point).

        data: ``name0``/``name1``, ``image0``/``image1`` (1, 3, H, W) and ``keypoints0`` (N, 2) /
        ``keypoints1`` (M, 2) in those images' pixels -> ``matches0`` (N,), ``matching_scores0`` (N,).
        """
        self.check_inputs(data)
        depths = [self.depth(data["name0"]), self.depth(data["name1"])]
        scales = [input_scale(data[key], depth) for key, depth in zip(("image0", "image1"), depths)]
        keypoints = [rescale_keypoints(data[key].reshape(-1, 2).cpu().double().numpy(), 1.0 / scale)
                     for key, scale in zip(("keypoints0", "keypoints1"), scales)]
        projected, visible = self.transfer(data["name0"], data["name1"], keypoints[0])
        height, width = depths[1].shape
        predicted = pixels_to_normalized(torch.from_numpy(projected), height, width)
        targets = pixels_to_normalized(torch.from_numpy(keypoints[1]), height, width)
        matches, scores = mutual_nearest_matches(predicted, torch.from_numpy(visible).double(), targets,
                                                 max_distance, min_certainty)
        device = data["image0"].device
        return matches.to(device), scores.float().to(device)


def input_scale(image: torch.Tensor, depth: np.ndarray) -> np.ndarray:
    """(sx, sy) from a view's original pixels (its depth map's size) to the input image's."""
    return np.array([image.shape[-1] / depth.shape[1], image.shape[-2] / depth.shape[0]])



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
