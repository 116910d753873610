"""Multi-view triangulation and the observation tests of the refinement loop, batched over tracks.

* :func:`triangulate` - the point closest to all of its rays (the multi-view midpoint:
  ``sum_e w_e (I - v_e v_e^T) (X - c_e) = 0``, one 3x3 system per track), reweighted (Cauchy on
  the angle between ray and point) so that a wrong observation does not drag its track.
* :func:`reprojection_errors` - pixel error of every observation under COLMAP's camera models
  (the BA engine's projection).
* :func:`triangulation_angles` - per track, the largest angle at the point between the ray of
  its first observation and any other ray (a lower bound of the largest pairwise angle, and at
  least half of it).
"""
from __future__ import annotations

import torch

from ..ba import Problem
from ..ba.cameras import MIN_DEPTH, model_groups, project_groups


def ray_angles(points: torch.Tensor, centres: torch.Tensor, rays: torch.Tensor) -> torch.Tensor:
    """(M,) angle in radians between each ray (M, 3) unit and the direction to its point; points, centres (M, 3)."""
    direction = points - centres
    cos = (direction * rays).sum(1) / direction.norm(dim=1).clamp_min(1e-300)
    return torch.arccos(cos.clamp(-1.0, 1.0))


def triangulate(centres: torch.Tensor, rays: torch.Tensor, track: torch.Tensor, num_tracks: int,
                iterations: int = 2, scale_deg: float = 1.0) -> torch.Tensor:
    """(T, 3) points from rays: centres (M, 3) camera centre of each observation, rays (M, 3)
    unit world directions, track (M,) track index. ``iterations`` Cauchy reweightings with
    angle scale ``scale_deg``. Tracks whose rays are parallel get a least-squares point far away
    along them (filtered later by their triangulation angle)."""
    eye = torch.eye(3, dtype=rays.dtype, device=rays.device)
    projector = eye - rays[:, :, None] * rays[:, None, :]
    weights = torch.ones(len(rays), dtype=rays.dtype, device=rays.device)
    scale = torch.deg2rad(torch.tensor(scale_deg, dtype=rays.dtype))
    points = None
    for _ in range(iterations + 1):
        A = torch.zeros(num_tracks, 3, 3, dtype=rays.dtype, device=rays.device)
        A.index_add_(0, track, weights[:, None, None] * projector)
        b = torch.zeros(num_tracks, 3, dtype=rays.dtype, device=rays.device)
        b.index_add_(0, track, weights[:, None] * (projector @ centres[:, :, None])[:, :, 0])
        A = A + 1e-12 * A.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None] * eye
        points = torch.linalg.solve(A, b)
        angle = ray_angles(points.index_select(0, track), centres, rays)  # points[track], faster on CPU
        weights = 1.0 / (1.0 + (angle / scale) ** 2)
    return points


def reprojection_errors(problem: Problem) -> torch.Tensor:
    """(M,) pixel distance between every observation and its point's projection; ``inf`` behind the
    camera (depth below :data:`recon.ba.cameras.MIN_DEPTH`, where BA gives a zero residual)."""
    R = problem.rotations[problem.obs_image]
    t = problem.translations[problem.obs_image]
    p_cam = (R @ problem.points[problem.obs_point][:, :, None])[:, :, 0] + t
    camera = problem.image_camera[problem.obs_image]
    xy = project_groups(model_groups(problem.camera_models, camera), problem.camera_params[camera], p_cam,
                        with_jac=False)
    errors = (xy - problem.obs_xy).norm(dim=1)
    return torch.where(p_cam[:, 2] >= MIN_DEPTH, errors, torch.full_like(errors, float("inf")))


def triangulation_angles(points: torch.Tensor, centres: torch.Tensor, track: torch.Tensor, num_tracks: int) -> torch.Tensor:
    """(T,) degrees (0 for tracks without observations); see the module docstring.

    points (T, 3); centres (M, 3) camera centre per observation; track (M,) track index.
    """
    direction = points[track] - centres
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-300)
    rows = torch.arange(len(track), device=track.device)
    first = torch.full((num_tracks,), len(track), dtype=torch.long, device=track.device)
    first.scatter_reduce_(0, track, rows, reduce="amin")
    reference = direction[first[track]]
    cos = (direction * reference).sum(1).clamp(-1.0, 1.0)
    angles = torch.zeros(num_tracks, dtype=points.dtype, device=points.device)
    angles.scatter_reduce_(0, track, torch.rad2deg(torch.arccos(cos)), reduce="amax")
    return angles
