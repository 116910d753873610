"""COLMAP camera models for bundle adjustment: projection and analytic Jacobians.

Every model is "normalised image coordinates -> distortion -> focal and principal point", with
COLMAP's parameter order (``colmap/sensor/models.h``):

================  ================================================
SIMPLE_PINHOLE    f, cx, cy
PINHOLE           fx, fy, cx, cy
SIMPLE_RADIAL     f, cx, cy, k
RADIAL            f, cx, cy, k1, k2
OPENCV            fx, fy, cx, cy, k1, k2, p1, p2
================  ================================================

A model is described by a :class:`CameraModel` (where its focal, principal-point and extra
parameters sit) plus one distortion function that returns the distorted coordinates and, on
request, their Jacobians with respect to the undistorted coordinates and to the extra parameters.
All functions work on batches: ``u, v`` are (N,) tensors and ``params`` is (N, num_params), so one
call covers every observation of a model (no loop over observations or cameras).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Tensor = torch.Tensor
#: COLMAP's camera models reject points with depth below machine epsilon: such observations get
#: a zero residual in BA and an infinite reprojection error in the filters.
MIN_DEPTH = torch.finfo(torch.float64).eps
# distortion(extra (E,N), u (N,), v (N,), with_jac) -> ud, vd, J_uv (2,2,N) | None, J_extra (2,E,N) | None
# Component-major ("structure of arrays") so every operation runs over contiguous length-N vectors.
DistortionFn = Callable[[Tensor, Tensor, Tensor, bool], tuple[Tensor, Tensor, Tensor | None, Tensor | None]]


@dataclass(frozen=True)
class CameraModel:
    """Layout of one COLMAP camera model's parameter vector."""

    name: str
    model_id: int  # pycolmap.CameraModelId value
    num_params: int
    focal_idxs: tuple[int, ...]  # one (f) or two (fx, fy)
    pp_idxs: tuple[int, int]
    extra_idxs: tuple[int, ...]
    distortion: DistortionFn

    @property
    def extra_slice(self) -> slice:
        """``extra_idxs`` as a slice (they are consecutive in every model): indexing by it is a view,
        where a list of indices is a gather plus a new index tensor on every call."""
        start = self.extra_idxs[0] if self.extra_idxs else 0
        return slice(start, start + len(self.extra_idxs))


def _no_distortion(extra: Tensor, u: Tensor, v: Tensor, with_jac: bool):
    if not with_jac:
        return u, v, None, None
    one, zero = torch.ones_like(u), torch.zeros_like(u)
    return u, v, torch.stack([torch.stack([one, zero]), torch.stack([zero, one])]), extra.new_zeros(2, 0, u.shape[0])


def _radial_distortion(extra: Tensor, u: Tensor, v: Tensor, with_jac: bool):
    """ud = u (1 + k1 r2 + k2 r2^2 + ...), for one or two radial coefficients (SIMPLE_RADIAL, RADIAL)."""
    r2 = u * u + v * v
    powers = [r2]
    for _ in range(1, extra.shape[0]):
        powers.append(powers[-1] * r2)
    radial = sum(extra[i] * powers[i] for i in range(extra.shape[0]))
    scale = 1.0 + radial
    ud, vd = u * scale, v * scale
    if not with_jac:
        return ud, vd, None, None
    # d radial / d r2 = k1 + 2 k2 r2 + ...
    dradial = extra[0] + sum((i + 1) * extra[i] * powers[i - 1] for i in range(1, extra.shape[0]))
    two_dr = 2.0 * dradial
    uv = u * v * two_dr
    j_uv = torch.stack([torch.stack([scale + u * u * two_dr, uv]), torch.stack([uv, scale + v * v * two_dr])])
    p = torch.stack(powers)  # (E, N)
    j_extra = torch.stack([u * p, v * p])
    return ud, vd, j_uv, j_extra


