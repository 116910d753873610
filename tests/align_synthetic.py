"""A synthetic scene with known geometry for the sparse global alignment tests: exact canonical
pointmaps (each image's points in its camera frame, at a random per-image scale as a pair network
would give) and exact matches, optionally perturbed."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recon.align import AlignmentInput


@dataclass
class SyntheticScene:
    data: AlignmentInput
    rotations: np.ndarray      # (N, 3, 3) cam_from_world
    centres: np.ndarray        # (N, 3)
    focals: np.ndarray         # (N,)
    depths: np.ndarray         # (A,) true depth of every anchor along its camera's axis (world units)


def look_at(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    """cam_from_world rotation of a camera at ``centre`` looking at ``target`` (y down)."""
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x /= np.linalg.norm(x)
    return np.stack((x, np.cross(z, x), z))


def synthetic_scene(num_images: int = 5, width: int = 256, height: int = 192, focals=(220.0,), num_points: int = 1200,
                    depth_noise: float = 0.0, pixel_noise: float = 0.0, seed: int = 0) -> SyntheticScene:
    """``num_images`` cameras on an arc 4 units from a bumpy surface patch; camera k uses
    ``focals[k % len(focals)]`` and camera index ``k % len(focals)``. Keypoints are the exact
    projections (COLMAP pixels), points their camera-frame coordinates times a random per-image
    scale in [0.5, 2]; ``depth_noise`` multiplies each point by ``1 + N(0, depth_noise)`` and
    ``pixel_noise`` adds ``N(0, pixel_noise)`` pixels to the keypoints."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-1.5, 1.5, (num_points, 2))
    world = np.column_stack((xy, 0.4 * np.sin(2 * xy[:, 0]) * np.cos(1.5 * xy[:, 1]) + rng.uniform(-0.2, 0.2, num_points)))
    yaw = np.radians(np.linspace(-30, 30, num_images))
    pitch = np.radians(rng.uniform(-10, 10, num_images))
    centres = 4 * np.column_stack((np.sin(yaw) * np.cos(pitch), np.sin(pitch), -np.cos(yaw) * np.cos(pitch)))
    rotations = np.stack([look_at(c, rng.normal(0, 0.1, 3)) for c in centres])
    cameras = np.arange(num_images) % len(focals)
    focal = np.asarray(focals, float)[cameras]
    keypoints, points, images, point_ids, depths = [], [], [], [], []
    for k in range(num_images):  # building the test data per image (not code under test)
        local = (world - centres[k]) @ rotations[k].T
        uv = focal[k] * local[:, :2] / local[:, 2:3] + np.array([width, height]) / 2
        visible = (local[:, 2] > 0) & (uv[:, 0] > 0) & (uv[:, 0] < width) & (uv[:, 1] > 0) & (uv[:, 1] < height)
        scale = rng.uniform(0.5, 2.0)
        noisy = local[visible] * (1 + depth_noise * rng.standard_normal((visible.sum(), 1)))
        keypoints.append(uv[visible] + pixel_noise * rng.standard_normal((visible.sum(), 2)))
        points.append(scale * noisy)
        images.append(np.full(visible.sum(), k))
        point_ids.append(np.flatnonzero(visible))
        depths.append(local[visible, 2])
    images, point_ids = np.concatenate(images), np.concatenate(point_ids)
    # matches: every pair of anchors of different images that see the same world point
    order = np.lexsort((images, point_ids))
    same = point_ids[order][:, None] == point_ids[order][None, :]
    a, b = np.nonzero(np.triu(same, 1))
    a, b = order[a], order[b]
    data = AlignmentInput(
        keypoints=torch.tensor(np.concatenate(keypoints), dtype=torch.float32),
        points=torch.tensor(np.concatenate(points), dtype=torch.float32),
        confidence=torch.full((len(images),), 3.0),
        anchor_image=torch.tensor(images),
        image_size=torch.tensor([[width, height]] * num_images, dtype=torch.float32),
        image_camera=torch.tensor(cameras),
        match0=torch.tensor(a), match1=torch.tensor(b),
        match_conf=torch.full((len(a),), 10.0))
    return SyntheticScene(data, rotations, centres, focal, np.concatenate(depths))


def rotation_errors(estimated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Angles (degrees) between estimated and true relative rotations R_i R_j^T of all pairs."""
    rel_est = np.einsum("iab,jcb->ijac", estimated, estimated)
    rel_true = np.einsum("iab,jcb->ijac", truth, truth)
    cos = (np.einsum("ijab,ijab->ij", rel_est, rel_true) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))[np.triu_indices(len(truth), 1)]
