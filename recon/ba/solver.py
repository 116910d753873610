"""Levenberg-Marquardt bundle adjustment with the Schur complement on the points.

One LM iteration (float64 throughout):

1. :func:`linearize` evaluates residuals and Jacobians of every observation at once (analytic, or
   batched forward-mode autodiff with ``torch.func``), applies the robust loss as Ceres does
   (scale residual and Jacobian by ``sqrt(rho')``) and zeroes the columns of constant parameters.
2. The normal equations ``(J^T J + D / mu) delta = -J^T r`` (``D = diag(J^T J)`` clamped to
   [1e-6, 1e32], ``mu`` the trust-region radius, as in Ceres' LevenbergMarquardtStrategy) are
   reduced to the camera side by eliminating the 3x3 point blocks.
3. The reduced camera system is either assembled from per-observation and per-point-pair blocks
   and factored by Cholesky, densely (small camera counts) or supernodally over the image pairs
   that share points (thousands of cameras, :mod:`recon.ba.cholesky`), or solved matrix-free by
   conjugate gradients on the implicit Schur complement with a block-Jacobi preconditioner (when
   the point pairs are too many to assemble).
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

import functools
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.linalg import get_lapack_funcs

from . import losses
from .cholesky import CholeskyFactor, SymbolicCholesky
from .cameras import MIN_DEPTH, model_groups, project, project_groups_t
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
        linear_solver: ``auto | dense | sparse | pcg``: the reduced camera system assembled and
            factored by Cholesky, densely or sparsely (supernodal), or solved by CG on the implicit
            Schur complement. ``auto`` assembles it when the observation pairs of the points
            (the GEMMs that build it) number at most ``schur_max_pairs``, densely up to
            ``dense_max_size`` rows, sparsely up to ``sparse_max_size``; else PCG. On survey
            patterns (``benchmarks/ba_cholesky.py --threads 1``) dense and supernodal Cholesky
            break even near 600 rows and the supernodal one is 3x faster at 1,200 and 10x at 2,900;
            few cameras that all share points (the BAL problems) stay dense.
        pcg_min_iterations, pcg_max_iterations, pcg_eta: CG stops with Ceres' truncated-Newton
            rule ``i (Q_i - Q_{i-1}) >= eta Q_i`` (Q the quadratic model, Ceres' ``eta``).
        jacobian: ``analytic | autodiff`` (both float64; analytic is the measured faster one).
        schur_float32: store the per-pair factors of the dense Schur assembly in float32 (GEMMs in
            float32, block sums in float64); everything else stays float64.
        device: ``auto | cpu | cuda``.
        num_threads: CPU threads for the solve (torch's setting is restored afterwards); None
            keeps torch's setting. How they are used depends on the problem's size
            (:func:`thread_plan`): problems with fewer than :data:`SERIAL_MAX_OBSERVATIONS`
            observations run on one thread, and below :data:`PARALLEL_OPS_MIN_OBSERVATIONS` only
            the GEMMs and factorisations use more than one.
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
    dense_max_size: int = 1000
    sparse_max_size: int = 60_000
    schur_max_pairs: int = 30_000_000
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
        if self.linear_solver not in ("auto", "dense", "sparse", "pcg"):
            raise ValueError(f"linear_solver must be auto, dense, sparse or pcg, not {self.linear_solver!r}")
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
    num_threads: int  # CPU threads the solve ran on at most (see thread_plan)
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


SERIAL_MAX_OBSERVATIONS = 20_000
"""Below this many observations :func:`solve` uses one CPU thread whatever ``num_threads`` says:
its per-observation ops (tens of microseconds each) and block GEMMs are too small for a parallel
region's wake-up and barrier to pay. Measured on the 2-core machine with other jobs running (load
2-3, interleaved, same steps and costs): recon_global's BAs on templeSparseRing (2k-8k
observations) took 0.59-0.76x the time of two threads, BAL 49-1800-shrink (11k) 0.83x, and two
threads spent 18% more CPU time at no gain in wall time (CPU / wall 1.0)."""

PARALLEL_OPS_MIN_OBSERVATIONS = 1_000_000
"""From this many observations torch's own threads run the per-observation tensor operations;
below, those run on one torch thread while the batched GEMMs still split over ``num_threads``
(:func:`run_split`) and the Cholesky factorisations use them all (:func:`factor_threads`).

Why: with ``OMP_WAIT_POLICY=PASSIVE`` (set by the ``recon`` package) every parallel torch op wakes
its sleeping threads, ~50-70 us. An element-wise op over 36k float64 took 84 us on two threads
and 16 us on one (the 2-core machine, idle); two threads only pay from ~500k elements. With
this plan ``benchmarks/ba_bal.py --repeat 5`` took BAL 21-11315 (36k observations) from 0.64-0.76x
to 0.44x Ceres' time and 49-7776 (32k) from 0.43-0.47x to 0.35x, identical steps and costs. With
all of a solve on one torch thread and only the GEMM pieces split (interleaved, best of 7), the
two ran as fast or faster than on two torch threads with two busy processes beside them, and the
synthetic presets (100k-1.3M observations) within run-to-run noise of two."""


@dataclass(frozen=True)
class ThreadPlan:
    """CPU threads of one solve: ``ops`` for torch's per-observation operations, ``split`` for the
    numpy GEMM pieces (:func:`run_split`), ``factor`` for the Cholesky factorisations."""

    ops: int
    split: int
    factor: int


def thread_plan(num_observations: int, threads: int) -> ThreadPlan:
    """The threads a solve of ``num_observations`` runs on when allowed ``threads``
    (see :data:`SERIAL_MAX_OBSERVATIONS` and :data:`PARALLEL_OPS_MIN_OBSERVATIONS`)."""
    if num_observations < SERIAL_MAX_OBSERVATIONS:
        return ThreadPlan(1, 1, 1)
    return ThreadPlan(threads if num_observations >= PARALLEL_OPS_MIN_OBSERVATIONS else 1, threads, threads)


_plan = ThreadPlan(1, 1, 1)  # the running solve's (set by :func:`solve`, reset after it)


@contextmanager
def factor_threads():
    """Run the block on the solve's factorisation threads (dense and supernodal Cholesky: a few
    large GEMM-bound calls, where a parallel region's wake-up is paid back)."""
    torch.set_num_threads(_plan.factor)
    try:
        yield
    finally:
        torch.set_num_threads(_plan.ops)


