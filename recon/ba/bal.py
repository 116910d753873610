"""BAL ("Bundle Adjustment in the Large") problems: reader, writer, synthetic generator.

BAL format: ``C P O``, then O lines ``cam point x y``, then 9 numbers per camera
(angle-axis (3), t (3), f, k1, k2) and 3 per point. BAL cameras look down -z with y up:
``P = R X + t``, ``p = -P.xy / P.z``, pixel ``= f (1 + k1 |p|^2 + k2 |p|^4) p``.

Mapping to COLMAP (``/work/shared/data/bal/SOURCE.txt``): one RADIAL camera per BAL camera with
params ``[f, 0, 0, k1, k2]`` and the principal point held fixed, ``cam_from_world = (F R, F t)``
with ``F = diag(1, -1, -1)``, and observations ``(x, -y)``. The two objectives are then identical
(COLMAP's RADIAL model: ``u = x_c / z_c``, pixel = ``f (1 + k1 r^2 + k2 r^4) u + c``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from .geometry import so3_exp, so3_log
from .problem import Problem, intrinsics_constant_mask

FLIP = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)


def _bal_problem(rotations, translations, f_k1_k2, points, obs_image, obs_point, obs_xy) -> Problem:
    """COLMAP-convention problem with one RADIAL camera per image and a fixed principal point."""
    n = rotations.shape[0]
    params = torch.zeros(n, 5, dtype=torch.float64)
    params[:, 0], params[:, 3], params[:, 4] = f_k1_k2[:, 0], f_k1_k2[:, 1], f_k1_k2[:, 2]
    models = ["RADIAL"] * n
    problem = Problem(
        rotations=rotations, translations=translations, camera_params=params, camera_models=models,
        image_camera=torch.arange(n), points=points, obs_image=obs_image, obs_point=obs_point, obs_xy=obs_xy,
        pose_constant=torch.zeros(n, 6, dtype=torch.bool),
        camera_constant=intrinsics_constant_mask(models, 5, True, False, True),
        point_constant=torch.zeros(points.shape[0], dtype=torch.bool))
    problem.validate()
    return problem


def read_bal(path: str | os.PathLike) -> Problem:
    """Read a BAL text file into a COLMAP-convention :class:`Problem` (mapping in the module doc)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"BAL file not found: {path}")
    tokens = path.read_text().split()
    try:
        n_cam, n_pt, n_obs = (int(t) for t in tokens[:3])
        obs = np.array(tokens[3:3 + 4 * n_obs], dtype=np.float64).reshape(n_obs, 4)
        rest = np.array(tokens[3 + 4 * n_obs:3 + 4 * n_obs + 9 * n_cam + 3 * n_pt], dtype=np.float64)
        cams, pts = rest[:9 * n_cam].reshape(n_cam, 9), rest[9 * n_cam:].reshape(n_pt, 3)
    except ValueError as err:
        raise ValueError(f"{path} is not a valid BAL file: {err}") from err
    cams_t = torch.from_numpy(cams)
    rot = FLIP[:, None] * so3_exp(cams_t[:, :3])  # F R
    obs_t = torch.from_numpy(obs)
    xy = obs_t[:, 2:] * torch.tensor([1.0, -1.0], dtype=torch.float64)
    return _bal_problem(rot, FLIP * cams_t[:, 3:6], cams_t[:, 6:9], torch.from_numpy(pts),
                        obs_t[:, 0].long(), obs_t[:, 1].long(), xy)


def write_bal(problem: Problem, path: str | os.PathLike) -> None:
    """Write a problem with one RADIAL camera per image and zero principal point as a BAL file.

    Written to a temporary name and renamed, so a failure never leaves a half-written file.
    """
    if any(m != "RADIAL" for m in problem.camera_models) or problem.num_cameras != problem.num_images \
            or not torch.equal(problem.image_camera.cpu(), torch.arange(problem.num_images)) \
            or bool((problem.camera_params[:, 1:3] != 0).any()):
        raise ValueError("BAL needs one RADIAL camera per image with principal point (0, 0)")
    p = problem.to("cpu")
    rot = FLIP[:, None] * p.rotations
    cams = torch.cat([so3_log(rot), FLIP * p.translations, p.camera_params[:, [0, 3, 4]]], -1).numpy()
    xy = (p.obs_xy * torch.tensor([1.0, -1.0], dtype=torch.float64)).numpy()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(f"{p.num_images} {p.num_points} {p.num_observations}\n")
        obs_lines = np.column_stack([p.obs_image.numpy(), p.obs_point.numpy()])
        f.write("".join(f"{c} {q} {x:.10e} {y:.10e}\n" for (c, q), (x, y) in zip(obs_lines.tolist(), xy.tolist())))
        np.savetxt(f, cams.reshape(-1), fmt="%.16e")
        np.savetxt(f, p.points.numpy().reshape(-1), fmt="%.16e")
    os.replace(tmp, path)


SYNTHETIC_PRESETS = {
    # name: (cameras, points, mean track length) -> about cameras... observations = points * track
    "0.1M": (100, 20_000, 5),
    "1.3M": (600, 260_000, 5),
    "5M": (2000, 1_000_000, 5),
}


