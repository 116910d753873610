"""MASt3R-SfM's sparse global alignment: cameras, intrinsics and anchor depths from canonical
pointmaps and anchor matches.

Inputs (:class:`AlignmentInput`) are per *anchor* - a keypoint of one image with the 3D point the
network predicts for it in that image's camera frame (its canonical pointmap, averaged over every
pair the image is in; see :mod:`recon.match.mast3r`) - plus matches between anchors of different
images with confidences. Images that share a camera share intrinsics.

Steps (after MASt3R-SfM, Duisburg et al. 2024, and the official ``sparse_ga.py``):

1. Focal initialisation per image from its canonical points with the principal point at the
   image centre (robust Weiszfeld fit of ``uv - pp = f * (x/z, y/z)``), averaged per camera.
2. A maximum spanning tree of the pair graph (pair score: summed match confidence) rooted at the
   best-connected image; cameras are a kinematic chain along it (each one relative to its parent).
   Unlike the reference (identity start), each relative pose starts from a confidence-weighted
   similarity Procrustes of the pair's matched canonical points.
3. Parameters: per camera log-focal and normalised principal point; per image relative rotation
   (quaternion), relative translation and log scale; per anchor a depth relative to the image's
   median. The reference's reparameterisation is kept: the camera pivots about the point at its
   median depth on the optical axis, the focal moves the camera along its axis (zoom at constant
   image-plane size), and the scene is rescaled by ``1 / min(scale)`` so it cannot collapse.
4. Coarse stage: 3D matching loss (matched anchors' 3D points should coincide), poses and scales
   only, ``lr1`` / ``niter1``, robust ``gamma_loss(1.1)``. Fine stage: 2D reprojection loss (each
   anchor's 3D point seen in the other image at the matched pixel), everything free, ``lr2`` /
   ``niter2``, ``gamma_loss(0.4)``. Adam (betas 0.9, 0.9), cosine learning-rate decay to 0, loss
   normalised by the summed confidences; pairs whose best match confidence is below
   ``matching_conf_thr`` are left out (the reference falls back to a pointmap regression loss for
   them; not implemented here).
5. Optional depth prior (recon's addition, ``depth_weight > 0`` with ``prior_depth`` given): in
   both stages, ``depth_weight`` times the mean of ``|log z - log z_prior - c|`` over the anchors
   with a prior, z the anchor's depth along its camera's axis and ``c`` the median log-ratio
   (closed form: the alignment's scale is arbitrary and the prior is metric, so only depth
   ratios are compared). A metric depth network (Depth Pro) thus ties each image's scale and its
   anchors' depths to one consistent depth map where the pointmaps disagree or the views
   triangulate poorly.

Fixes relative to the reference: shared intrinsics are one parameter tensor per camera, passed to
the optimiser once (the reference lists the shared tensor once per image, so Adam stepped it N
times per iteration); reprojections are not clipped to [-1000, 2000] pixels (that broke images
wider than 2000 pixels); everything is deterministic given the inputs (no randomness at all).

Pixels follow COLMAP's convention (centre of the top-left pixel at (0.5, 0.5)), so the principal
point of a centred camera is (W/2, H/2) and results go straight into a ``pycolmap.Reconstruction``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from .spanning_tree import max_spanning_tree


@dataclass
class AlignmentInput:
    """Everything the alignment reads; A anchors over N images, C cameras, M matches.

    keypoints (A, 2): anchor pixels (COLMAP convention); points (A, 3): canonical points in the
    anchor's camera frame (network units; any per-image scale); confidence (A,): canonical
    confidence (0 = no prediction); anchor_image (A,) long; image_size (N, 2) (width, height);
    image_camera (N,) long camera index; match0, match1 (M,) long anchor indices (different
    images); match_conf (M,) positive confidences; prior_depth (A,) optional metric depth prior
    of each anchor along its camera's optical axis (0 or NaN: none), read by the depth term.
    """

    keypoints: torch.Tensor
    points: torch.Tensor
    confidence: torch.Tensor
    anchor_image: torch.Tensor
    image_size: torch.Tensor
    image_camera: torch.Tensor
    match0: torch.Tensor
    match1: torch.Tensor
    match_conf: torch.Tensor
    prior_depth: torch.Tensor | None = None

    @property
    def num_images(self) -> int:
        return int(self.image_size.shape[0])

    @property
    def num_cameras(self) -> int:
        return int(self.image_camera.max()) + 1

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "AlignmentInput":
        moved = {k: None if v is None else v.to(device) for k, v in vars(self).items()}
        for key in ("keypoints", "points", "confidence", "image_size", "match_conf", "prior_depth"):
            if moved[key] is not None:
                moved[key] = moved[key].to(dtype)
        return AlignmentInput(**moved)


@dataclass
class AlignmentOptions:
    """Reference defaults (official ``sparse_scene_optimizer``)."""

    lr1: float = 0.2
    niter1: int = 500
    gamma1: float = 1.1
    lr2: float = 0.02
    niter2: int = 500
    gamma2: float = 0.4
    matching_conf_thr: float = 5.0
    opt_pp: bool = True
    opt_depth: bool = True
    focal_iterations: int = 10
    depth_weight: float = 0.0  # weight of the depth-prior term (step 5); 0: off
    progress: bool = True


@dataclass
class AlignmentResult:
    """focal (C,) pixels; principal_point (C, 2) pixels; rotation (N, 3, 3) and translation (N, 3)
    cam_from_world; points (A, 3) world anchors; tree_parent (N,) long (-1 at the root);
    used_matches (M,) bool; losses: final coarse and fine loss (with the depth term's final value
    when it is on)."""

    focal: torch.Tensor
    principal_point: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor
    points: torch.Tensor
    tree_parent: torch.Tensor
    used_matches: torch.Tensor
    losses: dict[str, float]


def gamma_loss(distance: torch.Tensor, gamma: float) -> torch.Tensor:
    """``(d + o)^gamma - o^gamma`` with ``o = (1/gamma)^(1/(gamma-1))``: slope 1 at d = 0,
    robust (concave) for gamma < 1 and mildly convex for gamma > 1 (reference ``gamma_loss``)."""
    if gamma == 1:
        return distance
    offset = (1 / gamma) ** (1 / (gamma - 1))
    return (distance + offset) ** gamma - offset ** gamma


def cosine_schedule(alpha: float, lr_base: float, lr_end: float = 0.0) -> float:
    """Learning rate at progress ``alpha`` in [0, 1]: cosine decay from lr_base to lr_end."""
    return lr_end + (lr_base - lr_end) * (1 + math.cos(alpha * math.pi)) / 2


def segment_sum(values: torch.Tensor, index: torch.Tensor, count: int) -> torch.Tensor:
    """Sum of ``values`` (A, ...) per segment ``index`` (A,) -> (count, ...)."""
    return values.new_zeros((count, *values.shape[1:])).index_add_(0, index, values)


def estimate_focals(data: AlignmentInput, iterations: int = 10) -> torch.Tensor:
    """(N,) focal per image with the principal point at the image centre: IRLS (Weiszfeld) for
    ``min_f sum |uv - f a|`` with ``a = (x/z, y/z)`` over anchors with a prediction in front of
    the camera, started from the least-squares solution."""
    n = data.num_images
    valid = (data.confidence > 0) & (data.points[:, 2] > 0)
    img = data.anchor_image[valid]
    uv = data.keypoints[valid] - data.image_size[img] / 2
    a = data.points[valid, :2] / data.points[valid, 2:3]
    weight = torch.ones_like(uv[:, 0])
    for _ in range(iterations + 1):
        focal = segment_sum(weight * (uv * a).sum(-1), img, n) / segment_sum(weight * (a * a).sum(-1), img, n).clamp(min=1e-12)
        residual = (uv - focal[img, None] * a).norm(dim=-1)
        weight = 1 / residual.clamp(min=1e-8)
    return focal


def pair_scores(data: AlignmentInput, used: torch.Tensor) -> np.ndarray:
    """(N, N) symmetric summed confidence of the used matches of each image pair."""
    n = data.num_images
    i, j = data.anchor_image[data.match0[used]], data.anchor_image[data.match1[used]]
    scores = torch.zeros(n * n, dtype=torch.float64, device=i.device)
    scores.index_add_(0, i * n + j, data.match_conf[used].double())
    scores = scores.view(n, n).cpu().numpy()
    return scores + scores.T


def spanning_tree(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximum spanning tree of the pair graph: (order, parent) - images in breadth-first order
    from the best-connected image, and each image's parent (-1 for the root)."""
    n = scores.shape[0]
    components, labels = connected_components(coo_matrix(scores > 0), directed=False)
    if components > 1:
        sizes = np.bincount(labels)
        raise RuntimeError(f"sparse alignment: the matched images form {components} unconnected groups "
                           f"(sizes {sorted(sizes.tolist(), reverse=True)}); every image needs a chain of "
                           "confident matches to the others (a lower matching_conf_thr admits less "
                           "confident pairs)")
    if n == 1:
        return np.zeros(1, np.int64), np.full(1, -1)
    pairs = np.argwhere(np.triu(scores, 1) > 0)
    return max_spanning_tree(pairs, scores[pairs[:, 0], pairs[:, 1]], n, root=int(np.argmax(scores.sum(1))))