@functools.cache
def _blas_libraries():
    """The BLAS libraries loaded in this process (scipy's and numpy's OpenBLAS), found once."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


def blas_threads(count: int):
    """Context manager: the BLAS libraries of scipy and numpy run on ``count`` threads inside it
    (OpenBLAS otherwise takes every core, whatever the solve's thread plan says)."""
    return _blas_libraries().limit(limits=count)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


CHUNK = 32  # observations (or point pairs) per batched GEMM in the block accumulations
TAIL_CHUNK = 8  # chunk size for the remainders of the point-pair blocks (see chunk_groups)


def chunk_groups(items: tuple[Tensor, ...], keys: Tensor, size: int, pad: int,
                 tail: int | None = None) -> list[tuple[tuple[Tensor, ...], Tensor, int]]:
    """Lay out the rows of each group (a run of equal ``keys``, which are sorted) in fixed-size
    chunks that never mix groups, for batched GEMMs that accumulate a block per group.

    ``items`` are 1-D tensors indexed like ``keys`` (e.g. the two observations of each point pair).
    Returns ``[(chunked items, key of each chunk, chunk size)]``: each chunked item is
    (chunks * chunk size,), its slots past the end of a group hold ``pad`` (the index of an
    all-zero row). Without ``tail`` there is one part, chunks of ``size``. With ``tail``, each group's
    first ``size * (count // size)`` rows go into chunks of ``size`` and its remainder into chunks
    of ``tail`` (a second part): the point-pair blocks of BAL 49-1800-shrink hold ~30 pairs on
    average, so chunks of 32 alone were 38% padding (77k rows for 48k pairs); with tails of 8 the
    padding is < 8 rows per block. Accumulating per chunk is ~10x faster on CPU than a batched GEMM
    over single observations.

    Each row goes to slot ``first slot of its group's chunks + its position in the group`` of its
    part: one scatter per item, with no per-chunk index arithmetic.
    """
    n, dev = keys.numel(), keys.device
    first = torch.ones(n, dtype=torch.bool, device=dev)
    torch.ne(keys[1:], keys[:-1], out=first[1:])
    starts = first.nonzero()[:, 0]  # first row of each group
    counts = torch.diff(starts, append=starts.new_full((1,), n))
    group = torch.cumsum(first, 0).sub_(1)  # group of each row
    pos = torch.arange(n, device=dev).sub_(starts.index_select(0, group))  # position in its group
    if tail is None:
        layouts = [(torch.zeros_like(counts), counts, size)]
    else:
        full = counts // size * size
        layouts = [(torch.zeros_like(counts), full, size), (full, counts - full, tail)]
    parts = []
    for offset, length, chunk in layouts:  # rows [offset, offset + length) of each group
        num_chunks = (length + chunk - 1) // chunk
        total = int(num_chunks.sum())
        if not total:
            continue
        slot = pos + ((torch.cumsum(num_chunks, 0) - num_chunks) * chunk - offset).index_select(0, group)
        member = (pos >= offset.index_select(0, group)) & (pos < (offset + length).index_select(0, group))
        rows_in = member.nonzero()[:, 0]
        dest = slot.index_select(0, rows_in)
        chunked = tuple(torch.full((total * chunk,), pad, dtype=item.dtype, device=dev).index_copy_(
            0, dest, item.index_select(0, rows_in)) for item in items)
        parts.append((chunked, torch.repeat_interleave(keys.index_select(0, starts), num_chunks), chunk))
    return parts


GRAM_PIECE = 128  # chunks per gather + GEMM piece of chunk_gram on CPU (gathered rows stay in cache)
SPLIT_MIN_ROWS = 8192  # per-observation numpy products at least this long run on two threads
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def run_split(fn, n: int, step: int) -> None:
    """Call ``fn(lo, hi)`` over [0, n) in pieces of at most ``step``; when the solve's thread plan
    allows 2+ split threads (:func:`thread_plan`) and there are 2+ pieces, the upper half runs
    concurrently on a pool thread.

    For numpy work (gathers and batched GEMMs release the GIL, and numpy runs them on one core):
    the second core of a 2-core CPU otherwise idles through them.
    """
    def walk(lo: int, hi: int) -> None:
        for start in range(lo, hi, step):
            fn(start, min(start + step, hi))

    if _plan.split < 2 or n <= step:
        walk(0, n)
        return
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(1, thread_name_prefix="recon-ba")
    half = (n // step + 1) // 2 * step if n > 2 * step else n // 2
    other = _pool.submit(walk, half, n)
    walk(0, half)
    other.result()


def chunk_gram(a: Tensor, b: Tensor, idx_a: Tensor, idx_b: Tensor, size: int) -> Tensor:
    """Per chunk, sum over its rows i of ``a[idx_a[i]]^T @ b[idx_b[i]]``.

    a, b: (N+1, k, m) with row N zero (the padding target). Rows are stored (k, m) so a chunk's
    gathered rows are already one contiguous (size*k, m) matrix: no permute copy. -> (chunks, m, m).
    On CPU the gather and GEMM run through numpy in pieces of :data:`GRAM_PIECE` chunks: the
    gathered rows are multiplied while in cache instead of written out whole and read back (pair
    grams of BAL 49-7776 and 21-11315: ~25% less CPU, interleaved A/B, 100 runs each), the two
    halves of the pieces on two threads (:func:`run_split`); every piece is computed alone, so the
    result does not depend on the split.
    """
    k, m, mb = a.shape[1], a.shape[2], b.shape[2]
    n = idx_a.numel() // size
    same = a is b and idx_a is idx_b
    if a.device.type != "cpu" or a.requires_grad or b.requires_grad:
        ac = rows(a, idx_a).view(n, size * k, m)
        return outer_sum(ac, ac if same else rows(b, idx_b).view(n, size * k, mb))
    src_a, src_b = a.reshape(a.shape[0], -1).numpy(), b.reshape(b.shape[0], -1).numpy()
    ia, ib = idx_a.numpy(), idx_b.numpy()
    out = np.empty((n, m, mb), dtype=np.result_type(src_a, src_b))

    def piece(lo: int, hi: int) -> None:
        ac = np.take(src_a, ia[lo * size:hi * size], axis=0).reshape(hi - lo, size * k, m)
        bc = ac if same else np.take(src_b, ib[lo * size:hi * size], axis=0).reshape(hi - lo, size * k, mb)
        np.matmul(ac.transpose(0, 2, 1), bc, out=out[lo:hi])

    run_split(piece, n, GRAM_PIECE)
    return torch.from_numpy(out)


def rows(t: Tensor, idx: Tensor) -> Tensor:
    """t[idx] along dim 0 through a 2-D view (CPU index_select on 3-D tensors is ~8x slower).

    On CPU through numpy's ``take``: 3-8x less CPU than torch's index_select with 2 threads
    (BAL 21-11315, 93k pair rows of (3, 9): 1.4-2.1 vs 5.6-6.3 ms, unsorted indices).
    """
    src = t.reshape(t.shape[0], -1)
    if src.device.type == "cpu" and not src.requires_grad:
        return torch.from_numpy(np.take(src.numpy(), idx.numpy(), axis=0)).view(idx.shape[0], *t.shape[1:])
    return src.index_select(0, idx).view(idx.shape[0], *t.shape[1:])


def copy_into(out: Tensor, src: Tensor) -> Tensor:
    """out.copy_(src); on CPU through numpy, whose strided copy transposes the (2, m+1, M)
    component-major Jacobians into (M, 2, m+1) rows in 0.35-0.45 ms where torch's copy_ takes
    0.45-1.0 ms (BAL 21-11315, 36k observations, one and two threads)."""
    if out.device.type == "cpu" and not src.requires_grad:
        np.copyto(out.numpy(), src.numpy())
        return out
    return out.copy_(src)


def add_rows(out: Tensor, idx: Tensor, src: Tensor) -> Tensor:
    """out[idx] += src (accumulating duplicates) along dim 0, through 2-D views; returns out."""
    out.view(out.shape[0], -1).index_add_(0, idx, src.reshape(src.shape[0], -1))
    return out


def matmul(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """Batched a @ b for many tiny matrices: (..., r, k) @ (..., k, c) -> (..., r, c).

    On CPU this goes through numpy's matmul (OpenBLAS): for the per-observation 3x2x9 or 3x3x9
    products and the 9x96x9 chunk grams it took 1/2 to 1/3 of the CPU time of torch's bmm (MKL) or
    broadcast-and-sum on the 2-core AMD EPYC machine this was tuned on (BAL 49-7776: 1.5 vs
    2.1-3.5 ms per 32k products; 3.2 vs 9-10 ms for the pair grams). Elsewhere torch.matmul.
    ``out`` (optional) receives the result in place (e.g. the first rows of a zero-padded buffer).
    Stacks of at least :data:`SPLIT_MIN_ROWS` products are split in two halves run concurrently
    (:func:`run_split`).
    """
    if a.device.type == "cpu" and not (a.requires_grad or b.requires_grad):
        an, bn = a.numpy(), b.numpy()
        n = an.shape[0]
        if an.ndim != 3 or bn.ndim != 3 or bn.shape[0] != n or n < SPLIT_MIN_ROWS:
            result = np.matmul(an, bn, out=None if out is None else out.numpy())
            return out if out is not None else torch.from_numpy(result)
        on = np.empty((n, an.shape[1], bn.shape[2]), np.result_type(an, bn)) if out is None else out.numpy()
        run_split(lambda lo, hi: np.matmul(an[lo:hi], bn[lo:hi], out=on[lo:hi]), n, (n + 1) // 2)
        return out if out is not None else torch.from_numpy(on)
    return torch.matmul(a, b, out=out)


def mv(a: Tensor, x: Tensor) -> Tensor:
    """Batched matrix-vector product (..., r, c) x (..., c) -> (..., r).

    Through torch (bmm), unlike :func:`matmul`: for one right-hand column numpy's matmul costs
    2-2.5x more CPU (BAL 21-11315, 36k (3, 9) x (9,) products: 0.58 vs 1.41 ms; 11k 3x3: 0.14 vs 0.35 ms).
    """
    return torch.matmul(a, x[..., None])[..., 0]


def mtv(a: Tensor, x: Tensor) -> Tensor:
    """Batched transposed product a^T x: (..., r, c), (..., r) -> (..., c), as x^T a through torch
    (36k (3, 9)^T x (3,): 1.2 ms vs 1.8 ms through numpy)."""
    return torch.matmul(x[..., None, :], a)[..., 0, :]


def outer_sum(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """a^T b for (..., k, r), (..., k, c): (..., r, c) (a sum of k outer products)."""
    return matmul(a.transpose(-1, -2), b, out=out)


def padded(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A buffer with one extra trailing row: rows [:-1] take data (uninitialised), row -1 is zero
    (the padding target)."""
    out = torch.empty((shape[0] + 1, *shape[1:]), dtype=like.dtype, device=like.device)
    out[-1] = 0.0
    return out


class Structure:
    """Index bookkeeping fixed for a problem: observation order, free columns, point pairs.

    Observations are stored image-major (sorted by image, then point), so every per-image
    accumulation reads contiguous rows and the two sides of each image-pair block of the Schur
    complement gather from two compact ranges (cache-friendly). Tracks are walked through
    ``by_point``; the pairs (a <= b) of observations of one point give the blocks of the Schur
    complement (dense solver). Built once per solve and reused by every iteration.
    """

    def __init__(self, problem: Problem, options: BAOptions):
        dev = problem.device
        self.num_images, self.num_cameras, self.num_points = problem.num_images, problem.num_cameras, problem.num_points
        self.num_obs = problem.num_observations
        order = torch.argsort(problem.obs_image * self.num_points + problem.obs_point, stable=True)
        self.obs_img = problem.obs_image.index_select(0, order)
        self.obs_pt = problem.obs_point.index_select(0, order)
        self.obs_xy = problem.obs_xy.index_select(0, order)
        self.obs_xy_t = self.obs_xy.T.contiguous()  # (2, M), for the component-major residuals
        self.image_camera = problem.image_camera
        self.obs_cam = problem.image_camera.index_select(0, self.obs_img)
        free_intr = ~problem.camera_constant
        self.kcols = free_intr.any(0).nonzero()[:, 0]  # intrinsics columns free somewhere
        self.kcols_list = self.kcols.tolist()
        self.ke = int(self.kcols.numel())
        self.m = 6 + self.ke
        self.pose_free = (~problem.pose_constant).to(torch.float64)  # (I, 6)
        self.intr_free = free_intr[:, self.kcols].to(torch.float64)  # (C, Ke)
        self.point_free = (~problem.point_constant).to(torch.float64)  # (P,)
        # Per-observation masks, component-major (m, M) as the Jacobians are computed; only built
        # when something observed is constant (evaluate skips the masking otherwise).
        ext_free = torch.cat([self.pose_free, self.intr_free.index_select(0, self.image_camera)], -1)  # (I, m)
        self.cams_all_free = bool((ext_free > 0).all())
        self.points_all_free = bool((self.point_free > 0).all())
        self.obs_free_t = None if self.cams_all_free else columns(ext_free, self.obs_img)
        self.obs_point_free = None if self.points_all_free else self.point_free.index_select(0, self.obs_pt)  # (M,)
        self.full_free = torch.cat([self.pose_free.reshape(-1), self.intr_free.reshape(-1)])
        self.n_full = self.full_free.numel()
        self.all_free = bool((self.full_free > 0).all())
        self.groups = model_groups(problem.camera_models, self.obs_cam)
        # Point pairs a < b within each track, in track order (by_point: observation rows sorted by point).
        by_point = torch.argsort(self.obs_pt, stable=True)
        counts = torch.bincount(self.obs_pt, minlength=self.num_points)
        starts = torch.cumsum(counts, 0) - counts
        track_pos = torch.arange(self.num_obs, device=dev)
        n_after = (starts + counts).index_select(0, self.obs_pt.index_select(0, by_point)) - track_pos - 1  # later observations of the same point
        self.num_pairs = int(n_after.sum())
        # ext layout: one m-block per image ([pose, intrinsics of its camera]); maps to the full layout.
        img = torch.arange(self.num_images, device=dev)
        pose_slots = img[:, None] * 6 + torch.arange(6, device=dev)
        intr_slots = 6 * self.num_images + problem.image_camera[:, None] * self.ke + torch.arange(self.ke, device=dev)
        self.ext_to_full = torch.cat([pose_slots, intr_slots], -1).reshape(-1)  # (I*m,)
        self.ext_is_full = self.num_images * self.m == self.n_full and bool(
            torch.bincount(problem.image_camera, minlength=self.num_cameras).eq(1).all())
        self.solver = self._choose_solver(options)
        # Per-image chunks of observation rows (contiguous): per-image diagonal blocks.
        rows_all = torch.arange(self.num_obs, device=dev)
        ((self.diag_idx,), self.diag_chunk_image, _), = chunk_groups((rows_all,), self.obs_img, CHUNK, self.num_obs)
        if self.solver in ("dense", "sparse"):
            self._index_pair_blocks(by_point, track_pos, n_after)
        if self.solver == "sparse":
            self.pattern = SchurPattern(self)
        if self.solver == "dense":
            self._index_dense()

    def _index_dense(self) -> None:
        """What the dense solver's every iteration would otherwise recompute: the full-layout entry
        of each row of its matrix (``dense_order``: the ext layout itself when it is a permutation
        of the full one, else the full layout), their free mask in that order and the rows of the
        constant entries (zeroed, with a unit diagonal)."""
        self.dense_order = self.ext_to_full if self.ext_is_full else torch.arange(self.n_full, device=self.ext_to_full.device)
        self.dense_free = self.full_free.index_select(0, self.dense_order)
        self.dense_constant = (self.dense_free == 0).nonzero()[:, 0]

    def _index_pair_blocks(self, by_point: Tensor, track_pos: Tensor, n_after: Tensor) -> None:
        """Chunks of the observation pairs (a <= b) of each point, keyed by the Schur block they add
        to: the image pairs that share a point, numbered 0..K-1 in (image a, image b) order
        (``block_a``, ``block_b`` (K,), a <= b), then one key K + i per image i for the a == b pairs
        (the per-observation terms). Only blocks that exist are numbered: at 1,000 images a
        camera shares points with a few dozen others, not with all of them."""
        dev = by_point.device
        # Cross pairs: each observation with every later one of its point. The a == b terms are the
        # observations themselves, already in image-major order: they are appended, not sorted.
        t_a = torch.repeat_interleave(track_pos, n_after)
        offsets = 1 + torch.arange(t_a.numel(), device=dev) - torch.repeat_interleave(torch.cumsum(n_after, 0) - n_after, n_after)
        pair_a, pair_b = by_point.index_select(0, t_a), by_point.index_select(0, t_a + offsets)
        n_img = self.num_images  # images ascend along a track: img(a) <= img(b)
        key = self.obs_img.index_select(0, pair_a) * n_img + self.obs_img.index_select(0, pair_b)
        by_block = torch.argsort(key, stable=True)  # pair_a ascends within a block (tracks are in point order)
        cross_keys, counts = torch.unique_consecutive(key.index_select(0, by_block), return_counts=True)
        self.num_blocks = int(cross_keys.numel())
        self.block_a, self.block_b = cross_keys // n_img, cross_keys % n_img
        self.same_blocks = (self.block_a == self.block_b).nonzero()[:, 0]  # two observations of one point in one image
        self.same_images = self.block_a.index_select(0, self.same_blocks)
        obs = torch.arange(self.num_obs, device=dev)
        pair_a, pair_b = (torch.cat([side.index_select(0, by_block), obs]) for side in (pair_a, pair_b))
        keys = torch.cat([torch.repeat_interleave(torch.arange(self.num_blocks, device=dev), counts), self.num_blocks + self.obs_img])
        # [(rows of side a, rows of side b, block of each chunk, chunk size)]
        self.pair_chunks = [(*sides, chunk_key, size) for sides, chunk_key, size in
                            chunk_groups((pair_a, pair_b), keys, CHUNK, self.num_obs, tail=TAIL_CHUNK)]

    def _choose_solver(self, options: BAOptions) -> str:
        if options.linear_solver != "auto":
            return options.linear_solver
        size = self.num_images * self.m
        if self.num_pairs > options.schur_max_pairs or size > options.sparse_max_size:
            return "pcg"
        return "dense" if size <= options.dense_max_size else "sparse"

    def gather_cam(self, pose: Tensor, intr: Tensor, append: float | None = None) -> Tensor:
        """Full-layout camera-side vectors (I, 6) + (C, Ke) -> per-observation (M, m), or
        (M, m + 1) with the constant ``append`` as last column."""
        parts = [pose, intr.index_select(0, self.image_camera)]
        if append is not None:
            parts.append(pose.new_full((self.num_images, 1), append))
        return rows(torch.cat(parts, -1), self.obs_img)

    def scatter_cam(self, per_obs: Tensor) -> Tensor:
        """Per-observation (M, m) -> summed full-layout vector (6 I + Ke C,)."""
        per_image = torch.zeros(self.num_images, self.m, dtype=per_obs.dtype, device=per_obs.device)
        return self.fold_images(per_image.index_add_(0, self.obs_img, per_obs))

    def fold_images(self, per_image: Tensor) -> Tensor:
        """Per-image ext-layout (I, m) -> full layout (6 I + Ke C,): images sharing a camera add
        into its intrinsics entries."""
        intr = torch.zeros(self.num_cameras, self.ke, dtype=per_image.dtype, device=per_image.device)
        intr.index_add_(0, self.image_camera, per_image[:, 6:])
        return torch.cat([per_image[:, :6].reshape(-1), intr.reshape(-1)])

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
        params = self.camera_params.index_add(1, st.kcols, d_intr)
        return State(so3_exp(d_pose[:, :3]) @ self.rotations, self.translations + d_pose[:, 3:], params,
                     self.points + delta_pts)

    def norm(self) -> float:
        """Norm of the ambient parameter vector (unit quaternions count 1 each), Ceres' ``x_norm``."""
        sq = self.rotations.shape[0] + (self.translations ** 2).sum() + (self.camera_params ** 2).sum() + (self.points ** 2).sum()
        return math.sqrt(float(sq))


@dataclass
class Linearization:
    """Robust-corrected residuals (M, 2) and Jacobians: camera side (M, 2, m), point (M, 2, 3).

    With Jacobians, ``jcr`` (M+1, 2, m+1) holds [J_cam | r] row-major with a zero last row (the
    padding target of the chunked grams); ``residuals`` and ``jac_cam`` are views into it.
    ``jac_pts_t`` (2, 3, M) and ``residuals_t`` (2, M) are the component-major twins used by the
    per-point sums; the row-major ``jac_pts`` is made from ``jac_pts_t`` on first use (only CG and
    its model-cost check read it: the exact solvers never pay the transposing copy).
    """

    cost: float
    residuals: Tensor
    jac_cam: Tensor | None = None
    jcr: Tensor | None = None
    jac_pts_t: Tensor | None = None
    residuals_t: Tensor | None = None

    @functools.cached_property
    def jac_pts(self) -> Tensor:
        """(M, 2, 3) contiguous."""
        return self.jac_pts_t.permute(2, 0, 1).contiguous()


def columns(t: Tensor, idx: Tensor) -> Tensor:
    """Component-major gather: t (N, ...) -> (prod(...), len(idx)), i.e. t[idx] flattened and transposed.

    Per-observation maths on (components, M) tensors runs over contiguous length-M vectors. On CPU
    the gather is numpy's ``take`` along the last axis: 3-4x less CPU than torch's index_select
    along dim 1 (BAL 21-11315, rotations of 36k observations: 0.19 vs 0.83 ms).
    """
    src = t.reshape(t.shape[0], -1).T.contiguous()
    if src.device.type == "cpu" and not src.requires_grad:
        return torch.from_numpy(np.take(src.numpy(), idx.numpy(), axis=1))
    return src.index_select(1, idx)


def _mat3_apply(mat: Tensor, vec: Tensor) -> Tensor:
    """Component-major products: mat (r, 3, M), vec (..., 3, M) -> (..., r, M), sum_j mat[:, j] vec[..., j]
    as three fused multiply-adds over length-M vectors (no (r, 3, M) broadcast temporary)."""
    out = torch.mul(mat[:, 0], vec[..., 0:1, :])
    return out.addcmul_(mat[:, 1], vec[..., 1:2, :]).addcmul_(mat[:, 2], vec[..., 2:3, :])


def _camera_frame(st: Structure, x: State) -> tuple[Tensor, Tensor, Tensor]:
    """Component-major rotations (3, 3, M), rotated points R X (3, M), camera-frame points R X + t (3, M)."""
    rot = columns(x.rotations, st.obs_img).view(3, 3, st.num_obs)
    rx = _mat3_apply(rot, columns(x.points, st.obs_pt))
    return rot, rx, rx + columns(x.translations, st.obs_img)


def _analytic_jacobians_t(st: Structure, x: State) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Projections and analytic Jacobians of every observation, one batched call per camera model,
    component-major: xy (2, M), p_cam (3, M), J_cam (2, m + 1, M) whose row m is left for the
    residual (see :func:`evaluate`), J_pts (2, 3, M). Each Jacobian row is written once, in place.
    """
    rot, rx, pc = _camera_frame(st, x)
    xy, j_pc, j_par = project_groups_t(st.groups, columns(x.camera_params, st.obs_cam), pc)
    m = st.m
    j_cam = pc.new_empty(2, m + 1, st.num_obs)
    # Left perturbation: d(Exp(w) R X)/dw = -[R X]_x, so row j of J_rot is cross(R X, J_pc[j]).
    q0, q1, q2 = rx.unbind(0)
    j0, j1, j2 = j_pc.unbind(1)  # (2, M) each
    torch.mul(q1, j2, out=j_cam[:, 0]).sub_(q2 * j1)
    torch.mul(q2, j0, out=j_cam[:, 1]).sub_(q0 * j2)
    torch.mul(q0, j1, out=j_cam[:, 2]).sub_(q1 * j0)
    j_cam[:, 3:6] = j_pc
    for i, col in enumerate(st.kcols_list):  # the free intrinsics columns (a few), not observations
        j_cam[:, 6 + i] = j_par[:, col]
    return xy, pc, j_cam, _mat3_apply(rot.transpose(0, 1), j_pc)  # J_pc @ R, (2, 3, M)


def _analytic_jacobians(st: Structure, x: State):
    """:func:`_analytic_jacobians_t` as (M, ...) views: xy (M, 2), p_cam (M, 3), J_cam (M, 2, m),
    J_pts (M, 2, 3) (not contiguous)."""
    xy, pc, j_cam, j_pts = _analytic_jacobians_t(st, x)
    return xy.T, pc.T, j_cam[:, :st.m].permute(2, 0, 1), j_pts.permute(2, 0, 1)


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
    """Cost, and with ``with_jac`` the robust-corrected residuals and masked Jacobians.

    Works component-major (contiguous length-M rows): the camera Jacobian is scaled and masked in
    place and then laid out row-major, with the residual as its last column, in one transposing
    copy straight into the padded [J_cam | r] buffer of the normal equations.
    """
    m = st.m
    if with_jac:
        if options.jacobian == "analytic":
            xy, pc, j_cam, j_pts = _analytic_jacobians_t(st, x)
        else:
            xy, pc, j_cam_rm, j_pts_rm = _autodiff_jacobians(st, x)
            xy, pc, j_pts = xy.T, pc.T, j_pts_rm.permute(1, 2, 0)
            j_cam = j_cam_rm.new_empty(2, m + 1, st.num_obs)
            j_cam[:, :m] = j_cam_rm.permute(1, 2, 0)
    else:
        pc = _camera_frame(st, x)[2]
        xy = project_groups_t(st.groups, columns(x.camera_params, st.obs_cam), pc, with_jac=False)
    valid = pc[2] >= MIN_DEPTH  # COLMAP: points with depth < eps get a zero residual
    r = torch.where(valid, xy - st.obs_xy_t, torch.zeros_like(xy))  # (2, M)
    rho, rho1 = losses.evaluate(options.loss, options.loss_scale, (r * r).sum(0))
    cost = 0.5 * float(rho.sum())
    if not with_jac:
        return Linearization(cost, r.T)
    # With the trivial loss rho' = 1, so the robust scale is just the in-front mask, which the
    # index_fill below applies; the free-column masks only matter when something is constant.
    # (Skipping these multiplications by exactly 1 leaves every value bit-identical.)
    robust = options.loss != "trivial"
    scale = torch.sqrt(rho1) * valid if robust else None
    if robust:
        r = r * scale  # (2, M), its own tensor so the (2, m+1, M) buffer is freed on return
    j_cam[:, m] = r
    if robust or not st.cams_all_free:
        j_cam[:, :m] *= _product(scale, st.obs_free_t)
    if robust or not st.points_all_free:
        j_pts *= _product(scale, st.obs_point_free)
    jcr = padded((st.num_obs, 2, m + 1), j_cam)
    copy_into(jcr[:-1], j_cam.permute(2, 0, 1))
    behind = (~valid).nonzero()[:, 0]  # at depth 0 the projection's Jacobian is inf/NaN, and NaN * 0 is NaN
    jcr.index_fill_(0, behind, 0.0)
    j_pts.index_fill_(2, behind, 0.0)
    return Linearization(cost, jcr[:-1, :, m], jcr[:-1, :, :m], jcr, j_pts, r)


def _product(a: Tensor | None, b: Tensor | None) -> Tensor:
    """a * b where None stands for all ones (never both None): a mask that is all ones is not
    built or multiplied by (x * 1 == x, so the result is the same)."""
    return b if a is None else a if b is None else a * b


def _lower3_mv(d: Tensor, x: Tensor) -> Tensor:
    """D x for lower-triangular 3x3 D given component-major as (6, N) [d00, d10, d11, d20, d21, d22],
    x (3, N) -> (3, N)."""
    d00, d10, d11, d20, d21, d22 = d
    return torch.stack([d00 * x[0], (d10 * x[0]).addcmul_(d11, x[1]),
                        (d20 * x[0]).addcmul_(d21, x[1]).addcmul_(d22, x[2])])


def _lower3_tmv(d: Tensor, x: Tensor) -> Tensor:
    """D^T x for the lower-triangular D of :func:`_lower3_mv`: x (3, N) -> (3, N)."""
    d00, d10, d11, d20, d21, d22 = d
    return torch.stack([(d00 * x[0]).addcmul_(d10, x[1]).addcmul_(d20, x[2]),
                        (d11 * x[1]).addcmul_(d21, x[2]), d22 * x[2]])


class NormalEquations:
    """J^T J and J^T r in block form, built once per linearization and reused across LM retries.

    Kept per observation: the robust-corrected [J_cam | r] and J_pts (from the linearization);
    per image: the (m, m) blocks of Jc^T Jc; per point: V_p = sum Jp^T Jp (component-major (9, P))
    and g_p (P, 3); in the full layout: the camera gradient and diag(J^T J) for damping.

    The elimination works with the Cholesky factor of the damped point blocks, V_p = C_p C_p^T:
    U_a = C_p^-1 Jp_a^T [Jc_a | r_a] (3, m + 1) per observation gives every Schur block as
    W_a V^-1 W_b^T = U_a[:, :m]^T U_b[:, :m] from one array (no separate W^T), and the extra
    column carries the reduced right-hand side through the same GEMMs.
    """

    def __init__(self, st: Structure, lin: Linearization, options: BAOptions):
        self.st, self.lin = st, lin
        self.schur_float32 = options.schur_float32
        jcr, r = lin.jcr, lin.residuals
        m = st.m
        # Camera side: one per-image gram of [Jc | r] holds the image blocks of Jc^T Jc and Jc^T r.
        gram = torch.zeros(st.num_images, m + 1, m + 1, dtype=r.dtype, device=r.device)
        add_rows(gram, st.diag_chunk_image, chunk_gram(jcr, jcr, st.diag_idx, st.diag_idx, CHUNK))
        self.h_img, self.g_img = gram[:, :m, :m], gram[:, :m, m]
        self.g_cam = st.fold_images(self.g_img)
        self.diag_cam = st.fold_images(torch.diagonal(self.h_img, dim1=1, dim2=2)).clamp(
            options.min_lm_diagonal, options.max_lm_diagonal)
        # Point side, component-major: [Jp^T Jp | Jp^T r] of every observation as 12 length-M rows
        # (rank-2 sums of products), summed per point with one index_add along the observation axis
        # (21-11315: 1.3 ms instead of 3.3 ms for per-observation 3x4 products scattered row-wise).
        a, b = lin.jac_pts_t.unbind(0)  # (3, M) each
        r0, r1 = lin.residuals_t.unbind(0)
        prods = torch.empty(12, st.num_obs, dtype=r.dtype, device=r.device)
        jtj = prods[:9].view(3, 3, st.num_obs)
        torch.mul(a[:, None], a[None], out=jtj).addcmul_(b[:, None], b[None])
        torch.mul(a, r0, out=prods[9:]).addcmul_(b, r1)
        vg = torch.zeros(12, st.num_points, dtype=r.dtype, device=r.device).index_add_(1, st.obs_pt, prods)
        # V stays component-major (9, P): rows 0, 4, 8 are its diagonal. Constant points get a
        # unit block so the elimination is well defined and their step is zero.
        self.v_t = vg[:9]
        if not st.points_all_free:
            self.v_t[0::4] += 1.0 - st.point_free
        self.gp = vg[9:].T.contiguous()
        self.diag_pts_t = self.v_t[0::4].clamp(options.min_lm_diagonal, options.max_lm_diagonal)  # (3, P)
        self.diag_pts = self.diag_pts_t.T  # (P, 3)

    def gradient_max_norm(self) -> float:
        return max(float(self.g_cam.abs().max()), float(self.gp.abs().max()))

    def point_factor(self, lam: float) -> Tensor:
        """C_p^-1 for the damped point blocks V_p + lam diag(V_p) = C_p C_p^T (C lower triangular),
        closed form, component-major: (6, P) rows [d00, d10, d11, d20, d21, d22] of the lower
        triangular inverse D = C^-1."""
        v, d = self.v_t, self.diag_pts_t
        c00 = torch.add(v[0], d[0], alpha=lam).sqrt_()
        c10, c20 = v[3] / c00, v[6] / c00
        c11 = torch.add(v[4], d[1], alpha=lam).sub_(c10 * c10).sqrt_()
        c21 = (v[7] - c20 * c10).div_(c11)
        c22 = torch.add(v[8], d[2], alpha=lam).sub_(c20 * c20).sub_(c21 * c21).sqrt_()
        d00, d11, d22 = c00.reciprocal_(), c11.reciprocal_(), c22.reciprocal_()
        d10 = -(c10 * d00 * d11)
        d21 = -(c21 * d11 * d22)
        d20 = -(c20 * d00 + c21 * d10) * d22
        return torch.stack([d00, d10, d11, d20, d21, d22])

    def eliminate(self, dinv: Tensor) -> Tensor:
        """U_a = C_p^-1 Jp_a^T [Jc_a | r_a] per observation (``dinv`` from :meth:`point_factor`),
        (M+1, 3, m + 1) with a zero last row: the 3x2 factor E = C^-1 Jp^T component-major, then
        one batched (3, 2) x (2, m + 1) product per observation."""
        st, jp = self.st, self.lin.jac_pts_t  # (2, 3, M): [residual row, point coordinate]
        d00, d10, d11, d20, d21, d22 = columns(dinv.T, st.obs_pt)  # (M,) each
        e = jp.new_empty(st.num_obs, 3, 2)  # row-major E, written column by column
        e[:, 0] = (jp[:, 0] * d00).T
        e[:, 1] = (jp[:, 0] * d10).addcmul_(jp[:, 1], d11).T
        e[:, 2] = (jp[:, 0] * d20).addcmul_(jp[:, 1], d21).addcmul_(jp[:, 2], d22).T
        u_pad = padded((st.num_obs, 3, st.m + 1), e)
        matmul(e, self.lin.jcr[:-1], out=u_pad[:-1])
        return u_pad

    def reduced_rhs(self, u_pad: Tensor, dinv: Tensor) -> Tensor:
        """b = g_c - W V^-1 g_p in the full layout: W_a V^-1 g_p = U_a[:, :m]^T (C^-1 g_p)."""
        st = self.st
        dg = _lower3_mv(dinv, self.gp.T)  # (3, P)
        return self.g_cam - st.scatter_cam(mtv(u_pad[:-1, :, :st.m], rows(dg.T, st.obs_pt)))

    def image_blocks(self, u_pad: Tensor) -> Tensor:
        """Per-image (I, m, m) diagonal blocks of H_cc - W V^-1 W^T from observations alone
        (exact for the image's own pose/intrinsics entries; pairs of different observations excluded)."""
        st = self.st
        schur = torch.zeros(st.num_images, st.m + 1, st.m + 1, dtype=u_pad.dtype, device=u_pad.device)
        add_rows(schur, st.diag_chunk_image, chunk_gram(u_pad, u_pad, st.diag_idx, st.diag_idx, CHUNK))
        return self.h_img - schur[:, :st.m, :st.m]

    def back_substitute(self, u_pad: Tensor, dinv: Tensor, delta_cam: Tensor) -> Tensor:
        """Point steps: delta_p = -V^-1 (g_p + W^T delta_c) = -C_p^-T sum over the point's
        observations of U_a [delta_c; 1]: one product per observation, one sum and one 3x3
        triangular product per point."""
        st = self.st
        dc1 = st.gather_cam(*st.split_full(delta_cam), append=1.0)
        t = add_rows(torch.zeros_like(self.gp), st.obs_pt, mv(u_pad[:-1], dc1))  # (P, 3)
        return _lower3_tmv(dinv, t.T).T.neg_()

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


def reduced_camera_system(ne: NormalEquations, lam: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The image blocks of the Schur complement S = H_cc - W V^-1 W^T (damped points, undamped
    cameras) and the reduced right-hand side b = g_c - W V^-1 g_p.

    Returns ``(dinv, y, cross, diag, rhs)``: the point factor and eliminated rows (for the back
    substitution), ``cross`` (K, m, m) the blocks W_a V^-1 W_b^T of the image pairs
    ``Structure.block_a``, ``block_b`` (S_ab = -cross for a < b), ``diag`` (I, m, m) the image diagonal
    blocks S_aa (per image, "ext" layout: images sharing a camera each have their own intrinsics
    block), and ``rhs`` in the full layout.

    Per-image diagonal blocks come from the observations, the others from the pairs of
    observations of a common point, both as chunked batched GEMMs on the augmented rows
    U = C^-1 Jp^T [Jc | r] (:meth:`NormalEquations.eliminate`): the last column and row of each
    (m+1, m+1) pair block carry W_a V^-1 Jp_b^T r_b and W_b V^-1 Jp_a^T r_a, which summed per image
    are W V^-1 g_p, the point term of the right-hand side, with no pass of its own over the
    observations.
    """
    st = ne.st
    n_img, m, k = st.num_images, st.m, st.num_blocks
    dinv = ne.point_factor(lam)
    y = ne.eliminate(dinv)
    blocks = torch.zeros(k + n_img, m + 1, m + 1, dtype=y.dtype, device=y.device)
    y_g = y.float() if ne.schur_float32 else y
    for idx_a, idx_b, chunk_block, size in st.pair_chunks:
        add_rows(blocks, chunk_block, chunk_gram(y_g, y_g, idx_a, idx_b, size).to(y.dtype))
    g = ne.g_img - blocks[k:, :m, m]
    g.index_add_(0, st.block_a, blocks[:k, :m, m], alpha=-1.0).index_add_(0, st.block_b, blocks[:k, m, :m], alpha=-1.0)
    cross = blocks[:k, :m, :m]
    diag = ne.h_img - blocks[k:, :m, :m]
    if st.same_blocks.numel():  # two observations of one point in one image
        own = cross.index_select(0, st.same_blocks)
        diag.index_add_(0, st.same_images, own + own.transpose(1, 2), alpha=-1.0)
    return dinv, y, cross, diag, st.fold_images(g)


def solve_dense(ne: NormalEquations, lam: float) -> tuple[Tensor, Tensor, int] | None:
    """Assemble the Schur complement densely and solve it by Cholesky; None if not positive definite.

    The per-image ("ext") matrix is folded onto the full layout, where images sharing a camera add
    into one intrinsics block.
    """
    st = ne.st
    n_img, m = st.num_images, st.m
    dinv, y, cross, diag, rhs = reduced_camera_system(ne, lam)
    # Only the upper triangle is formed (Cholesky reads no more): block (a, b), a < b, is -cross;
    # the diagonal blocks are written last (over any a == b pair block, already in ``diag``).
    s_ext = torch.zeros(n_img * m, n_img * m, dtype=y.dtype, device=y.device)
    grid = s_ext.view(n_img, m, n_img, m).permute(0, 2, 1, 3)  # (I, I, m, m) view
    grid[st.block_a, st.block_b] = -cross
    grid.diagonal(dim1=0, dim2=1).copy_(diag.permute(1, 2, 0))
    if st.ext_is_full:  # one camera per image: the ext layout is a permutation of the full one
        s = s_ext
    else:  # fold the symmetric ext matrix: images sharing a camera add into its intrinsics block
        s_ext = torch.triu(s_ext) + torch.triu(s_ext, 1).T
        s = torch.zeros(st.n_full, n_img * m, dtype=y.dtype, device=y.device).index_add_(0, st.ext_to_full, s_ext)
        s = torch.zeros(st.n_full, st.n_full, dtype=y.dtype, device=y.device).index_add_(1, st.ext_to_full, s)
    order, constant = st.dense_order, st.dense_constant
    s.diagonal().add_(lam * ne.diag_cam.index_select(0, order))
    if constant.numel():  # constant entries: zero rows and columns, unit diagonal (their step is 0)
        s.index_fill_(0, constant, 0.0).index_fill_(1, constant, 0.0).diagonal().index_fill_(0, constant, 1.0)
    delta = dense_cholesky_solve(s, -rhs.index_select(0, order))
    if delta is None:
        return None
    delta = delta * st.dense_free
    delta_cam = torch.empty_like(delta).index_copy_(0, order, delta) if st.ext_is_full else delta
    return delta_cam, ne.back_substitute(y, dinv, delta_cam), 0


LAPACK_MAX_ROWS = 600  # dense systems up to this size factor on one thread even when the plan allows more


def dense_cholesky_solve(s: Tensor, rhs: Tensor) -> Tensor | None:
    """x with S x = rhs from the upper triangle of the symmetric S (n, n), which is overwritten;
    None if S is not positive definite.

    On CPU, when the solve's plan gives the factorisation one thread or S has at most
    :data:`LAPACK_MAX_ROWS` rows, through LAPACK's potrf/potrs from scipy (OpenBLAS) on one
    thread, in place on the row-major upper triangle read as the column-major lower one. torch's
    cholesky_ex copies the matrix into column-major order, factors it with MKL and clears the
    other triangle: for the 441 rows of BAL 49-1800-shrink and 49-7776 on this 2-core AMD EPYC,
    factor and solve took 1.5-1.6 ms (median, inside the solves) against 1.7-2.3 ms with MKL on
    one or two threads. OpenBLAS on two threads was slower still (2.2 ms), and its threads spin
    after each call, slowing the numpy GEMM pieces that follow (49-7776 and 21-11315 solves 12%
    slower). At 600 rows one OpenBLAS thread and MKL on two are even (3.0 against 2.7-4.1 ms), at
    1,000 MKL is faster (9.3 against 12 ms), so larger systems with a multi-threaded plan go
    through torch, as on the GPU.
    """
    if s.device.type == "cpu" and not s.requires_grad and (_plan.factor == 1 or s.shape[0] <= LAPACK_MAX_ROWS):
        a = s.numpy().T  # column-major view: its lower triangle is S's upper one
        potrf, potrs = get_lapack_funcs(("potrf", "potrs"), (a,))
        with blas_threads(1):
            factor, info = potrf(a, lower=1, overwrite_a=1, clean=0)
            if info != 0:
                return None
            x, info = potrs(factor, rhs.numpy(), lower=1)
        return torch.from_numpy(x)
    with factor_threads():
        chol, info = torch.linalg.cholesky_ex(s, upper=True)
        if int(info) != 0:
            return None
        return torch.cholesky_solve(rhs[:, None], chol, upper=True)[:, 0]


class SchurPattern:
    """The reduced camera system's sparsity for :mod:`recon.ba.cholesky`: its variables are the
    free entries of the full layout, grouped into nodes (an image's pose, a camera's intrinsics),
    and its entries the image blocks of :func:`reduced_camera_system`, folded onto the full layout
    (images sharing a camera add into its intrinsics rows and columns). Built once per structure:
    an iteration gathers the block values in entry order and factors.

    Constant parameters are left out of the system (their step is zero), where the dense solver
    keeps them with a unit diagonal.
    """

    def __init__(self, st: Structure):
        m, n_img = st.m, st.num_images
        full_free = st.full_free.cpu().numpy() > 0
        self.free = torch.from_numpy(np.flatnonzero(full_free)).to(st.full_free.device)
        variable = np.full(st.n_full, -1, dtype=np.int64)  # full-layout index -> variable (-1: constant)
        variable[full_free] = np.arange(int(full_free.sum()))
        ext_to_full = st.ext_to_full.cpu().numpy()
        img_a, img_b = st.block_a.cpu().numpy(), st.block_b.cpu().numpy()
        upper = np.flatnonzero(img_a < img_b)  # a == b pair blocks are already in the diagonal blocks
        ii, jj = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")

        def full_entries(row_img: np.ndarray, col_img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Full-layout (row, column) of every entry of the (len, m, m) blocks (row_img, col_img)."""
            return (ext_to_full[row_img[:, None, None] * m + ii].reshape(-1),
                    ext_to_full[col_img[:, None, None] * m + jj].reshape(-1))

        # Values: [-cross of the a < b blocks | diagonal blocks], flattened. A cross entry stands
        # for S_ab[i, j] and its mirror S_ba[j, i], which fold onto one diagonal entry when both
        # are the same intrinsic of a shared camera: listed twice. A diagonal block is symmetric:
        # one triangle of it (in full-layout order).
        rows_u, cols_u = full_entries(img_a[upper], img_b[upper])
        rows_d, cols_d = full_entries(np.arange(n_img), np.arange(n_img))
        source_u = np.arange(rows_u.size)
        twice = source_u[rows_u == cols_u]
        lower_d = np.flatnonzero(rows_d >= cols_d)
        source = np.concatenate([source_u, twice, rows_u.size + lower_d])
        rows = np.concatenate([rows_u, rows_u[twice], rows_d[lower_d]])
        cols = np.concatenate([cols_u, cols_u[twice], cols_d[lower_d]])
        keep = (variable[rows] >= 0) & (variable[cols] >= 0)
        self.upper = torch.from_numpy(upper).to(st.full_free.device)
        self.source = torch.from_numpy(source[keep]).to(st.full_free.device)
        node = np.concatenate([np.repeat(np.arange(n_img), 6), n_img + np.repeat(np.arange(st.num_cameras), st.ke)])
        # None: every camera parameter is constant, there is no system (only points move).
        self.symbolic = SymbolicCholesky(node[full_free], variable[rows[keep]], variable[cols[keep]],
                                         st.full_free.device) if full_free.any() else None

    def factorize(self, cross: Tensor, diag: Tensor, damping: Tensor) -> CholeskyFactor | None:
        """Factor S + diag(damping) from the blocks of :func:`reduced_camera_system`; None if not
        positive definite."""
        values = torch.cat([cross.index_select(0, self.upper).reshape(-1).neg(), diag.reshape(-1)]).index_select(0, self.source)
        return self.symbolic.factorize(values, damping.index_select(0, self.free))


def solve_sparse(ne: NormalEquations, lam: float) -> tuple[Tensor, Tensor, int] | None:
    """Assemble the Schur complement over the image pairs that share points and solve it by a
    supernodal sparse Cholesky factorisation (:mod:`recon.ba.cholesky`); None if not positive
    definite.

    For camera counts where a dense matrix no longer fits or factors quickly and block-Jacobi CG
    converges slowly: on a 1,000-image aerial grid CG needed its 200-step cap per iteration.
    """
    st = ne.st
    pattern = st.pattern
    dinv, y, cross, diag, rhs = reduced_camera_system(ne, lam)
    delta = torch.zeros_like(rhs)
    if pattern.symbolic is not None:
        with factor_threads():
            factor = pattern.factorize(cross, diag, lam * ne.diag_cam)
            if factor is None:
                return None
            delta.index_copy_(0, pattern.free, factor.solve(-rhs.index_select(0, pattern.free)))
    return delta, ne.back_substitute(y, dinv, delta), 0


EXACT_SOLVERS = {"dense": solve_dense, "sparse": solve_sparse}


def solve_pcg(ne: NormalEquations, lam: float, options: BAOptions) -> tuple[Tensor, Tensor, int] | None:
    """Conjugate gradients on the implicit Schur complement with a block-Jacobi preconditioner.

    S x = (H_cc + lam D_c) x - W V^-1 W^T x is applied observation by observation (gathers and
    scatters only), so no camera-pair block is ever formed. The preconditioner inverts the 6x6
    pose blocks and Ke x Ke intrinsics blocks of S built from :meth:`NormalEquations.image_blocks`.
    """
    st = ne.st
    jc, jp = ne.lin.jac_cam, ne.lin.jac_pts
    dinv = ne.point_factor(lam)
    y = ne.eliminate(dinv)
    free = st.full_free
    rhs = -ne.reduced_rhs(y, dinv) * free
    damp = torch.where(free > 0, lam * ne.diag_cam, torch.ones_like(ne.diag_cam))

    def apply_s(xv: Tensor) -> Tensor:
        t = mv(jc, st.gather_cam(*st.split_full(xv * free)))  # (M, 2)
        q = torch.zeros(st.num_points, 3, dtype=xv.dtype, device=xv.device)
        add_rows(q, st.obs_pt, mtv(jp, t))
        vq = _lower3_tmv(dinv, _lower3_mv(dinv, q.T))  # V^-1 q = C^-T C^-1 q, (3, P)
        z = t - mv(jp, rows(vq.T, st.obs_pt))
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
    return delta_cam, ne.back_substitute(y, dinv, delta_cam), iters


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def solve(problem: Problem, options: BAOptions | None = None) -> tuple[Problem, Summary]:
    """Run Levenberg-Marquardt on ``problem`` (moved to ``options.device``).

    Returns the adjusted problem (new tensors; constant entries are copied bit-identically) and a
    :class:`Summary`. The input problem is not modified. Large temporaries are recycled through
    the heap while it runs (:mod:`recon.heap`): page faults were half of the CPU time.

    The iterations run in ``torch.inference_mode`` (analytic Jacobians; autodiff needs forward-mode
    AD): no autograd bookkeeping per op, which on small problems, where the per-op cost dominates,
    took 6-17% of the CPU time (recon_global's BAs on templeSparseRing, 2k-8k observations, same
    steps and costs). The returned tensors are built outside it, so they are ordinary tensors.
    """
    global _plan
    options = options or BAOptions()
    previous_threads = torch.get_num_threads()
    _plan = thread_plan(problem.num_observations,
                        options.num_threads if options.num_threads is not None else previous_threads)
    torch.set_num_threads(_plan.ops)
    try:
        with reuse_freed_memory():
            with torch.inference_mode(options.jacobian == "analytic"):
                prob, x, summary = _solve(problem, options)
            out = prob.clone()
            out.rotations, out.translations, out.camera_params, out.points = _keep_constant(prob, x)
            return out, summary
    finally:
        _plan = ThreadPlan(1, 1, 1)  # block GEMMs called outside a solve do not split
        torch.set_num_threads(previous_threads)


def _solve(problem: Problem, options: BAOptions) -> tuple[Problem, State, Summary]:
    """The LM iterations: the problem on the solve's device, the final parameters and the summary."""
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
        step = solve_pcg(ne, lam, options) if st.solver == "pcg" else EXACT_SOLVERS[st.solver](ne, lam)
        accepted = False
        if step is not None:
            d_cam, d_pts, n_cg = step
            pcg_iters.append(n_cg)
            model_change = ne.model_cost_change(d_cam, d_pts, lam, exact=st.solver != "pcg")
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
                ne = None  # free the previous normal equations (and linearization) first: a lower peak
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
    summary = Summary(
        initial_cost=initial_cost, final_cost=cost, num_iterations=iteration, num_successful_steps=n_ok,
        num_unsuccessful_steps=n_bad, termination=termination, message=message, linear_solver=st.solver,
        jacobian=options.jacobian, device=str(device), num_observations=st.num_obs, num_residuals=2 * st.num_obs,
        total_time=time.perf_counter() - start, num_threads=_plan.factor, iteration_times=times, costs=costs,
        pcg_iterations=pcg_iters)
    return prob, x, summary


def _keep_constant(prob: Problem, x: State) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Copy constant entries from the input so they are bit-identical (updates there are exactly 0,
    but Exp(0) R re-multiplies the rotation and could round)."""
    rot_const = prob.pose_constant[:, :3].all(-1)
    rotations = torch.where(rot_const[:, None, None], prob.rotations, x.rotations)
    translations = torch.where(prob.pose_constant[:, 3:], prob.translations, x.translations)
    params = torch.where(prob.camera_constant, prob.camera_params, x.camera_params)
    points = torch.where(prob.point_constant[:, None], prob.points, x.points)
    return rotations, translations, params, points