def _opencv_distortion(extra: Tensor, u: Tensor, v: Tensor, with_jac: bool):
    """COLMAP's OPENCV distortion: radial k1, k2 and tangential p1, p2."""
    k1, k2, p1, p2 = extra.unbind(0)
    u2, v2, uv = u * u, v * v, u * v
    r2 = u2 + v2
    radial = k1 * r2 + k2 * r2 * r2
    ud = u + u * radial + 2.0 * p1 * uv + p2 * (r2 + 2.0 * u2)
    vd = v + v * radial + 2.0 * p2 * uv + p1 * (r2 + 2.0 * v2)
    if not with_jac:
        return ud, vd, None, None
    two_dr = 2.0 * (k1 + 2.0 * k2 * r2)
    cross = uv * two_dr + 2.0 * p1 * u + 2.0 * p2 * v
    j_uv = torch.stack([torch.stack([1.0 + radial + u2 * two_dr + 2.0 * p1 * v + 6.0 * p2 * u, cross]),
                        torch.stack([cross, 1.0 + radial + v2 * two_dr + 2.0 * p2 * u + 6.0 * p1 * v])])
    r4 = r2 * r2
    j_extra = torch.stack([torch.stack([u * r2, u * r4, 2.0 * uv, r2 + 2.0 * u2]),
                           torch.stack([v * r2, v * r4, r2 + 2.0 * v2, 2.0 * uv])])
    return ud, vd, j_uv, j_extra


MODELS: dict[str, CameraModel] = {m.name: m for m in [
    CameraModel("SIMPLE_PINHOLE", 0, 3, (0,), (1, 2), (), _no_distortion),
    CameraModel("PINHOLE", 1, 4, (0, 1), (2, 3), (), _no_distortion),
    CameraModel("SIMPLE_RADIAL", 2, 4, (0,), (1, 2), (3,), _radial_distortion),
    CameraModel("RADIAL", 3, 5, (0,), (1, 2), (3, 4), _radial_distortion),
    CameraModel("OPENCV", 4, 8, (0, 1), (2, 3), (4, 5, 6, 7), _opencv_distortion),
]}
MODELS_BY_ID: dict[int, CameraModel] = {m.model_id: m for m in MODELS.values()}


def get_model(name_or_id: str | int) -> CameraModel:
    """Look a model up by COLMAP name or id; a clear error for models the BA does not support."""
    table = MODELS_BY_ID if isinstance(name_or_id, int) else MODELS
    if name_or_id not in table:
        raise ValueError(f"camera model {name_or_id!r} is not supported by recon.ba "
                         f"(supported: {', '.join(MODELS)})")
    return table[name_or_id]


def project(model: CameraModel, params: Tensor, p_cam: Tensor, with_jac: bool = True):
    """Project camera-frame points with one camera model.

    Args:
        model: the camera model of every row.
        params: (N, K>=model.num_params) camera parameters per observation (COLMAP order; extra
            columns beyond ``num_params`` are ignored padding).
        p_cam: (N, 3) points in the camera frame (z > 0 in front).
        with_jac: also return Jacobians.
    Returns:
        xy (N, 2) pixels; and when ``with_jac``: J_pcam (N, 2, 3) d xy / d p_cam and
        J_params (N, 2, K) d xy / d params (zero in padding columns).
    """
    return _row_major(project_t(model, params.T, p_cam.T, with_jac), with_jac)


def _row_major(out, with_jac: bool):
    """A component-major projection's outputs (:func:`project_t`) as row-major views: xy (N, 2),
    J_pcam (N, 2, 3), J_params (N, 2, K)."""
    if not with_jac:
        return out.T
    xy, j_pcam, j_params = out
    return xy.T, j_pcam.permute(2, 0, 1), j_params.permute(2, 0, 1)