def synthetic_bal(num_cameras: int, num_points: int, mean_track: int = 5, noise_px: float = 0.5,
                  outlier_ratio: float = 0.01, seed: int = 0, focal: float = 500.0,
                  pose_noise: float = 1e-2, point_noise: float = 3e-2) -> tuple[Problem, Problem]:
    """A BAL-style problem (RADIAL per image) with known ground truth: ``(perturbed, truth)``.

    Cameras move along a gently curving street (1 unit apart, small random yaw/pitch, looking
    sideways at +y); each point lies 8-20 units from the street and is seen by 2 to
    ``2 mean_track - 2`` consecutive cameras. Observations get Gaussian pixel noise (``noise_px``),
    ``outlier_ratio`` of them are replaced by gross outliers (uniform +-100 px offsets); the
    initial orientations, camera centres, intrinsics and points are perturbed by ``pose_noise`` (rad / units),
    1% (focal) and ``point_noise`` (units). ``truth`` has the noise-free observations' parameters
    and the same (noisy) observations.
    """
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=f64)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=f64)

    k = torch.arange(num_cameras, dtype=f64)
    centers = torch.stack([k, 0.5 * torch.sin(k / 15.0), 0.2 * randn(num_cameras)], -1)
    # Looking along +y: camera z axis = world +y, camera x = world x, camera y = world -z.
    base = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=f64)
    jitter = so3_exp(0.05 * randn(num_cameras, 3))
    rotations = jitter @ base  # cam_from_world
    translations = -(rotations @ centers[:, :, None])[:, :, 0]
    lengths = torch.randint(2, max(2 * mean_track - 1, 3), (num_points,), generator=gen)
    first = (rand(num_points) * (num_cameras - lengths).clamp_min(0)).long()
    lengths = torch.minimum(lengths, num_cameras - first)
    mid = first.to(f64) + (lengths.to(f64) - 1.0) * 0.5
    points = torch.stack([mid + randn(num_points) * 2.0, 8.0 + 12.0 * rand(num_points), 6.0 * rand(num_points) - 3.0], -1)
    obs_point = torch.repeat_interleave(torch.arange(num_points), lengths)
    offsets = torch.arange(obs_point.numel()) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    obs_image = first[obs_point] + offsets
    f_k = torch.stack([focal * (1.0 + 0.02 * rand(num_cameras)), -0.02 + 0.01 * randn(num_cameras),
                       0.001 * randn(num_cameras)], -1)
    truth = _bal_problem(rotations, translations, f_k, points, obs_image, obs_point,
                         torch.zeros(obs_point.numel(), 2, dtype=f64))
    from .cameras import get_model, project

    pc = (rotations[obs_image] @ points[obs_point][:, :, None])[:, :, 0] + translations[obs_image]
    xy = project(get_model("RADIAL"), truth.camera_params[obs_image], pc, with_jac=False)
    xy = xy + noise_px * randn(*xy.shape)
    outliers = rand(xy.shape[0]) < outlier_ratio
    xy[outliers] += 200.0 * rand(int(outliers.sum()), 2) - 100.0
    truth.obs_xy = xy
    noisy = truth.clone()
    # Perturb orientation and camera centre (not t directly: far from the origin a small rotation
    # of cam_from_world with t kept would move the centre by |t| x angle).
    noisy.rotations = so3_exp(pose_noise * randn(num_cameras, 3)) @ rotations
    noisy_centres = centers + pose_noise * randn(num_cameras, 3)
    noisy.translations = -(noisy.rotations @ noisy_centres[:, :, None])[:, :, 0]
    noisy.camera_params[:, 0] *= 1.0 + 0.01 * randn(num_cameras)
    noisy.points = points + point_noise * randn(num_points, 3)
    return noisy, truth


def synthetic_preset(name: str, seed: int = 0) -> tuple[Problem, Problem]:
    """One of :data:`SYNTHETIC_PRESETS` (about 0.1M, 1.3M and 5M observations)."""
    if name not in SYNTHETIC_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {list(SYNTHETIC_PRESETS)}")
    cams, pts, track = SYNTHETIC_PRESETS[name]
    return synthetic_bal(cams, pts, track, seed=seed)


def bal_cost_reference(problem: Problem) -> float:
    """0.5 * sum ||r||^2 over observations in front of the camera, evaluated in BAL's own model.

    An independent re-implementation of the BAL projection (angle-axis, -z forward) used to check
    the BAL -> COLMAP mapping; not used by the solver.
    """
    p = problem.to("cpu")
    rot = FLIP[:, None] * p.rotations  # BAL R
    t = FLIP * p.translations
    pw = (rot[p.obs_image] @ p.points[p.obs_point][:, :, None])[:, :, 0] + t[p.obs_image]
    proj = -pw[:, :2] / pw[:, 2:]
    r2 = (proj * proj).sum(-1)
    cam = p.camera_params[p.image_camera][p.obs_image]
    pix = cam[:, 0:1] * (1.0 + cam[:, 3:4] * r2[:, None] + cam[:, 4:5] * r2[:, None] ** 2) * proj
    obs = p.obs_xy * torch.tensor([1.0, -1.0], dtype=torch.float64)
    front = pw[:, 2] < 0
    res = (pix - obs)[front]
    return 0.5 * float((res * res).sum()) if not math.isnan(float(res.sum())) else math.nan
