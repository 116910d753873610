"""The bundle-adjustment problem as tensors, and its conversion from/to ``pycolmap.Reconstruction``.

Conventions (COLMAP's): poses are ``cam_from_world`` (x_cam = R x_world + t), camera parameters
are in COLMAP's order for the camera's model (see :mod:`recon.ba.cameras`), observations are
pixel coordinates with (0.5, 0.5) the centre of the top-left pixel. Everything is float64.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from .cameras import MODELS_BY_ID, get_model

if TYPE_CHECKING:  # pycolmap is imported where reconstructions are converted
    import pycolmap


@dataclass
class Problem:
    """A BA problem: parameters, observations and which parameters are held constant.

    Shapes (I images, C cameras, P points, M observations, K = widest camera parameter vector):

    * ``rotations`` (I, 3, 3), ``translations`` (I, 3): cam_from_world per image.
    * ``camera_params`` (C, K): COLMAP-ordered parameters, zero-padded past the model's count.
    * ``camera_models`` list of C COLMAP model names.
    * ``image_camera`` (I,) long: camera index of each image (shared intrinsics: many images, one camera).
    * ``points`` (P, 3).
    * ``obs_image`` (M,), ``obs_point`` (M,) long; ``obs_xy`` (M, 2) measured pixels.
    * ``pose_constant`` (I, 6) bool: [rotation (3), translation (3)] entries held fixed (a fully
      constant pose is all True; the scale gauge fixes one translation entry).
    * ``camera_constant`` (C, K) bool: fixed intrinsics entries (padding columns are always True).
    * ``point_constant`` (P,) bool.
    """

    rotations: torch.Tensor
    translations: torch.Tensor
    camera_params: torch.Tensor
    camera_models: list[str]
    image_camera: torch.Tensor
    points: torch.Tensor
    obs_image: torch.Tensor
    obs_point: torch.Tensor
    obs_xy: torch.Tensor
    pose_constant: torch.Tensor
    camera_constant: torch.Tensor
    point_constant: torch.Tensor
    # Ids of the pycolmap objects each row came from (empty for BAL / synthetic problems).
    image_ids: list[int] = field(default_factory=list)
    camera_ids: list[int] = field(default_factory=list)
    point3D_ids: list[int] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return self.rotations.shape[0]

    @property
    def num_cameras(self) -> int:
        return self.camera_params.shape[0]

    @property
    def num_points(self) -> int:
        return self.points.shape[0]

    @property
    def num_observations(self) -> int:
        return self.obs_image.shape[0]

    @property
    def device(self) -> torch.device:
        return self.points.device

    def to(self, device: str | torch.device) -> "Problem":
        """A copy with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)

    def clone(self) -> "Problem":
        """A deep copy of the tensors (lists are copied too)."""
        copied = {f.name: (v.clone() if isinstance(v, torch.Tensor) else list(v))
                  for f in fields(self) for v in [getattr(self, f.name)]}
        return replace(self, **copied)

    def validate(self) -> None:
        """Raise ValueError with a clear message when shapes or indices are inconsistent."""
        i, c, p, m = self.num_images, self.num_cameras, self.num_points, self.num_observations
        checks = [
            (self.rotations.shape == (i, 3, 3), "rotations must be (I, 3, 3)"),
            (self.translations.shape == (i, 3), "translations must be (I, 3)"),
            (len(self.camera_models) == c, "one camera model name per camera"),
            (self.image_camera.shape == (i,), "image_camera must be (I,)"),
            (self.obs_point.shape == (m,) and self.obs_xy.shape == (m, 2), "observations must be (M,), (M, 2)"),
            (self.pose_constant.shape == (i, 6), "pose_constant must be (I, 6)"),
            (self.camera_constant.shape == self.camera_params.shape, "camera_constant must match camera_params"),
            (self.point_constant.shape == (p,), "point_constant must be (P,)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid BA problem: {message}")
        if m == 0:
            raise ValueError("invalid BA problem: no observations")
        for name, idx, bound in [("obs_image", self.obs_image, i), ("obs_point", self.obs_point, p),
                                 ("image_camera", self.image_camera, c)]:
            if int(idx.min()) < 0 or int(idx.max()) >= bound:
                raise ValueError(f"invalid BA problem: {name} indices outside [0, {bound})")
        for name in self.camera_models:
            get_model(name)


def intrinsics_constant_mask(camera_models: list[str], width: int, refine_focal_length: bool,
                             refine_principal_point: bool, refine_extra_params: bool) -> torch.Tensor:
    """(C, width) bool mask of fixed intrinsics entries, COLMAP's ``refine_*`` options per model."""
    mask = torch.ones(len(camera_models), width, dtype=torch.bool)
    for row, name in enumerate(camera_models):  # one entry per camera model, not per observation
        model = get_model(name)
        for idxs, refine in [(model.focal_idxs, refine_focal_length), (model.pp_idxs, refine_principal_point),
                             (model.extra_idxs, refine_extra_params)]:
            mask[row, list(idxs)] = not refine
    return mask


def gauge_two_cams(rotations: torch.Tensor, translations: torch.Tensor,
                   pose_constant: torch.Tensor) -> torch.Tensor:
    """COLMAP's ``TWO_CAMS_FROM_WORLD`` gauge: returns an updated (I, 6) constant mask.

    If two or more poses are already fully constant nothing changes. Otherwise the first constant
    pose (or the first pose) becomes fully constant, and in the first later pose whose baseline
    ``t1 - R1 R2^T t2`` has an entry above 1e-9 in magnitude, the largest such translation entry
    is fixed: that removes the 7 degrees of freedom of a similarity transform.
    """
    full = pose_constant.all(-1)
    mask = pose_constant.clone()
    if int(full.sum()) >= 2 or rotations.shape[0] < 2:
        return mask
    first = int(full.nonzero()[0]) if bool(full.any()) else 0
    mask[first] = True
    baseline = translations[first] - (rotations[first] @ rotations.transpose(1, 2) @ translations[:, :, None])[:, :, 0]
    magnitude, dim = baseline.abs().max(-1)
    candidates = (magnitude > 1e-9) & ~full
    candidates[first] = False
    if not bool(candidates.any()):
        raise ValueError("cannot fix the gauge: no second camera with a non-zero baseline")
    second = int(candidates.nonzero()[0])
    mask[second, 3 + int(dim[second])] = True
    return mask


def camera_param_matrix(cameras: Sequence[pycolmap.Camera]) -> tuple[list[str], np.ndarray]:
    """Model names and (C, P) parameters in COLMAP's order, zero-padded to the widest model."""
    models = [get_model(int(camera.model.value)).name for camera in cameras]
    params = np.zeros((len(cameras), max(get_model(name).num_params for name in models)))
    for row, camera in enumerate(cameras):
        params[row, :len(camera.params)] = camera.params
    return models, params


def from_reconstruction(rec, refine_focal_length: bool = True, refine_principal_point: bool = False,
                        refine_extra_params: bool = True, refine_poses: bool = True, refine_points: bool = True,
                        constant_image_ids=(), constant_camera_ids=(), constant_point3D_ids=(),
                        image_ids=None, gauge: str = "two_cams") -> Problem:
    """Build a :class:`Problem` from a ``pycolmap.Reconstruction`` (pycolmap 4.2: poses on frames).

    Every registered image (or only ``image_ids``) and every 3D point they observe enters the
    problem. Only trivial rigs (one camera per frame, cam_from_world == rig_from_world) are
    supported; anything else raises a ValueError rather than silently dropping the rig offsets.
    ``gauge``: ``"two_cams"`` (COLMAP's TWO_CAMS_FROM_WORLD) or ``"none"``.
    """
    ids = sorted(rec.reg_image_ids()) if image_ids is None else sorted(image_ids)
    if not ids:
        raise ValueError("the reconstruction has no registered images to adjust")
    rot, trans, obs_img, obs_pid, obs_xy = [], [], [], [], []
    camera_ids = sorted({rec.images[i].camera_id for i in ids})
    cam_index = {cid: k for k, cid in enumerate(camera_ids)}
    image_camera = []
    for k, image_id in enumerate(ids):  # I/O boundary: pycolmap objects are visited once each
        image = rec.images[image_id]
        frame = rec.frame(image.frame_id)
        if rec.rig(frame.rig_id).num_sensors() > 1:
            raise ValueError(f"image {image_id} belongs to a multi-sensor rig; recon.ba supports trivial rigs only")
        pose = image.cam_from_world()
        rot.append(pose.rotation.matrix())
        trans.append(pose.translation)
        image_camera.append(cam_index[image.camera_id])
        points2D = image.get_observation_points2D()
        obs_pid.extend(p.point3D_id for p in points2D)
        obs_xy.extend(p.xy for p in points2D)
        obs_img.extend([k] * len(points2D))
    point_ids = sorted(set(obs_pid))
    if not point_ids:
        raise ValueError("the selected images observe no 3D points")
    pt_index = {pid: k for k, pid in enumerate(point_ids)}
    models, params = camera_param_matrix([rec.cameras[cid] for cid in camera_ids])
    width = params.shape[1]
    camera_constant = intrinsics_constant_mask(models, width, refine_focal_length, refine_principal_point,
                                               refine_extra_params)
    camera_constant[[cam_index[c] for c in constant_camera_ids if c in cam_index]] = True
    f64 = dict(dtype=torch.float64)
    rotations = torch.tensor(np.array(rot), **f64)
    translations = torch.tensor(np.array(trans), **f64)
    pose_constant = torch.full((len(ids), 6), not refine_poses)
    id_index = {iid: k for k, iid in enumerate(ids)}
    pose_constant[[id_index[i] for i in constant_image_ids if i in id_index]] = True
    if gauge == "two_cams" and refine_poses:
        pose_constant = gauge_two_cams(rotations, translations, pose_constant)
    elif gauge not in ("two_cams", "none"):
        raise ValueError(f"unknown gauge {gauge!r}; use 'two_cams' or 'none'")
    point_constant = torch.full((len(point_ids),), not refine_points)
    point_constant[[pt_index[p] for p in constant_point3D_ids if p in pt_index]] = True
    problem = Problem(
        rotations=rotations, translations=translations,
        camera_params=torch.tensor(params, **f64), camera_models=models,
        image_camera=torch.tensor(image_camera, dtype=torch.long),
        points=torch.tensor(np.array([rec.points3D[p].xyz for p in point_ids]), **f64),
        obs_image=torch.tensor(obs_img, dtype=torch.long),
        obs_point=torch.tensor([pt_index[p] for p in obs_pid], dtype=torch.long),
        obs_xy=torch.tensor(np.array(obs_xy), **f64),
        pose_constant=pose_constant, camera_constant=camera_constant, point_constant=point_constant,
        image_ids=list(ids), camera_ids=camera_ids, point3D_ids=point_ids)
    problem.validate()
    return problem


def write_to_reconstruction(problem: Problem, rec) -> None:
    """Write poses, intrinsics and points back into the reconstruction they came from (in place).

    Fully constant poses, cameras and points are not written at all, so they stay bit-identical
    (a rotation matrix -> quaternion round trip would change the last bits).
    """
    import pycolmap

    rot = problem.rotations.detach().cpu().numpy()
    trans = problem.translations.detach().cpu().numpy()
    pose_moves = (~problem.pose_constant.all(-1)).tolist()
    for k, image_id in enumerate(problem.image_ids):
        if pose_moves[k]:
            frame = rec.frame(rec.images[image_id].frame_id)
            frame.rig_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(rot[k]), trans[k])
    params = problem.camera_params.detach().cpu().numpy()
    camera_moves = (~problem.camera_constant.all(-1)).tolist()
    for k, camera_id in enumerate(problem.camera_ids):
        if camera_moves[k]:
            cam = rec.cameras[camera_id]
            cam.params = params[k, :MODELS_BY_ID[int(cam.model.value)].num_params]
    points = problem.points.detach().cpu().numpy()
    point_moves = (~problem.point_constant).tolist()
    for k, point_id in enumerate(problem.point3D_ids):
        if point_moves[k]:
            rec.points3D[point_id].xyz = points[k]


