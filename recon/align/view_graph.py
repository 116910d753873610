"""The view graph: images as nodes, verified two-view geometries as edges with relative poses.

Read from any COLMAP database (recon's or COLMAP's): cameras, images (ids mapped by name, never
by order), keypoints in COLMAP's pixel convention, and every two-view geometry whose
configuration describes a usable epipolar geometry. Relative poses ``cam_j_from_cam_i`` come from
the stored E (calibrated pairs) or from F and the current intrinsics (uncalibrated pairs), via
COLMAP's decomposition with the cheirality test (``pycolmap.estimate_two_view_geometry_pose``).

Focal lengths of cameras without a prior are refined from the fundamental matrices first
(:func:`calibrate_focal_lengths`): for the right intrinsics ``E = K_j^T F K_i`` is an essential
matrix, whose two non-zero singular values are equal.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

logger = logging.getLogger(__name__)
Config = pycolmap.TwoViewGeometryConfiguration
USABLE_CONFIGS = (Config.CALIBRATED, Config.UNCALIBRATED, Config.PLANAR, Config.PANORAMIC,
                  Config.PLANAR_OR_PANORAMIC)


@dataclass
class ViewGraph:
    """Images, cameras and verified pairs of a database (N images, C cameras, P pairs).

    image_ids: (N,) database image ids; names: N image names.
    image_camera: (N,) index into ``cameras`` of each image.
    cameras: C ``pycolmap.Camera`` (their ``camera_id`` is the database id).
    keypoints: N arrays (K_n, 2) float64, COLMAP pixels ((0.5, 0.5) is the top-left pixel centre).
    pairs: (P, 2) image indices ``(i, j)``; matches: P arrays (M_p, 2) keypoint indices in i, j,
        a keypoint at the same pixel as an earlier one of its image replaced by that one
        (:func:`same_location`: one point, so one node of a track).
    geometries: P ``pycolmap.TwoViewGeometry`` as stored.
    rotations: (P, 3, 3), translations: (P, 3) unit ``cam_j_from_cam_i`` (after
        :func:`estimate_relative_poses`); valid: (P,) bool, pairs still in use.
    """

    image_ids: np.ndarray
    names: list[str]
    image_camera: np.ndarray
    cameras: list[pycolmap.Camera]
    keypoints: list[np.ndarray]
    pairs: np.ndarray
    matches: list[np.ndarray]
    geometries: list[pycolmap.TwoViewGeometry]
    rotations: np.ndarray
    translations: np.ndarray
    valid: np.ndarray

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def num_inliers(self) -> np.ndarray:
        """(P,) number of verified matches per pair."""
        return np.array([len(m) for m in self.matches], dtype=np.int64)


def same_location(keypoints: np.ndarray) -> np.ndarray:
    """(K,) for each of an image's keypoints (K, 2) the index of the first keypoint at exactly
    the same pixel (itself when alone). SIFT detects a keypoint once per dominant orientation:
    10 % of the keypoints of ngp_fox and 14 % of strecha_fountain share their location with
    another. Matched to one keypoint elsewhere, two of them put one image twice in a track."""
    # As complex numbers (x + iy) the rows sort natively: 5x faster than np.unique(axis=0).
    xy = np.ascontiguousarray(keypoints, dtype=np.float64).view(np.complex128).ravel()
    _, first, inverse = np.unique(xy, return_index=True, return_inverse=True)
    return first[inverse]


def read_view_graph(database_path: str | Path, min_num_inliers: int = 15) -> ViewGraph:
    """Every image and every usable verified pair with at least ``min_num_inliers`` inliers."""
    database_path = Path(database_path)
    if not database_path.is_file():
        raise FileNotFoundError(f"database not found: {database_path}")
    with pycolmap.Database.open(database_path) as db:
        images = sorted(db.read_all_images(), key=lambda image: image.name)
        cameras = {camera.camera_id: camera for camera in db.read_all_cameras()}
        pair_ids, geometries = db.read_two_view_geometries()
        keypoints = [db.read_keypoints(image.image_id)[:, :2].astype(np.float64) for image in images]
    if len(images) < 2:
        raise ValueError(f"{database_path}: {len(images)} image(s); a reconstruction needs at least two")
    index = {image.image_id: k for k, image in enumerate(images)}
    first = [same_location(k) for k in keypoints]
    camera_ids = sorted({image.camera_id for image in images})
    camera_index = {cid: k for k, cid in enumerate(camera_ids)}
    pairs, matches, kept = [], [], []
    for pair_id, geometry in zip(pair_ids, geometries):  # one entry per image pair
        id1, id2 = pycolmap.pair_id_to_image_pair(pair_id)
        inliers = np.asarray(geometry.inlier_matches, dtype=np.int64).reshape(-1, 2)
        if geometry.config not in USABLE_CONFIGS or len(inliers) < min_num_inliers:
            continue
        if id1 not in index or id2 not in index:
            continue
        pairs.append((index[id1], index[id2]))
        matches.append(np.stack([first[index[id1]][inliers[:, 0]], first[index[id2]][inliers[:, 1]]], 1))
        kept.append(geometry)
    if not pairs:
        raise RuntimeError(f"{database_path}: no verified image pair with >= {min_num_inliers} inliers")
    num_pairs = len(pairs)
    return ViewGraph(
        image_ids=np.array([image.image_id for image in images]),
        names=[image.name for image in images],
        image_camera=np.array([camera_index[image.camera_id] for image in images]),
        cameras=[cameras[cid] for cid in camera_ids],
        keypoints=keypoints,
        pairs=np.array(pairs, dtype=np.int64),
        matches=matches,
        geometries=kept,
        rotations=np.tile(np.eye(3), (num_pairs, 1, 1)),
        translations=np.zeros((num_pairs, 3)),
        valid=np.ones(num_pairs, dtype=bool),
    )


def calibration_matrices(focal: torch.Tensor, principal: torch.Tensor) -> torch.Tensor:
    """(C, 3, 3) ``K`` from focal (C,) and principal point (C, 2)."""
    K = torch.zeros(len(focal), 3, 3, dtype=focal.dtype, device=focal.device)
    K[:, 0, 0] = focal
    K[:, 1, 1] = focal
    K[:, :2, 2] = principal
    K[:, 2, 2] = 1.0
    return K


def essential_singular_gap(F: torch.Tensor, K_i: torch.Tensor, K_j: torch.Tensor) -> torch.Tensor:
    """(P,) ``(s1 - s2) / (s1 + s2)`` of ``E = K_j^T F K_i``: zero for a true essential matrix.

    F: (P, 3, 3) fundamental matrices ``x_j^T F x_i = 0``; K_i, K_j: (P, 3, 3).
    """
    E = K_j.transpose(1, 2) @ F @ K_i
    s = torch.linalg.svdvals(E)
    return (s[:, 0] - s[:, 1]) / (s[:, 0] + s[:, 1]).clamp_min(1e-300)


def calibrate_focal_lengths(graph: ViewGraph, device: torch.device | str = "cpu", max_iterations: int = 30,
                            loss_scale: float = 0.05, refine_all: bool = False,
                            min_improvement: float = 0.2) -> np.ndarray:
    """Refine the focal length of every camera without a focal prior from the pairs' F (in place).

    One focal per camera (shared by its images), principal point fixed; minimises the robust
    (Cauchy, ``loss_scale``) inlier-weighted sum of :func:`essential_singular_gap` over every pair
    with a fundamental matrix, in log-focal space by damped Newton steps (the C x C Hessian
    assembled from every pair's 2 x 2 block by autograd). A camera's focal is kept when the
    optimum leaves [0.2, 10] x its start or lowers the cost by less than ``min_improvement``
    (a fraction): then the pairs do not constrain it (e.g. all optical axes through one point, a
    known degeneracy of focal lengths from F), and BA has to find it. ``refine_all`` also
    refines cameras with a prior. Returns (C,) the focal of each camera after the update.
    """
    F = np.stack([fundamental_matrix(g) for g in graph.geometries])
    usable = graph.valid & (np.abs(F).reshape(len(F), -1).sum(1) > 0)
    start = focal_lengths(graph)
    free = np.array([refine_all or not camera.has_prior_focal_length for camera in graph.cameras])
    if not free.any() or not usable.any():
        return start
    dev = torch.device(device)
    f64 = dict(dtype=torch.float64, device=dev)
    pairs = torch.as_tensor(graph.pairs[usable], device=dev)
    cam_i = torch.as_tensor(graph.image_camera, device=dev)[pairs[:, 0]]
    cam_j = torch.as_tensor(graph.image_camera, device=dev)[pairs[:, 1]]
    F_t = torch.as_tensor(F[usable], **f64)
    F_t = F_t / torch.linalg.matrix_norm(F_t)[:, None, None]
    weights = torch.as_tensor(graph.num_inliers[usable], **f64)
    weights = weights / weights.sum()
    principal = torch.as_tensor(np.array([_principal_point(camera) for camera in graph.cameras]), **f64)
    log_start = torch.as_tensor(np.log(start), **f64)
    free_t = torch.as_tensor(free, device=dev)
    pair_mask = free_t[:, None] & free_t[None, :]

    def pair_costs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(P,) each pair's weighted robust cost under the log-focal updates a, b (P,) of its two cameras."""
        K_i = calibration_matrices(torch.exp(log_start[cam_i] + a), principal[cam_i])
        K_j = calibration_matrices(torch.exp(log_start[cam_j] + b), principal[cam_j])
        return weights * torch.log1p((essential_singular_gap(F_t, K_i, K_j) / loss_scale) ** 2)

    def cost(delta: torch.Tensor) -> float:
        update = delta * free_t
        return float(pair_costs(update[cam_i], update[cam_j]).sum())

    def gradient_hessian(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(C,) gradient and (C, C) Hessian of the cost (frozen cameras' rows zero). A pair's cost
        depends on two focal lengths only, so three backward passes give every pair's 2 x 2 block
        (not one per camera, as a Hessian by autograd over the (C,) vector would need)."""
        update = delta * free_t
        a, b = update[cam_i].requires_grad_(), update[cam_j].requires_grad_()
        g_a, g_b = torch.autograd.grad(pair_costs(a, b).sum(), (a, b), create_graph=True)
        h_aa, h_ab = torch.autograd.grad(g_a.sum(), (a, b), retain_graph=True)
        h_ba, h_bb = torch.autograd.grad(g_b.sum(), (a, b))
        gradient = torch.zeros_like(delta).index_add_(0, cam_i, g_a.detach()).index_add_(0, cam_j, g_b.detach())
        hessian = torch.zeros(len(delta), len(delta), **f64)
        blocks = ((cam_i, cam_i, h_aa), (cam_i, cam_j, h_ab), (cam_j, cam_i, h_ba), (cam_j, cam_j, h_bb))
        for rows, cols, block in blocks:  # the four entries of each pair's block
            hessian.index_put_((rows, cols), block, accumulate=True)
        return gradient * free_t, hessian * pair_mask

    delta = torch.zeros_like(log_start)
    initial = cost(delta)
    value, damping = initial, 1e-3
    for _ in range(max_iterations):  # Levenberg-Marquardt-damped Newton steps in log focal
        gradient, hessian = gradient_hessian(delta)
        hessian = hessian + torch.diag(damping * hessian.diagonal().abs().clamp_min(1e-12) + (~free_t).double())
        step = -torch.linalg.solve(hessian, gradient)
        candidate = cost(delta + step)
        if candidate < value:
            delta, value, damping = delta + step, candidate, damping / 3
            if float(step.abs().max()) < 1e-6:
                break
        else:
            damping *= 4
    final = value
    focal = np.exp(np.log(start) + delta.detach().cpu().numpy() * free)
    plausible = (focal > 0.2 * start) & (focal < 10 * start) & np.isfinite(focal)
    decisive = final < (1.0 - min_improvement) * initial
    focal = np.where(plausible & decisive, focal, start)
    set_focal_lengths(graph, focal)
    logger.info("focal calibration: cost %.4g -> %.4g, focal %s -> %s", initial, final, start.round(1), focal.round(1))
    return focal


def estimate_relative_poses(graph: ViewGraph) -> None:
    """``cam_j_from_cam_i`` of every valid pair from its E / F / H and the current cameras (in place).

    Pairs whose decomposition fails (no cheirality-consistent pose) become invalid; panoramic
    pairs keep their rotation with a zero translation.
    """
    for p in tqdm(np.flatnonzero(graph.valid), desc="relative poses", unit="pair", leave=False):
        i, j = graph.pairs[p]
        geometry = graph.geometries[p]
        ok = pycolmap.estimate_two_view_geometry_pose(
            graph.cameras[graph.image_camera[i]], graph.keypoints[i],
            graph.cameras[graph.image_camera[j]], graph.keypoints[j], geometry)
        if not ok:
            graph.valid[p] = False
            continue
        pose = geometry.cam2_from_cam1
        graph.rotations[p] = pose.rotation.matrix()
        t = np.asarray(pose.translation, dtype=np.float64)
        norm = np.linalg.norm(t)
        graph.translations[p] = t / norm if norm > 0 else 0.0


def largest_component(num_nodes: int, pairs: np.ndarray, counted: int | None = None) -> np.ndarray:
    """(N,) bool: the nodes of the largest connected component of the graph with edges ``pairs``
    (E, 2), its size counted in linked nodes among the first ``counted`` (default: all; e.g. the
    images of an image-track graph whose tracks follow them)."""
    if len(pairs) == 0:
        return np.zeros(num_nodes, dtype=bool)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(num_nodes, num_nodes))
    _, labels = connected_components(graph, directed=False)
    linked = np.bincount(pairs.ravel(), minlength=num_nodes) > 0
    linked[num_nodes if counted is None else counted:] = False
    sizes = np.bincount(labels[linked], minlength=labels.max() + 1)
    return labels == int(np.argmax(sizes))


def restrict_to_largest_component(graph: ViewGraph) -> np.ndarray:
    """Invalidate pairs outside the largest component of the valid pairs; returns the (N,) image mask."""
    images = largest_component(graph.num_images, graph.pairs[graph.valid])
    graph.valid &= images[graph.pairs[:, 0]] & images[graph.pairs[:, 1]]
    return images


def fundamental_matrix(geometry: pycolmap.TwoViewGeometry) -> np.ndarray:
    """(3, 3) the stored F, zeros when the geometry has none (planar / panoramic pairs)."""
    F = np.asarray(geometry.F, dtype=np.float64)
    return F if F.shape == (3, 3) else np.zeros((3, 3))


def focal_lengths(graph: ViewGraph) -> np.ndarray:
    """(C,) the focal length of each camera (the mean of fx, fy where the model has two)."""
    return np.array([float(np.mean([camera.params[k] for k in camera.focal_length_idxs()])) for camera in graph.cameras])


def set_focal_lengths(graph: ViewGraph, focal: np.ndarray) -> None:
    """Write focal (C,) into every focal parameter (fx and fy alike) of the graph's cameras (in place)."""
    for camera, value in zip(graph.cameras, focal):
        params = np.array(camera.params)
        params[list(camera.focal_length_idxs())] = value
        camera.params = params


def _principal_point(camera: pycolmap.Camera) -> tuple[float, float]:
    return float(camera.principal_point_x), float(camera.principal_point_y)