def project_t(model: CameraModel, params: Tensor, p_cam: Tensor, with_jac: bool = True):
    """:func:`project` on component-major ("transposed") tensors: the same maths, but every
    operation runs over contiguous length-N vectors (fast on CPU and GPU alike).

    params (K, N), p_cam (3, N) -> xy (2, N); with ``with_jac`` also J_pcam (2, 3, N) and
    J_params (2, K, N).
    """
    inv_z = 1.0 / p_cam[2]
    u, v = p_cam[0] * inv_z, p_cam[1] * inv_z
    extra = params[model.extra_slice]
    ud, vd, j_uv, j_extra = model.distortion(extra, u, v, with_jac)
    fx = params[model.focal_idxs[0]]
    fy = params[model.focal_idxs[-1]]
    xy = torch.stack([fx * ud + params[model.pp_idxs[0]], fy * vd + params[model.pp_idxs[1]]])
    if not with_jac:
        return xy
    f = torch.stack([fx, fy])[:, None]  # (2, 1, N)
    # d(u, v)/d p_cam = [[1/z, 0, -u/z], [0, 1/z, -v/z]], multiplied out.
    a = f * j_uv * inv_z  # (2, 2, N)
    j_pcam = torch.cat([a, -(a[:, 0:1] * u + a[:, 1:2] * v)], 1)
    j_params = params.new_zeros(2, params.shape[0], params.shape[1])
    j_params[0, model.focal_idxs[0]] = ud
    j_params[1, model.focal_idxs[-1]] = vd
    j_params[0, model.pp_idxs[0]] = 1.0
    j_params[1, model.pp_idxs[1]] = 1.0
    if model.extra_idxs:
        j_params[:, model.extra_slice] = f * j_extra
    return xy, j_pcam, j_params


#: One camera model and the rows (observations) that use it; ``None`` when every row does.
ModelGroups = list[tuple[CameraModel, "Tensor | None"]]


def model_groups(camera_models: list[str], obs_camera: Tensor) -> ModelGroups:
    """Observations grouped by camera model (a loop over the models present, never over rows).

    camera_models: the model name of each camera; obs_camera: (M,) camera index per observation.
    """
    model_of_camera = torch.tensor([get_model(n).model_id for n in camera_models], device=obs_camera.device)
    obs_model = model_of_camera[obs_camera]
    present = sorted({get_model(n).model_id for n in camera_models})
    if len(present) == 1:
        return [(MODELS_BY_ID[present[0]], None)]
    return [(MODELS_BY_ID[i], (obs_model == i).nonzero()[:, 0]) for i in present]


def project_groups(groups: ModelGroups, params: Tensor, p_cam: Tensor, with_jac: bool = True):
    """:func:`project` of rows whose cameras have different models: one batched call per model.

    params (M, K) per observation, p_cam (M, 3); ``groups`` from :func:`model_groups`.
    Returns what :func:`project` returns, for all M rows.
    """
    return _row_major(project_groups_t(groups, params.T, p_cam.T, with_jac), with_jac)


def project_groups_t(groups: ModelGroups, params: Tensor, p_cam: Tensor, with_jac: bool = True):
    """:func:`project_groups` on component-major tensors (as :func:`project_t`): params (K, M),
    p_cam (3, M) -> xy (2, M), and with ``with_jac`` J_pcam (2, 3, M), J_params (2, K, M)."""
    if len(groups) == 1:
        return project_t(groups[0][0], params, p_cam, with_jac)
    n = p_cam.shape[1]
    xy = p_cam.new_empty(2, n)
    if not with_jac:
        for model, rows in groups:
            xy[:, rows] = project_t(model, params[:, rows], p_cam[:, rows], with_jac=False)
        return xy
    j_pcam = p_cam.new_empty(2, 3, n)
    j_params = p_cam.new_empty(2, params.shape[0], n)
    for model, rows in groups:
        xy[:, rows], j_pcam[..., rows], j_params[..., rows] = project_t(model, params[:, rows], p_cam[:, rows])
    return xy, j_pcam, j_params
