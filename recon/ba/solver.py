"""Levenberg-Marquardt bundle adjustment with the Schur complement on the points.

One LM iteration (float64 throughout):

1. :func:`linearize` evaluates residuals and Jacobians of every observation at once (analytic, or
   batched forward-mode autodiff with ``torch.func``), applies the robust loss as Ceres does
   (scale residual and Jacobian by ``sqrt(rho')``) and zeroes the columns of constant parameters.
2. The normal equations ``(J^T J + D / mu) delta = -J^T r`` (``D = diag(J^T J)`` clamped to
   [1e-6, 1e32], ``mu`` the trust-region radius, as in Ceres' LevenbergMarquardtStrategy) are
   reduced to the camera side by eliminating the 3x3 point blocks.
3. The reduced camera system is either assembled densely from per-observation and per-point-pair
   blocks and solved by Cholesky (small camera counts), or solved matrix-free by conjugate
   gradients on the implicit Schur complement with a block-Jacobi preconditioner (large ones).
4. The step is accepted when the actual/predicted cost-decrease ratio exceeds
   ``min_relative_decrease``; the radius is updated with Ceres' rule
   (``mu /= max(1/3, 1 - (2 rho - 1)^3)`` on success, ``mu /= nu; nu *= 2`` on failure).
   Termination follows Ceres: parameter, function and gradient tolerance, iteration limit, and a
   minimum radius.

Parameter layout on the camera side ("full" layout, length ``6 I + Ke C``): the pose blocks of all
images ([rotation (so(3), left-multiplied: R <- Exp(w) R), translation]) followed by the
intrinsics blocks of all cameras, keeping only the ``Ke`` intrinsics columns that are free for at
least one camera. Constant entries stay in the layout with zero Jacobian columns and a unit
diagonal, so their update is exactly zero and they remain bit-identical.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from . import losses
from .cameras import MIN_DEPTH, model_groups, project, project_groups
from .geometry import so3_exp
from ..heap import reuse_freed_memory
from .problem import Problem

Tensor = torch.Tensor


@dataclass
class BAOptions:
    """Options of :func:`solve` and :func:`recon.ba.adjust`.

    Solver (Ceres' names and defaults unless noted):
        loss, loss_scale: ``trivial | huber | soft_l1 | cauchy`` and Ceres' ``a`` (COLMAP's
            ``loss_function_scale``).
        max_num_iterations, function_tolerance, gradient_tolerance, parameter_tolerance,
        initial_trust_region_radius, max_trust_region_radius, min_trust_region_radius,
        min_relative_decrease, min_lm_diagonal, max_lm_diagonal.
        linear_solver: ``auto | dense | pcg``; ``auto`` takes dense Cholesky when the image-block
            system has at most ``dense_max_size`` rows and the point-pair blocks fit the memory
            budget ``dense_max_pair_entries``, else PCG.
        pcg_min_iterations, pcg_max_iterations, pcg_eta: CG stops with Ceres' truncated-Newton
            rule ``i (Q_i - Q_{i-1}) >= eta Q_i`` (Q the quadratic model, Ceres' ``eta``).
        jacobian: ``analytic | autodiff`` (both float64; analytic is the measured faster one).
        schur_float32: store the per-pair factors of the dense Schur assembly in float32 (GEMMs in
            float32, block sums in float64); everything else stays float64.
        device: ``auto | cpu | cuda``.
        num_threads: CPU threads for torch during the solve (restored afterwards); None keeps
            torch's setting. On a busy machine 1 thread is often fastest: every torch op is a
            parallel region that waits for all its threads to be scheduled.
        progress: show a tqdm bar over LM iterations.
    Which parameters move (used by :func:`recon.ba.adjust`; a :class:`Problem` carries its own
    masks): refine_focal_length, refine_principal_point, refine_extra_params, refine_poses,
        refine_points, constant_image_ids, constant_camera_ids, constant_point3D_ids, gauge
        (``two_cams``: COLMAP's TWO_CAMS_FROM_WORLD; ``none``).
    """

    loss: str = "trivial"
    loss_scale: float = 1.0
    max_num_iterations: int = 100
    function_tolerance: float = 1e-6
    gradient_tolerance: float = 1e-10
    parameter_tolerance: float = 1e-8
    initial_trust_region_radius: float = 1e4
    max_trust_region_radius: float = 1e16
    min_trust_region_radius: float = 1e-32
    min_relative_decrease: float = 1e-3
    min_lm_diagonal: float = 1e-6
    max_lm_diagonal: float = 1e32
    linear_solver: str = "auto"
    dense_max_size: int = 3000
    dense_max_pair_entries: int = 60_000_000
    pcg_min_iterations: int = 1
    pcg_max_iterations: int = 200
    pcg_eta: float = 0.1
    jacobian: str = "analytic"
    schur_float32: bool = False
    device: str = "auto"
    num_threads: int | None = None
    progress: bool = False
    refine_focal_length: bool = True
    refine_principal_point: bool = False
    refine_extra_params: bool = True
    refine_poses: bool = True
    refine_points: bool = True
    constant_image_ids: tuple = ()
    constant_camera_ids: tuple = ()
    constant_point3D_ids: tuple = ()
    gauge: str = "two_cams"

    def __post_init__(self) -> None:
        if self.loss not in losses.LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {losses.LOSSES}")
        if self.linear_solver not in ("auto", "dense", "pcg"):
            raise ValueError(f"linear_solver must be auto, dense or pcg, not {self.linear_solver!r}")
        if self.jacobian not in ("analytic", "autodiff"):
            raise ValueError(f"jacobian must be analytic or autodiff, not {self.jacobian!r}")


@dataclass
class Summary:
    """What a solve did, in Ceres' terms. Costs are ``0.5 * sum rho(||r||^2)``."""

    initial_cost: float
    final_cost: float
    num_iterations: int
    num_successful_steps: int
    num_unsuccessful_steps: int
    termination: str  # CONVERGENCE | NO_CONVERGENCE | FAILURE
    message: str
    linear_solver: str
    jacobian: str
    device: str
    num_observations: int
    num_residuals: int
    total_time: float
    iteration_times: list[float] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)
    pcg_iterations: list[int] = field(default_factory=list)

    @property
    def time_per_iteration(self) -> float:
        return sum(self.iteration_times) / max(len(self.iteration_times), 1)

    def brief_report(self) -> str:
        return (f"recon.ba {self.linear_solver}/{self.jacobian} on {self.device}: {self.num_residuals} residuals, "
                f"cost {self.initial_cost:.6e} -> {self.final_cost:.6e}, {self.num_iterations} iterations "
                f"({self.num_successful_steps} successful), {self.total_time:.3f} s, {self.termination}: {self.message}")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


CHUNK = 32  # observations (or point pairs) per batched GEMM in the block accumulations


def chunk_groups(items: Tensor, keys: Tensor, size: int, pad: int) -> tuple[Tensor, Tensor]:
    """Split ``items`` (sorted by ``keys``) into fixed-size chunks that never mix keys.

    Returns (num_chunks * size,) item indices, padded with ``pad`` (the index of an all-zero row),
    and the key of each chunk. Accumulating a block per key as a batched GEMM over chunks is ~10x
    faster on CPU than a batched GEMM over single observations.
    """
    dev = items.device
    uniq, counts = torch.unique_consecutive(keys, return_counts=True)
    n_chunks = (counts + size - 1) // size
    first_item = torch.cumsum(counts, 0) - counts
    chunk_key = torch.repeat_interleave(uniq, n_chunks)
    chunk_group = torch.repeat_interleave(torch.arange(uniq.numel(), device=dev), n_chunks)
    chunk_in_group = torch.arange(int(n_chunks.sum()), device=dev) - torch.repeat_interleave(torch.cumsum(n_chunks, 0) - n_chunks, n_chunks)
    pos = chunk_in_group[:, None] * size + torch.arange(size, device=dev)  # (chunks, size) position in group
    valid = pos < counts[chunk_group][:, None]
    src = (first_item[chunk_group][:, None] + pos).clamp_max(items.numel() - 1)
    idx = torch.where(valid, items[src], torch.full_like(src, pad))
    return idx.reshape(-1), chunk_key


def chunk_gram(a: Tensor, b: Tensor, idx_a: Tensor, idx_b: Tensor, size: int) -> Tensor:
    """Per chunk, sum over its rows i of ``a[idx_a[i]]^T @ b[idx_b[i]]``.

    a, b: (N+1, k, m) with row N zero (the padding target). Rows are stored (k, m) so a chunk's
    gathered rows are already one contiguous (size*k, m) matrix: no permute copy. -> (chunks, m, m).
    """
    k, m = a.shape[1], a.shape[2]
    n = idx_a.numel() // size
    ac = rows(a, idx_a).view(n, size * k, m)
    bc = rows(b, idx_b).view(n, size * k, m)
    return ac.transpose(1, 2) @ bc


def rows(t: Tensor, idx: Tensor) -> Tensor:
    """t[idx] along dim 0 through a 2-D view (CPU index_select on 3-D tensors is ~8x slower)."""
    return t.reshape(t.shape[0], -1).index_select(0, idx).view(idx.shape[0], *t.shape[1:])


def add_rows(out: Tensor, idx: Tensor, src: Tensor) -> Tensor:
    """out[idx] += src (accumulating duplicates) along dim 0, through 2-D views; returns out."""
    out.view(out.shape[0], -1).index_add_(0, idx, src.reshape(src.shape[0], -1))
    return out


def _pad_row(t: Tensor) -> Tensor:
    return torch.cat([t, t.new_zeros(1, *t.shape[1:])])


def mv(a: Tensor, x: Tensor) -> Tensor:
    """Batched matrix-vector product (..., r, c) x (..., c) -> (..., r).

    As a batched matmul: on CPU (torch 2.13, one thread) it is 3-5x faster than the broadcast
    product summed over the last axis for 3x3 and 2x8 blocks (that reduction over a tiny axis is
    the slow part), measured on 60,000 blocks.
    """
    return (a @ x[..., None])[..., 0]


def mtv(a: Tensor, x: Tensor) -> Tensor:
    """Batched transposed product a^T x: (..., r, c), (..., r) -> (..., c) (batched matmul, see :func:`mv`)."""
    return (x[..., None, :] @ a)[..., 0, :]


def outer_sum(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """a^T b for (..., k, r), (..., k, c) with small k, as k broadcast products: (..., r, c).

    ``out`` (optional) receives the result in place (e.g. the first rows of a zero-padded buffer).
    """
    out = torch.mul(a[..., 0, :, None], b[..., 0, None, :], out=out)
    for i in range(1, a.shape[-2]):
        out.addcmul_(a[..., i, :, None], b[..., i, None, :])
    return out


def padded(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A zero buffer with one extra leading row: rows [:-1] take data, row -1 is the padding target."""
    return torch.zeros((shape[0] + 1, *shape[1:]), dtype=like.dtype, device=like.device)


class Structure:
    """Index bookkeeping fixed for a problem: observation order, free columns, point pairs.

    Observations are sorted by point so each point's track is contiguous; the pairs (a <= b) of
    observations of the same point give the blocks of the Schur complement (dense solver).
    """

    def __init__(self, problem: Problem, options: BAOptions):
        dev = problem.device
        order = torch.argsort(problem.obs_point, stable=True)
        self.obs_img = problem.obs_image[order]
        self.obs_pt = problem.obs_point[order]
        self.obs_xy = problem.obs_xy[order]
        self.image_camera = problem.image_camera
        self.obs_cam = problem.image_camera[self.obs_img]
        self.num_images, self.num_cameras, self.num_points = problem.num_images, problem.num_cameras, problem.num_points
        self.num_obs = problem.num_observations
        free_intr = ~problem.camera_constant
        self.kcols = free_intr.any(0).nonzero()[:, 0]  # intrinsics columns free somewhere
        self.ke = int(self.kcols.numel())
        self.m = 6 + self.ke
        self.pose_free = (~problem.pose_constant).to(torch.float64)  # (I, 6)
        self.intr_free = free_intr[:, self.kcols].to(torch.float64)  # (C, Ke)
        self.point_free = (~problem.point_constant).to(torch.float64)  # (P,)
        self.obs_free = torch.cat([self.pose_free[self.obs_img], self.intr_free[self.obs_cam]], -1)  # (M, m)
        self.obs_point_free = self.point_free[self.obs_pt]  # (M,)
        self.full_free = torch.cat([self.pose_free.reshape(-1), self.intr_free.reshape(-1)])
        self.n_full = self.full_free.numel()
        self.groups = model_groups(problem.camera_models, self.obs_cam)
        # Point pairs a < b within each track (observations are sorted by point).
        counts = torch.bincount(self.obs_pt, minlength=self.num_points)
        starts = torch.cumsum(counts, 0) - counts
        ends = (starts + counts)[self.obs_pt]  # (M,) one past the last observation of the same point
        idx = torch.arange(self.num_obs, device=dev)
        n_after = ends - idx - 1
        self.num_pairs = int(n_after.sum())
        self.pair_entries = self.num_pairs * self.m * self.m
        # ext layout: one m-block per image ([pose, intrinsics of its camera]); maps to the full layout.
        img = torch.arange(self.num_images, device=dev)
        pose_slots = img[:, None] * 6 + torch.arange(6, device=dev)
        intr_slots = 6 * self.num_images + problem.image_camera[:, None] * self.ke + torch.arange(self.ke, device=dev)
        self.ext_to_full = torch.cat([pose_slots, intr_slots], -1).reshape(-1)  # (I*m,)
        self.solver = self._choose_solver(options)
        # Observations grouped by image, in chunks: per-image diagonal blocks of the Schur complement.
        by_image = torch.argsort(self.obs_img, stable=True)
        self.diag_idx, self.diag_chunk_image = chunk_groups(by_image, self.obs_img[by_image], CHUNK, self.num_obs)
        if self.solver == "dense":
            # Pairs a <= b of observations of one point, keyed by image block; the a == b pairs
            # (the per-observation Schur terms) get keys I*I + image so they are not mirrored.
            pair_a = torch.repeat_interleave(idx, n_after + 1)
            offsets = torch.arange(pair_a.numel(), device=dev) - torch.repeat_interleave(torch.cumsum(n_after + 1, 0) - n_after - 1, n_after + 1)
            pair_b = pair_a + offsets
            n_img = self.num_images
            block = torch.where(pair_a == pair_b, n_img * n_img + self.obs_img[pair_a],
                                self.obs_img[pair_a] * n_img + self.obs_img[pair_b])
            by_block = torch.argsort(block, stable=True)
            self.pair_a_idx, self.pair_chunk_block = chunk_groups(pair_a[by_block], block[by_block], CHUNK, self.num_obs)
            self.pair_b_idx, _ = chunk_groups(pair_b[by_block], block[by_block], CHUNK, self.num_obs)

    def _choose_solver(self, options: BAOptions) -> str:
        if options.linear_solver != "auto":
            return options.linear_solver
        small = self.num_images * self.m <= options.dense_max_size
        return "dense" if small and self.pair_entries <= options.dense_max_pair_entries else "pcg"

    def gather_cam(self, pose: Tensor, intr: Tensor) -> Tensor:
        """Full-layout camera-side vectors (I, 6) + (C, Ke) -> per-observation (M, m)."""
        return torch.cat([rows(pose, self.obs_img), rows(intr, self.obs_cam)], -1)

    def scatter_cam(self, per_obs: Tensor) -> Tensor:
        """Per-observation (M, m) -> summed full-layout vector (6 I + Ke C,)."""
        pose = torch.zeros(self.num_images, 6, dtype=per_obs.dtype, device=per_obs.device)
        pose.index_add_(0, self.obs_img, per_obs[:, :6])
        intr = torch.zeros(self.num_cameras, self.ke, dtype=per_obs.dtype, device=per_obs.device)
        intr.index_add_(0, self.obs_cam, per_obs[:, 6:])
        return torch.cat([pose.reshape(-1), intr.reshape(-1)])

    def split_full(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[:6 * self.num_images].reshape(self.num_images, 6), x[6 * self.num_images:].reshape(self.num_cameras, self.ke)


@dataclass
class State:
    """Parameters being optimised (float64): rotations (I,3,3), translations (I,3), camera params (C,K), points (P,3)."""

    rotations: Tensor
    translations: Tensor
    camera_params: Tensor
    points: Tensor

    def retract(self, st: Structure, delta_cam: Tensor, delta_pts: Tensor) -> "State":
        """x (+) delta: R <- Exp(w) R, t += dt, free intrinsics += d, points += dX."""
        d_pose, d_intr = st.split_full(delta_cam)
        params = self.camera_params.clone()
        params[:, st.kcols] += d_intr
        return State(so3_exp(d_pose[:, :3]) @ self.rotations, self.translations + d_pose[:, 3:], params,
                     self.points + delta_pts)

    def norm(self) -> float:
        """Norm of the ambient parameter vector (unit quaternions count 1 each), Ceres' ``x_norm``."""
        sq = self.rotations.shape[0] + (self.translations ** 2).sum() + (self.camera_params ** 2).sum() + (self.points ** 2).sum()
        return math.sqrt(float(sq))


@dataclass
class Linearization:
    """Robust-corrected residuals (M, 2) and Jacobians: camera side (M, 2, m), point (M, 2, 3)."""

    cost: float
    residuals: Tensor
    jac_cam: Tensor | None = None
    jac_pts: Tensor | None = None


def _camera_frame(st: Structure, x: State) -> tuple[Tensor, Tensor]:
    """Rotated points R X (M, 3) and camera-frame points R X + t (M, 3)."""
    rx = mv(rows(x.rotations, st.obs_img), rows(x.points, st.obs_pt))
    return rx, rx + rows(x.translations, st.obs_img)


def _analytic_jacobians(st: Structure, x: State):
    """Residuals and analytic Jacobians of every observation, one batched call per camera model."""
    rx, pc = _camera_frame(st, x)
    xy, j_pc, j_par = project_groups(st.groups, rows(x.camera_params, st.obs_cam), pc)
    # Left perturbation: d(Exp(w) R X)/dw = -[R X]_x, so row j of J_rot is cross(R X, J_pc[j]).
    q = rx[:, None, :]
    j_rot = torch.stack([q[..., 1] * j_pc[..., 2] - q[..., 2] * j_pc[..., 1],
                         q[..., 2] * j_pc[..., 0] - q[..., 0] * j_pc[..., 2],
                         q[..., 0] * j_pc[..., 1] - q[..., 1] * j_pc[..., 0]], -1)
    j_cam = torch.cat([j_rot, j_pc, j_par[:, :, st.kcols]], -1)
    j_pts = outer_sum(j_pc.transpose(1, 2), rows(x.rotations, st.obs_img))  # J_pc @ R
    return xy, pc, j_cam, j_pts


def _autodiff_jacobians(st: Structure, x: State):
    """Same as :func:`_analytic_jacobians` by forward-mode autodiff (``torch.func.jacfwd``, vmapped)."""
    from torch.func import jacfwd, vmap

    params_all = x.camera_params[st.obs_cam]
    rot_all, t_all, pts_all = x.rotations[st.obs_img], x.translations[st.obs_img], x.points[st.obs_pt]
    xy = params_all.new_empty(st.num_obs, 2)
    pc = params_all.new_empty(st.num_obs, 3)
    j_cam = params_all.new_empty(st.num_obs, 2, st.m)
    j_pts = params_all.new_empty(st.num_obs, 2, 3)
    for model, idx in st.groups:
        sel = slice(None) if idx is None else idx

        def residual(tangent, point, params, rot, t, model=model):
            p_cam = so3_exp(tangent[None, :3])[0] @ rot @ point + t + tangent[3:]
            return project(model, params[None], p_cam[None], with_jac=False)[0], p_cam

        jac = jacfwd(residual, argnums=(0, 1, 2), has_aux=True)
        n = params_all[sel].shape[0]
        (j_tan, j_pt, j_par), pc_g = vmap(jac)(params_all.new_zeros(n, 6), pts_all[sel], params_all[sel],
                                               rot_all[sel], t_all[sel])
        xy[sel] = project(model, params_all[sel], pc_g, with_jac=False)
        pc[sel] = pc_g
        j_cam[sel] = torch.cat([j_tan, j_par[:, :, st.kcols]], -1)
        j_pts[sel] = j_pt
    return xy, pc, j_cam, j_pts


def evaluate(st: Structure, x: State, options: BAOptions, with_jac: bool) -> Linearization:
    """Cost, and with ``with_jac`` the robust-corrected residuals and masked Jacobians."""
    if with_jac:
        jac_fn = _analytic_jacobians if options.jacobian == "analytic" else _autodiff_jacobians
        xy, pc, j_cam, j_pts = jac_fn(st, x)
    else:
        _, pc = _camera_frame(st, x)
        xy = project_groups(st.groups, rows(x.camera_params, st.obs_cam), pc, with_jac=False)
    valid = pc[:, 2] >= MIN_DEPTH  # COLMAP: points with depth < eps get a zero residual
    r = torch.where(valid[:, None], xy - st.obs_xy, torch.zeros_like(xy))
    rho, rho1 = losses.evaluate(options.loss, options.loss_scale, (r * r).sum(-1))
    cost = 0.5 * float(rho.sum())
    if not with_jac:
        return Linearization(cost, r)
    scale = torch.sqrt(rho1) * valid
    r = r * scale[:, None]
    # where, not a product: at depth 0 the projection's Jacobian is inf/NaN and NaN * 0 is NaN
    j_cam = torch.where(valid[:, None, None], j_cam * (scale[:, None, None] * st.obs_free[:, None, :]), 0.0)
    j_pts = torch.where(valid[:, None, None], j_pts * (scale * st.obs_point_free)[:, None, None], 0.0)
    return Linearization(cost, r, j_cam, j_pts)


def _sym3_inverse(a: Tensor) -> Tensor:
    """Closed-form inverse of (N, 3, 3) symmetric positive definite matrices."""
    a00, a01, a02 = a[:, 0, 0], a[:, 0, 1], a[:, 0, 2]
    a11, a12, a22 = a[:, 1, 1], a[:, 1, 2], a[:, 2, 2]
    c00 = a11 * a22 - a12 * a12
    c01 = a02 * a12 - a01 * a22
    c02 = a01 * a12 - a02 * a11
    c11 = a00 * a22 - a02 * a02
    c12 = a01 * a02 - a00 * a12
    c22 = a00 * a11 - a01 * a01
    inv_det = 1.0 / (a00 * c00 + a01 * c01 + a02 * c02)
    return torch.stack([torch.stack([c00, c01, c02], -1), torch.stack([c01, c11, c12], -1),
                        torch.stack([c02, c12, c22], -1)], -2) * inv_det[:, None, None]


class NormalEquations:
    """J^T J and J^T r in block form, built once per linearization and reused across LM retries.

    Kept per observation: W_a = Jc_a^T Jp_a (M, m, 3) and g_a = Jc_a^T r_a (M, m); per point:
    V_p = sum Jp^T Jp (P, 3, 3) and g_p (P, 3); per camera-side entry: diag(J^T J) for damping.
    """

    def __init__(self, st: Structure, lin: Linearization, options: BAOptions):
        self.st, self.lin = st, lin
        self.schur_float32 = options.schur_float32
        jc, jp, r = lin.jac_cam, lin.jac_pts, lin.residuals
        self.wt_pad = padded((st.num_obs, 3, st.m), jc)
        self.wt = outer_sum(jp, jc, out=self.wt_pad[:-1])  # W_a^T = Jp^T Jc (M, 3, m), zero row after
        self.gc = mtv(jc, r)  # (M, m)
        v = torch.zeros(st.num_points, 3, 3, dtype=r.dtype, device=r.device)
        add_rows(v, st.obs_pt, outer_sum(jp, jp))
        gp = torch.zeros(st.num_points, 3, dtype=r.dtype, device=r.device)
        add_rows(gp, st.obs_pt, mtv(jp, r))
        # Constant points: unit block so the elimination is well defined and their step is zero.
        eye = torch.eye(3, dtype=r.dtype, device=r.device)
        v = v + (1.0 - st.point_free)[:, None, None] * eye
        self.v, self.gp = v, gp
        self.g_cam = st.scatter_cam(self.gc)
        self.diag_cam = st.scatter_cam((jc * jc).sum(1)).clamp(options.min_lm_diagonal, options.max_lm_diagonal)
        self.diag_pts = torch.diagonal(v, dim1=1, dim2=2).clamp(options.min_lm_diagonal, options.max_lm_diagonal)
        jc_pad = _pad_row(jc)
        h_img = torch.zeros(st.num_images, st.m, st.m, dtype=r.dtype, device=r.device)
        self.h_img = add_rows(h_img, st.diag_chunk_image, chunk_gram(jc_pad, jc_pad, st.diag_idx, st.diag_idx, CHUNK))

    def gradient_max_norm(self) -> float:
        return max(float(self.g_cam.abs().max()), float(self.gp.abs().max()))

    def damped_point_inverse(self, lam: float) -> Tensor:
        return _sym3_inverse(self.v + torch.diag_embed(lam * self.diag_pts))

    def eliminate(self, vinv: Tensor) -> Tensor:
        """Y_a^T = V_p^-1 W_a^T per observation, (M+1, 3, m) with a zero last row (V^-1 is symmetric)."""
        y_pad = padded(self.wt.shape, self.wt)
        outer_sum(rows(vinv, self.st.obs_pt), self.wt, out=y_pad[:-1])
        return y_pad

    def reduced_rhs(self, y_pad: Tensor) -> Tensor:
        """b = g_c - W V^-1 g_p in the full layout."""
        return self.st.scatter_cam(self.gc - mtv(y_pad[:-1], rows(self.gp, self.st.obs_pt)))

    def image_blocks(self, y_pad: Tensor) -> Tensor:
        """Per-image (I, m, m) diagonal blocks of H_cc - W V^-1 W^T from observations alone
        (exact for the image's own pose/intrinsics entries; pairs of different observations excluded)."""
        st = self.st
        schur = add_rows(
            torch.zeros_like(self.h_img), st.diag_chunk_image, chunk_gram(y_pad, self.wt_pad, st.diag_idx, st.diag_idx, CHUNK))
        return self.h_img - schur

    def back_substitute(self, vinv: Tensor, delta_cam: Tensor) -> Tensor:
        """Point steps: delta_p = -V^-1 (g_p + W^T delta_c)."""
        st = self.st
        dc = st.gather_cam(*st.split_full(delta_cam))
        t = torch.zeros_like(self.gp)
        add_rows(t, st.obs_pt, mv(self.wt, dc))
        return -mv(vinv, self.gp + t)

    def model_cost_change(self, delta_cam: Tensor, delta_pts: Tensor, lam: float, exact: bool) -> float:
        """Decrease predicted by the linear model, -(g.d + d^T H d / 2).

        For an exact solve of (H + lam D) d = -g this is (lam d^T D d - g.d) / 2 from vectors
        alone; otherwise (CG) it is evaluated as -(r . J d + |J d|^2 / 2) through the Jacobians.
        """
        if exact:
            g_d = (self.g_cam * delta_cam).sum() + (self.gp * delta_pts).sum()
            d_d = (self.diag_cam * delta_cam * delta_cam).sum() + (self.diag_pts * delta_pts * delta_pts).sum()
            return 0.5 * float(lam * d_d - g_d)
        st = self.st
        dc = st.gather_cam(*st.split_full(delta_cam))
        jd = mv(self.lin.jac_cam, dc) + mv(self.lin.jac_pts, rows(delta_pts, st.obs_pt))
        return -float((jd * (self.lin.residuals + 0.5 * jd)).sum())


def solve_dense(ne: NormalEquations, lam: float) -> tuple[Tensor, Tensor, int] | None:
    """Assemble the Schur complement densely and solve it by Cholesky; None if not positive definite.

    Per-image diagonal blocks come from the observations, off-diagonal image blocks from the
    pairs of observations of a common point (-Y_a W_b^T), both as chunked batched GEMMs; the
    per-image ("ext") matrix is then folded onto the full layout, where images sharing a camera
    add into one intrinsics block.
    """
    st = ne.st
    n_img, m = st.num_images, st.m
    vinv = ne.damped_point_inverse(lam)
    y = ne.eliminate(vinv)
    rhs = ne.reduced_rhs(y)
    blocks = torch.zeros(n_img * n_img + n_img, m, m, dtype=y.dtype, device=y.device)
    if ne.schur_float32:
        gram = chunk_gram(y.float(), ne.wt_pad.float(), st.pair_a_idx, st.pair_b_idx, CHUNK).double()
    else:
        gram = chunk_gram(y, ne.wt_pad, st.pair_a_idx, st.pair_b_idx, CHUNK)
    add_rows(blocks, st.pair_chunk_block, gram)
    off = blocks[:n_img * n_img].view(n_img, n_img, m, m)
    s_blocks = -(off + off.permute(1, 0, 3, 2))
    diag = s_blocks.diagonal(dim1=0, dim2=1)  # (m, m, I) view
    diag += (ne.h_img - blocks[n_img * n_img:]).permute(1, 2, 0)
    s_ext = s_blocks.permute(0, 2, 1, 3).reshape(n_img * m, n_img * m)
    s = torch.zeros(st.n_full, n_img * m, dtype=y.dtype, device=y.device).index_add_(0, st.ext_to_full, s_ext)
    s = torch.zeros(st.n_full, st.n_full, dtype=y.dtype, device=y.device).index_add_(1, st.ext_to_full, s)
    d = torch.where(st.full_free > 0, torch.diagonal(s) + lam * ne.diag_cam, torch.ones_like(ne.diag_cam))
    s = s * (st.full_free[:, None] * st.full_free[None, :])
    s.diagonal().copy_(d)
    chol, info = torch.linalg.cholesky_ex(s)
    if int(info) != 0:
        return None
    delta_cam = torch.cholesky_solve(-rhs[:, None], chol)[:, 0] * st.full_free
    return delta_cam, ne.back_substitute(vinv, delta_cam), 0


def solve_pcg(ne: NormalEquations, lam: float, options: BAOptions) -> tuple[Tensor, Tensor, int] | None:
    """Conjugate gradients on the implicit Schur complement with a block-Jacobi preconditioner.

    S x = (H_cc + lam D_c) x - W V^-1 W^T x is applied observation by observation (gathers and
    scatters only), so no camera-pair block is ever formed. The preconditioner inverts the 6x6
    pose blocks and Ke x Ke intrinsics blocks of S built from :meth:`NormalEquations.image_blocks`.
    """
    st = ne.st
    jc, jp = ne.lin.jac_cam, ne.lin.jac_pts
    vinv = ne.damped_point_inverse(lam)
    y = ne.eliminate(vinv)
    free = st.full_free
    rhs = -ne.reduced_rhs(y) * free
    damp = torch.where(free > 0, lam * ne.diag_cam, torch.ones_like(ne.diag_cam))

    def apply_s(xv: Tensor) -> Tensor:
        t = mv(jc, st.gather_cam(*st.split_full(xv * free)))  # (M, 2)
        q = torch.zeros(st.num_points, 3, dtype=xv.dtype, device=xv.device)
        add_rows(q, st.obs_pt, mtv(jp, t))
        z = t - mv(jp, rows(mv(vinv, q), st.obs_pt))
        return st.scatter_cam(mtv(jc, z)) * free + damp * xv

    blocks = ne.image_blocks(y)
    intr_blocks = torch.zeros(st.num_cameras, st.ke, st.ke, dtype=y.dtype, device=y.device)
    add_rows(intr_blocks, st.image_camera, blocks[:, 6:, 6:])
    precond = []
    for blk, fr, dmp in zip([blocks[:, :6, :6], intr_blocks], st.split_full(free), st.split_full(damp)):
        blk = blk * (fr[:, :, None] * fr[:, None, :]) + torch.diag_embed(dmp)
        chol, info = torch.linalg.cholesky_ex(blk)
        if bool((info != 0).any()):
            return None
        precond.append(torch.cholesky_inverse(chol))

    def apply_m(rv: Tensor) -> Tensor:
        rp, ri = st.split_full(rv)
        return torch.cat([mv(precond[0], rp).reshape(-1), mv(precond[1], ri).reshape(-1)])

    xk = torch.zeros_like(rhs)
    res = rhs.clone()
    zk = apply_m(res)
    p = zk.clone()
    rz = torch.dot(res, zk)
    q_prev = 0.0
    iters = 0
    for iters in range(1, options.pcg_max_iterations + 1):
        sp = apply_s(p)
        alpha = rz / torch.dot(p, sp)
        xk = xk + alpha * p
        res = res - alpha * sp
        # Ceres' truncated-Newton test on Q(x) = x^T S x / 2 - b^T x = -x^T (b + r) / 2.
        q = -0.5 * float(torch.dot(xk, rhs + res))
        if iters >= options.pcg_min_iterations and iters * (q - q_prev) >= options.pcg_eta * q:
            break
        q_prev = q
        zk = apply_m(res)
        rz_new = torch.dot(res, zk)
        p = zk + (rz_new / rz) * p
        rz = rz_new
    if not bool(torch.isfinite(xk).all()):
        return None
    delta_cam = xk * free
    return delta_cam, ne.back_substitute(vinv, delta_cam), iters


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def solve(problem: Problem, options: BAOptions | None = None) -> tuple[Problem, Summary]:
    """Run Levenberg-Marquardt on ``problem`` (moved to ``options.device``).

    Returns the adjusted problem (new tensors; constant entries are copied bit-identically) and a
    :class:`Summary`. The input problem is not modified. Large temporaries are recycled through
    the heap while it runs (:mod:`recon.heap`): page faults were half of the CPU time.
    """
    options = options or BAOptions()
    previous_threads = torch.get_num_threads()
    if options.num_threads is not None:
        torch.set_num_threads(options.num_threads)
    try:
        with reuse_freed_memory():
            return _solve(problem, options)
    finally:
        torch.set_num_threads(previous_threads)


def _solve(problem: Problem, options: BAOptions) -> tuple[Problem, Summary]:
    device = resolve_device(options.device)
    start = time.perf_counter()
    problem.validate()
    prob = problem.to(device)
    st = Structure(prob, options)
    x = State(prob.rotations, prob.translations, prob.camera_params, prob.points)
    lin = evaluate(st, x, options, with_jac=True)
    ne = NormalEquations(st, lin, options)
    initial_cost = cost = lin.cost
    radius, decrease_factor = options.initial_trust_region_radius, 2.0
    n_ok = n_bad = 0
    costs, times, pcg_iters = [cost], [], []
    termination, message = "NO_CONVERGENCE", "maximum number of iterations reached"
    bar = None
    if options.progress:
        from tqdm import tqdm
        bar = tqdm(total=options.max_num_iterations, desc="bundle adjustment", unit="it")
    if ne.gradient_max_norm() <= options.gradient_tolerance:
        termination, message = "CONVERGENCE", "gradient tolerance reached"
    iteration = 0
    while termination == "NO_CONVERGENCE" and iteration < options.max_num_iterations:
        iteration += 1
        t0 = time.perf_counter()
        lam = 1.0 / radius
        step = solve_dense(ne, lam) if st.solver == "dense" else solve_pcg(ne, lam, options)
        accepted = False
        if step is not None:
            d_cam, d_pts, n_cg = step
            pcg_iters.append(n_cg)
            model_change = ne.model_cost_change(d_cam, d_pts, lam, exact=st.solver == "dense")
            candidate = x.retract(st, d_cam, d_pts)
            # Linearize at the candidate right away: most steps are accepted, and then the
            # Jacobians are needed there anyway (a rejected step wastes one Jacobian evaluation).
            cand_lin = evaluate(st, candidate, options, with_jac=True)
            new_cost = cand_lin.cost
            step_norm = math.sqrt(float((d_cam ** 2).sum() + (d_pts ** 2).sum()))
            if step_norm <= options.parameter_tolerance * (x.norm() + options.parameter_tolerance):
                termination, message = "CONVERGENCE", "parameter tolerance reached"
            elif abs(cost - new_cost) <= options.function_tolerance * cost:
                termination, message = "CONVERGENCE", "function tolerance reached"
            elif model_change > 0 and math.isfinite(new_cost) and (cost - new_cost) / model_change > options.min_relative_decrease:
                rho = (cost - new_cost) / model_change
                radius = min(radius / max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), options.max_trust_region_radius)
                decrease_factor = 2.0
                x, lin = candidate, cand_lin
                ne = NormalEquations(st, lin, options)
                cost = lin.cost
                accepted = True
                if ne.gradient_max_norm() <= options.gradient_tolerance:
                    termination, message = "CONVERGENCE", "gradient tolerance reached"
        if accepted:
            n_ok += 1
        else:
            n_bad += 1
            if termination == "NO_CONVERGENCE":
                radius /= decrease_factor
                decrease_factor *= 2.0
                if radius < options.min_trust_region_radius:
                    termination, message = "CONVERGENCE", "minimum trust region radius reached"
        costs.append(cost)
        _sync(device)
        times.append(time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(cost=f"{cost:.6e}")
    if bar is not None:
        bar.close()
    if not math.isfinite(cost):
        termination, message = "FAILURE", "non-finite cost"
    out = prob.clone()
    out.rotations, out.translations, out.camera_params, out.points = _keep_constant(prob, x)
    summary = Summary(
        initial_cost=initial_cost, final_cost=cost, num_iterations=iteration, num_successful_steps=n_ok,
        num_unsuccessful_steps=n_bad, termination=termination, message=message, linear_solver=st.solver,
        jacobian=options.jacobian, device=str(device), num_observations=st.num_obs, num_residuals=2 * st.num_obs,
        total_time=time.perf_counter() - start, iteration_times=times, costs=costs, pcg_iterations=pcg_iters)
    return out, summary


def _keep_constant(prob: Problem, x: State) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Copy constant entries from the input so they are bit-identical (updates there are exactly 0,
    but Exp(0) R re-multiplies the rotation and could round)."""
    rot_const = prob.pose_constant[:, :3].all(-1)
    rotations = torch.where(rot_const[:, None, None], prob.rotations, x.rotations)
    translations = torch.where(prob.pose_constant[:, 3:], prob.translations, x.translations)
    params = torch.where(prob.camera_constant, prob.camera_params, x.camera_params)
    points = torch.where(prob.point_constant[:, None], prob.points, x.points)
    return rotations, translations, params, points