def to_reconstruction(problem: Problem):
    """A new ``pycolmap.Reconstruction`` holding the problem (trivial rigs, one image per pose).

    Image ``k`` gets id ``k + 1`` and name ``"image_{k:06d}"``, camera ``c`` id ``c + 1``, point
    ``p`` id ``p + 1`` (points are added in order, so pycolmap assigns exactly these ids); each
    observation becomes one Point2D of its image. :func:`from_reconstruction` on the result gives
    the same problem with ids attached. Camera width/height are twice the largest |pixel| seen
    (COLMAP only uses them for sanity checks).
    """
    import pycolmap

    obs_img = problem.obs_image.cpu().numpy()
    obs_xy = problem.obs_xy.cpu().numpy()
    obs_pt = problem.obs_point.cpu().numpy()
    params = problem.camera_params.cpu().numpy()
    size = int(2 * np.abs(obs_xy).max()) + 2
    rec = pycolmap.Reconstruction()
    for c, name in enumerate(problem.camera_models):  # I/O boundary: one pycolmap object each
        model = get_model(name)
        cam = pycolmap.Camera.create_from_model_name(c + 1, name, 1.0, size, size)
        cam.params = params[c, :model.num_params]
        rec.add_camera_with_trivial_rig(cam)
    order = np.argsort(obs_img, kind="stable")
    counts = np.bincount(obs_img, minlength=problem.num_images)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.empty(len(order), dtype=np.int64)  # index of each observation within its image
    slot[order] = np.arange(len(order)) - np.repeat(starts, counts)
    rot = problem.rotations.cpu().numpy()
    trans = problem.translations.cpu().numpy()
    image_camera = problem.image_camera.cpu().numpy()
    for k in range(problem.num_images):
        rows = order[starts[k]:starts[k] + counts[k]]
        pts2d = pycolmap.Point2DList([pycolmap.Point2D(xy) for xy in obs_xy[rows]])
        image = pycolmap.Image(name=f"image_{k:06d}", camera_id=int(image_camera[k]) + 1, image_id=k + 1, points2D=pts2d)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(rot[k]), trans[k]))
    pt_order = np.argsort(obs_pt, kind="stable")
    pt_counts = np.bincount(obs_pt, minlength=problem.num_points)
    pt_starts = np.concatenate([[0], np.cumsum(pt_counts)[:-1]])
    points = problem.points.cpu().numpy()
    for p in range(problem.num_points):
        track = pycolmap.Track()
        rows = pt_order[pt_starts[p]:pt_starts[p] + pt_counts[p]]
        track.add_elements([pycolmap.TrackElement(int(obs_img[r]) + 1, int(slot[r])) for r in rows])
        rec.add_point3D(points[p], track)
    return rec
