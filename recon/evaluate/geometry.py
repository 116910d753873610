"""Pose geometry for evaluation: rotation and direction angles, relative poses, Umeyama Sim(3).

All functions are vectorised numpy in float64. Poses are COLMAP's ``cam_from_world``
(``x_cam = R x_world + t``). Angles use ``atan2`` forms, which stay accurate near 0 and 180
degrees where ``arccos`` of a clipped cosine loses precision (1e-8 rad of error at zero).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Angle in degrees of the rotation taking ``R_a`` to ``R_b`` (angle of ``R_a^T R_b``).

    R_a, R_b: (..., 3, 3) rotation matrices. Returns (...,) in [0, 180].
    """
    D = np.swapaxes(R_a, -1, -2) @ R_b
    cos = (np.trace(D, axis1=-2, axis2=-1) - 1.0) / 2.0
    axis_times_2sin = np.stack(
        [D[..., 2, 1] - D[..., 1, 2], D[..., 0, 2] - D[..., 2, 0], D[..., 1, 0] - D[..., 0, 1]], axis=-1)
    sin = np.linalg.norm(axis_times_2sin, axis=-1) / 2.0
    return np.degrees(np.arctan2(sin, cos))


def direction_angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees between vectors ``a`` and ``b`` (independent of their lengths).

    a, b: (..., 3). Returns (...,) in [0, 180]; meaningless (0) where either vector is zero, so
    callers decide what a zero vector means.
    """
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    dot = np.sum(a * b, axis=-1)
    return np.degrees(np.arctan2(cross, dot))


def relative_poses(R: np.ndarray, t: np.ndarray, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relative poses ``cam_j_from_cam_i`` of the pairs ``(i[k], j[k])``.

    R: (N, 3, 3), t: (N, 3) cam_from_world; i, j: (P,) indices.
    Returns R_ji (P, 3, 3) = R_j R_i^T and t_ji (P, 3) = t_j - R_ji t_i, i.e.
    ``x_cam_j = R_ji x_cam_i + t_ji``; ``t_ji = R_j (C_i - C_j)`` points from camera j's centre to
    camera i's, expressed in camera j's frame, and ``|t_ji|`` is the baseline.
    """
    R_ji = R[j] @ np.swapaxes(R[i], -1, -2)
    t_ji = t[j] - np.einsum("pab,pb->pa", R_ji, t[i])
    return R_ji, t_ji


@dataclass(frozen=True)
class Sim3:
    """Similarity ``y = scale * rotation @ x + translation``."""

    scale: float
    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """points: (N, 3) -> (N, 3)."""
        return self.scale * points @ self.rotation.T + self.translation


def umeyama(src: np.ndarray, dst: np.ndarray) -> Sim3:
    """Least-squares similarity mapping ``src`` onto ``dst`` (Umeyama 1991, with scale).

    Minimises ``sum_k |dst_k - (s R src_k + t)|^2`` over s > 0, R in SO(3) (a reflection is never
    returned) and t. src, dst: (N, 3) with N >= 2 and src not all one point; with N = 2 or
    collinear points the rotation about the common line is not determined (any minimiser is
    returned; the residuals are the same).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 2:
        raise ValueError(f"umeyama needs two (N, 3) arrays with N >= 2, got {src.shape} and {dst.shape}")
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    x, y = src - mu_src, dst - mu_dst
    var_src = np.mean(np.sum(x * x, axis=1))
    if var_src <= 0.0:
        raise ValueError("umeyama: all source points coincide, the scale is undefined")
    covariance = y.T @ x / len(src)
    U, singular, Vt = np.linalg.svd(covariance)
    sign = np.ones(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        sign[2] = -1.0
    rotation = (U * sign) @ Vt
    scale = float(np.sum(singular * sign) / var_src)
    translation = mu_dst - scale * rotation @ mu_src
    return Sim3(scale, rotation, translation)


def extent(centers: np.ndarray) -> float:
    """A scene's size: diagonal of the bounding box of (N, 3) camera centres; 0 for none."""
    return float(np.linalg.norm(np.ptp(centers, axis=0))) if len(centers) else 0.0