def similarity_procrustes(source: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, group: torch.Tensor,
                          count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted Umeyama per group: (s, R, t) minimising ``sum w |target - (s R source + t)|^2`` over
    the correspondences of each group, all groups at once.

    source, target: (M, 3); weight: (M,); group: (M,) long in [0, count). Returns scale (count,),
    rotation (count, 3, 3) and translation (count, 3); the SVD and the scale run in float64.
    """
    w = weight / segment_sum(weight, group, count)[group]
    mu_s, mu_t = segment_sum(w[:, None] * source, group, count), segment_sum(w[:, None] * target, group, count)
    cs, ct = source - mu_s[group], target - mu_t[group]
    cov = segment_sum((ct * w[:, None])[:, :, None] * cs[:, None, :], group, count)
    u, sigma, vt = torch.linalg.svd(cov.double())
    d = torch.ones(count, 3, dtype=torch.float64, device=source.device)
    d[:, 2] = torch.sign(torch.det(u @ vt))
    rot = (u * d[:, None, :]) @ vt
    scale = (sigma * d).sum(-1) / segment_sum(w.double() * (cs.double() ** 2).sum(-1), group, count)
    rot, scale = rot.to(source.dtype), scale.to(source.dtype)
    return scale, rot, mu_t - scale[:, None] * (rot @ mu_s[:, :, None])[..., 0]


def chain_poses(data: AlignmentInput, used: torch.Tensor, order: np.ndarray, parent: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Initial world poses along the tree: per image scale s (N,), world_from_cam rotation (N, 3, 3)
    and camera centre (N, 3), with ``world = R (s X) + c`` for its canonical points X. The root
    is the world frame; each child is its parent's frame times the Procrustes of their matches.

    Each used match is assigned once to the tree edge it lies on (keyed by the edge's child), all
    edges' similarities are solved in one batch, and only the composition walks the tree: linear
    in the number of matches, not one scan of all matches per edge.
    """
    n, device, dtype = data.num_images, data.points.device, data.points.dtype
    parent_of = torch.as_tensor(parent, device=device)
    img0, img1 = data.anchor_image[data.match0], data.anchor_image[data.match1]
    forward = used & (parent_of[img1] == img0)  # image 0 is the parent of image 1
    backward = used & (parent_of[img0] == img1)
    child = torch.cat((img1[forward], img0[backward]))
    child_anchor = torch.cat((data.match1[forward], data.match0[backward]))
    parent_anchor = torch.cat((data.match0[forward], data.match1[backward]))
    conf = torch.cat((data.match_conf[forward], data.match_conf[backward]))
    # child frame -> parent frame, per edge
    edge_scale, edge_rotation, edge_shift = similarity_procrustes(data.points[child_anchor], data.points[parent_anchor],
                                                                  conf, child, n)
    scale = torch.ones(n, device=device, dtype=dtype)
    rotation = torch.eye(3, device=device, dtype=dtype).repeat(n, 1, 1)
    centre = torch.zeros(n, 3, device=device, dtype=dtype)
    for c in order[1:]:  # breadth-first: the parent's pose is known
        p = int(parent[c])
        scale[c] = scale[p] * edge_scale[c]
        rotation[c] = rotation[p] @ edge_rotation[c]
        centre[c] = centre[p] + scale[p] * rotation[p] @ edge_shift[c]
    return scale, rotation, centre


def median_per_image(values: torch.Tensor, index: torch.Tensor, count: int) -> torch.Tensor:
    """(count,) median of ``values`` per segment (sorted once; segments' lower medians)."""
    by_value = torch.argsort(values, stable=True)
    order = by_value[torch.argsort(index[by_value], stable=True)]  # by segment, then by value
    sorted_index = index[order]
    counts = torch.bincount(sorted_index, minlength=count)
    starts = torch.cumsum(counts, 0) - counts
    return values[order][(starts + (counts - 1) // 2).clamp(min=0)]


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions (x, y, z, w), normalised here -> (..., 3, 3) rotation matrices."""
    x, y, z, w = F.normalize(q, dim=-1).unbind(-1)
    return torch.stack((
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)), -1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(m: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotations -> (..., 4) unit quaternions (x, y, z, w), numerically stable branch."""
    r = m.reshape(-1, 3, 3).double()
    trace = r.diagonal(dim1=1, dim2=2).sum(-1)
    diag = r.diagonal(dim1=1, dim2=2)
    choice = torch.cat((diag, trace[:, None]), -1).argmax(-1)
    # four formulas; each row takes the one with the largest pivot
    pivots = torch.stack((
        torch.stack((1 + r[:, 0, 0] - r[:, 1, 1] - r[:, 2, 2], r[:, 0, 1] + r[:, 1, 0], r[:, 0, 2] + r[:, 2, 0], r[:, 2, 1] - r[:, 1, 2]), -1),
        torch.stack((r[:, 0, 1] + r[:, 1, 0], 1 - r[:, 0, 0] + r[:, 1, 1] - r[:, 2, 2], r[:, 1, 2] + r[:, 2, 1], r[:, 0, 2] - r[:, 2, 0]), -1),
        torch.stack((r[:, 0, 2] + r[:, 2, 0], r[:, 1, 2] + r[:, 2, 1], 1 - r[:, 0, 0] - r[:, 1, 1] + r[:, 2, 2], r[:, 1, 0] - r[:, 0, 1]), -1),
        torch.stack((r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1], 1 + trace), -1)), 1)
    q = F.normalize(pivots[torch.arange(r.shape[0]), choice], dim=-1)
    return q.to(m.dtype).reshape(*m.shape[:-2], 4)


class SparseScene(torch.nn.Module):
    """The alignment's parameters and the map from them to intrinsics, poses and anchor points."""

    def __init__(self, data: AlignmentInput, used: torch.Tensor, options: AlignmentOptions) -> None:
        super().__init__()
        self.data = data
        n, c = data.num_images, data.num_cameras
        device, dtype = data.points.device, data.points.dtype
        # 1. focals per image, averaged per camera weighted by mean canonical confidence
        diag = data.image_size.norm(dim=-1)
        self.register_buffer("min_focal", 0.25 * diag)  # the reference's plausible range
        self.register_buffer("max_focal", 10 * diag)
        base = estimate_focals(data, options.focal_iterations).nan_to_num(0).clamp(min=self.min_focal, max=self.max_focal)
        mean_conf = segment_sum(data.confidence, data.anchor_image, n) / torch.bincount(data.anchor_image, minlength=n).clamp(min=1)
        camera_focal = segment_sum(mean_conf * base, data.image_camera, c) / segment_sum(mean_conf, data.image_camera, c).clamp(min=1e-12)
        self.register_buffer("base_focal", camera_focal[data.image_camera])
        # 2. kinematic chain
        order, parent = spanning_tree(pair_scores(data, used))
        self.parent = torch.as_tensor(parent, device=device)
        self.levels = _tree_levels(order, parent, device)
        scale, rotation, centre = chain_poses(data, used, order, parent)
        rel_scale = scale / scale.min()
        # 3. depths relative to each image's median
        z = data.points[:, 2].clamp(min=1e-6)
        self.register_buffer("median_depth", median_per_image(z, data.anchor_image, n))
        core = z / self.median_depth[data.anchor_image]
        # absolute frames -> tree-relative parameters (pivot at the median depth on the axis)
        centre = centre / scale.min()
        z_cam = rel_scale * self.median_depth
        pivot = centre + rotation[:, :, 2] * z_cam[:, None]
        cam2w = _homogeneous(rotation, pivot)
        rel = cam2w.clone()
        has_parent = self.parent >= 0
        rel[has_parent] = torch.linalg.inv(cam2w[self.parent[has_parent]]) @ cam2w[has_parent]
        self.log_focal = torch.nn.Parameter(camera_focal.log())
        self.pp = torch.nn.Parameter(torch.full((c, 2), 0.5, device=device, dtype=dtype))
        self.quat = torch.nn.Parameter(matrix_to_quaternion(rel[:, :3, :3]))
        self.trans = torch.nn.Parameter(rel[:, :3, 3].clone())
        self.log_size = torch.nn.Parameter(rel_scale.log())
        self.core_depth = torch.nn.Parameter(core)

    def intrinsics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image focal (N,) and principal point (N, 2), pixels."""
        cam = self.data.image_camera
        focal = self.log_focal.exp()[cam].clamp(min=self.min_focal, max=self.max_focal)
        return focal, self.pp[cam] * self.data.image_size

    def forward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """focal (N,), pp (N, 2), world_from_cam rotation (N, 3, 3) and translation (N, 3), anchor
        points (A, 3) in the world and their depths (A,) along their cameras' axes."""
        data = self.data
        focal, pp = self.intrinsics()
        size = self.log_size.exp()
        global_scaling = 1 / size.min()
        z_cam = size * self.median_depth * focal / self.base_focal
        rel = _homogeneous(quaternion_to_matrix(self.quat), self.trans)
        cam2w = rel
        for nodes, parents in self.levels:
            cam2w = cam2w.index_copy(0, nodes, cam2w[parents] @ rel[nodes])
        rotation = cam2w[:, :3, :3]
        offset = z_cam[:, None] * torch.cat(((data.image_size / 2 - pp) / focal[:, None], torch.ones_like(focal)[:, None]), -1)
        translation = global_scaling * (cam2w[:, :3, 3] - (rotation @ offset[..., None])[..., 0])
        img = data.anchor_image
        depth = global_scaling * (z_cam[img] + (self.core_depth - 1) * self.median_depth[img] * size[img])
        rays = torch.cat(((data.keypoints - pp[img]) / focal[img, None], torch.ones_like(depth)[:, None]), -1)
        points = (rotation[img] @ (rays * depth[:, None])[..., None])[..., 0] + translation[img]
        return focal, pp, rotation, translation, points, depth


def _homogeneous(rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    top = torch.cat((rotation, translation[..., None]), -1)
    bottom = torch.zeros_like(top[:, :1])
    bottom[..., 3] = 1
    return torch.cat((top, bottom), 1)


def _tree_levels(order: np.ndarray, parent: np.ndarray, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Non-root images grouped by depth in the tree: composing level by level builds every
    camera from its parent in as many steps as the tree is deep."""
    depth = np.zeros(len(parent), np.int64)
    for node in order[1:]:
        depth[node] = depth[parent[node]] + 1
    return [(torch.as_tensor(np.flatnonzero(depth == d), device=device),
             torch.as_tensor(parent[depth == d], device=device)) for d in range(1, int(depth.max(initial=0)) + 1)]


def project(rotation: torch.Tensor, translation: torch.Tensor, focal: torch.Tensor, pp: torch.Tensor,
            points: torch.Tensor) -> torch.Tensor:
    """World points (M, 3) seen by cameras given per point (world_from_cam R, t, focal, pp) -> (M, 2)
    pixels. Depth is floored at 1e-6 (points behind the camera get huge residuals, which the robust
    loss saturates); pixels are not clipped."""
    local = ((points - translation)[:, None, :] @ rotation)[:, 0]
    z = local[:, 2:3].clamp(min=1e-6)
    return focal[:, None] * local[:, :2] / z + pp


def sparse_global_alignment(data: AlignmentInput, options: AlignmentOptions | None = None) -> AlignmentResult:
    """Run the whole alignment (see the module docstring) on ``data``'s device and dtype."""
    options = options or AlignmentOptions()
    used = _confident_pairs(data, options.matching_conf_thr)
    scene = SparseScene(data, used, options)
    m0, m1, conf = data.match0[used], data.match1[used], data.match_conf[used]
    img0, img1 = data.anchor_image[m0], data.anchor_image[m1]

    def loss_3d() -> torch.Tensor:
        _, _, _, _, points, depth = scene()
        loss = conf @ gamma_loss((points[m0] - points[m1]).norm(dim=-1), options.gamma1) / conf.sum()
        return loss + depth_term(depth)

    def loss_2d() -> torch.Tensor:
        focal, pp, rotation, translation, points, depth = scene()
        into0 = project(rotation[img0], translation[img0], focal[img0], pp[img0], points[m1])
        into1 = project(rotation[img1], translation[img1], focal[img1], pp[img1], points[m0])
        residual = torch.cat(((into0 - data.keypoints[m0]).norm(dim=-1), (into1 - data.keypoints[m1]).norm(dim=-1)))
        loss = torch.cat((conf, conf)) @ gamma_loss(residual, options.gamma2) / (2 * conf.sum())
        return loss + depth_term(depth)

    depth_term = _depth_term(data, options.depth_weight)

    losses = {}
    coarse = [scene.quat, scene.trans, scene.log_size]
    losses["coarse"] = _optimise(scene, coarse, loss_3d, options.lr1, options.niter1, "coarse (3D)", options.progress)
    fine = coarse + [scene.log_focal] + ([scene.pp] if options.opt_pp else []) + ([scene.core_depth] if options.opt_depth else [])
    losses["fine"] = _optimise(scene, fine, loss_2d, options.lr2, options.niter2, "fine (2D)", options.progress)
    with torch.no_grad():
        focal, pp, rotation, translation, points, depth = scene()
        if options.depth_weight > 0:
            losses["depth"] = float(depth_term(depth)) / options.depth_weight
        camera_focal = focal.new_zeros(data.num_cameras).index_copy_(0, data.image_camera, focal)
        camera_pp = pp.new_zeros(data.num_cameras, 2).index_copy_(0, data.image_camera, pp)
        cam_rotation = rotation.transpose(1, 2)
        cam_translation = -(cam_rotation @ translation[..., None])[..., 0]
    return AlignmentResult(camera_focal, camera_pp, cam_rotation, cam_translation, points, scene.parent, used, losses)


def depth_prior_loss(depth: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """Mean ``|log depth - log_prior - c|`` (depth (K,) > 0, log_prior (K,)), c the median of
    ``log depth - log_prior``: the best common log-scale between an arbitrary-scale model and a
    metric prior in closed form (the median minimises the L1 sum, so holding it constant in the
    gradient is exact at the optimum). L1 in log space: relative depth errors, symmetric, and a
    few wrong prior depths pull only linearly."""
    ratio = depth.clamp(min=1e-12).log() - log_prior
    return (ratio - ratio.detach().median()).abs().mean()


def _depth_term(data: AlignmentInput, weight: float):
    """``depth (A,) -> weight * depth_prior_loss`` over the anchors with a usable prior depth, or
    a zero term when the weight is 0."""
    if weight <= 0:
        return lambda depth: depth.new_zeros(())
    if data.prior_depth is None:
        raise ValueError("sparse alignment: depth_weight > 0 needs AlignmentInput.prior_depth")
    known = torch.isfinite(data.prior_depth) & (data.prior_depth > 0) & (data.confidence > 0)
    if not bool(known.any()):
        raise ValueError("sparse alignment: no anchor has a usable prior depth")
    log_prior = data.prior_depth[known].log()
    return lambda depth: weight * depth_prior_loss(depth[known], log_prior)


def _confident_pairs(data: AlignmentInput, threshold: float) -> torch.Tensor:
    """(M,) mask of matches in pairs whose best match confidence exceeds ``threshold``."""
    n = data.num_images
    key = data.anchor_image[data.match0] * n + data.anchor_image[data.match1]
    key = torch.minimum(key, (key % n) * n + key // n)  # unordered pair
    best = torch.zeros(n * n, dtype=data.match_conf.dtype, device=key.device).scatter_reduce(
        0, key, data.match_conf, "amax")
    return (best[key] > threshold) & (data.match_conf > 0)


def _optimise(scene: SparseScene, params: list[torch.nn.Parameter], loss_fn, lr_base: float, niter: int,
              desc: str, progress: bool) -> float:
    """Adam with the reference's betas and cosine schedule on ``params`` (each listed once);
    quaternions are renormalised after every step. Returns the last loss."""
    for p in scene.parameters():
        p.requires_grad_(any(p is q for q in params))
    optimizer = torch.optim.Adam(params, lr=lr_base, betas=(0.9, 0.9), weight_decay=0)
    loss = torch.zeros(())
    for iteration in tqdm(range(niter), desc=f"sparse alignment {desc}", disable=not progress, leave=False):
        for group in optimizer.param_groups:
            group["lr"] = cosine_schedule(iteration / niter, lr_base)
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            scene.quat /= scene.quat.norm(dim=-1, keepdim=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"sparse alignment {desc}: the loss became {float(loss)}")
    return float(loss.detach())
