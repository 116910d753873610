"""recon.ba's Levenberg-Marquardt solver on problems with a known answer, and against pycolmap/Ceres."""
from __future__ import annotations

import numpy as np
import pycolmap
import pytest
import torch

from recon.ba import BAOptions, Problem, adjust, from_reconstruction, read_bal, solve, synthetic_bal, to_reconstruction
from recon.ba.cameras import get_model, project
from recon.ba.geometry import so3_exp
from recon.ba.problem import gauge_two_cams
from recon.ba import solver
from recon.ba.solver import PARALLEL_OPS_MIN_OBSERVATIONS, SERIAL_MAX_OBSERVATIONS, ThreadPlan, thread_plan
from conftest import shared_path

pycolmap.logging.minloglevel = 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ring_scene(outliers: float = 0.0, seed: int = 0, n_img: int = 8, n_pt: int = 200):
    """``n_img`` cameras on a ring (radius 6) around ``n_pt`` points in a 2-unit cube, one shared
    SIMPLE_RADIAL camera, every point seen by every camera, 0.5 px noise, ``outliers`` of the
    observations moved by up to +-100 px. Returns (perturbed problem, truth); the gauge
    (TWO_CAMS_FROM_WORLD) is fixed at the truth's values in both."""
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    angles = torch.linspace(0, 1.5 * torch.pi, n_img, dtype=f64)
    centres = torch.stack([6 * torch.sin(angles), 0.5 * torch.randn(n_img, generator=gen, dtype=f64), -6 * torch.cos(angles)], -1)
    z = -centres / centres.norm(dim=-1, keepdim=True)  # look at the origin
    x = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=f64).expand_as(z), z, dim=-1)
    x = x / x.norm(dim=-1, keepdim=True)
    rot = torch.stack([x, torch.linalg.cross(z, x, dim=-1), z], 1)  # rows: camera axes in world
    trans = -(rot @ centres[:, :, None])[:, :, 0]
    points = 2 * torch.rand(n_pt, 3, generator=gen, dtype=f64) - 1
    params = torch.tensor([[600.0, 320.0, 240.0, -0.05]], dtype=f64)
    obs_img = torch.arange(n_img).repeat_interleave(n_pt)
    obs_pt = torch.arange(n_pt).repeat(n_img)
    truth = Problem(rot, trans, params, ["SIMPLE_RADIAL"], torch.zeros(n_img, dtype=torch.long), points, obs_img, obs_pt,
                    torch.zeros(n_img * n_pt, 2, dtype=f64), torch.zeros(n_img, 6, dtype=torch.bool),
                    torch.tensor([[False, True, True, False]]), torch.zeros(n_pt, dtype=torch.bool))
    pc = (rot[obs_img] @ points[obs_pt][:, :, None])[:, :, 0] + trans[obs_img]
    xy = project(get_model("SIMPLE_RADIAL"), params.expand(len(obs_img), -1), pc, with_jac=False)
    xy += 0.5 * torch.randn(xy.shape, generator=gen, dtype=f64)
    bad = torch.rand(len(xy), generator=gen, dtype=f64) < outliers
    xy[bad] += 200 * torch.rand(int(bad.sum()), 2, generator=gen, dtype=f64) - 100
    truth.obs_xy = xy
    truth.pose_constant = gauge_two_cams(rot, trans, truth.pose_constant)
    noisy = truth.clone()
    fixed_t = truth.pose_constant[:, 3:]
    noisy.rotations = so3_exp(0.01 * torch.randn(n_img, 3, generator=gen, dtype=f64)) @ rot
    noisy.rotations[0] = rot[0]
    noisy.translations = torch.where(fixed_t, trans, trans + 0.05 * torch.randn(n_img, 3, generator=gen, dtype=f64))
    noisy.points = points + 0.05 * torch.randn(n_pt, 3, generator=gen, dtype=f64)
    noisy.camera_params = params * torch.tensor([[1.02, 1.0, 1.0, 0.5]], dtype=f64)
    return noisy, truth


def centres(p):
    return -(p.rotations.transpose(1, 2) @ p.translations[:, :, None])[:, :, 0]


def test_noisy_synthetic_problem_converges_to_ground_truth():
    """0.5 px noise, start 1e-2 rad / 5 cm / 2% focal off: camera centres within 1 cm, points
    within 1 cm (median), focal within 0.5% (from 2%), and the final cost at its statistical expectation
    0.5 sigma^2 (residuals - free parameters) within 15%."""
    noisy, truth = ring_scene()
    out, summary = solve(noisy, BAOptions(device="cpu", function_tolerance=1e-10))
    assert summary.termination == "CONVERGENCE"
    assert (centres(out) - centres(truth)).norm(dim=-1).max() < 0.01
    assert (out.points - truth.points).norm(dim=-1).median() < 0.01
    assert abs(float(out.camera_params[0, 0] / truth.camera_params[0, 0]) - 1) < 5e-3
    dof = 2 * out.num_observations - (6 * out.num_images - 7 + 2 + 3 * out.num_points)
    assert 0.85 < summary.final_cost / (0.5 * 0.25 * dof) < 1.15


@pytest.mark.parametrize("loss", ["huber", "soft_l1", "cauchy"])
def test_robust_losses_reject_gross_outliers(loss):
    """With 5% gross outliers (+-100 px) a robust loss still lands near the truth; trivial does not."""
    noisy, truth = ring_scene(outliers=0.05, seed=1, n_pt=100)
    robust, _ = solve(noisy, BAOptions(device="cpu", loss=loss, loss_scale=1.0))
    plain, _ = solve(noisy, BAOptions(device="cpu"))
    err = lambda p: (p.points - truth.points).norm(dim=-1).median()
    assert err(robust) < 0.01
    assert err(plain) > 2 * err(robust)


def test_dense_pcg_and_autodiff_reach_the_same_cost():
    noisy, _ = ring_scene(seed=2, n_img=6, n_pt=60)
    costs = [solve(noisy, BAOptions(device="cpu", linear_solver=ls, jacobian=jac, function_tolerance=1e-10))[1].final_cost
             for ls, jac in [("dense", "analytic"), ("pcg", "analytic"), ("dense", "autodiff")]]
    assert max(costs) / min(costs) - 1 < 1e-6


def with_repeated_observation(problem: Problem, image: int, point: int, shift: float) -> Problem:
    """``problem`` with one more observation of ``point`` in ``image`` (the existing one moved by
    ``shift`` px): two observations of one point in one image make a same-image pair block."""
    out = problem.clone()
    row = int(((problem.obs_image == image) & (problem.obs_point == point)).nonzero()[0, 0])
    out.obs_image = torch.cat([problem.obs_image, problem.obs_image[row:row + 1]])
    out.obs_point = torch.cat([problem.obs_point, problem.obs_point[row:row + 1]])
    out.obs_xy = torch.cat([problem.obs_xy, problem.obs_xy[row:row + 1] + shift])
    return out


@pytest.mark.parametrize("scene", ["shared_camera", "camera_per_image", "cameras_constant"])
def test_sparse_solver_takes_the_dense_solvers_steps(scene):
    """The sparse factorisation solves the same reduced camera system as the dense Cholesky, so
    the LM runs coincide: with one camera shared by all images (its intrinsics folded over them),
    with a camera per image and constant poses, intrinsics and points, with every camera
    parameter constant (no camera system at all: only points move), and with a point seen twice
    in one image."""
    if scene == "shared_camera":
        noisy, _ = ring_scene(seed=5, n_img=7, n_pt=80)
    elif scene == "cameras_constant":
        noisy, _ = ring_scene(seed=5, n_img=7, n_pt=80)
        noisy.pose_constant[:] = True
        noisy.camera_constant[:] = True
    else:
        noisy, _ = synthetic_bal(10, 300, seed=6)
        noisy.pose_constant[[1, 4]] = True
        noisy.camera_constant[3] = True
        noisy.point_constant[::5] = True
    noisy = with_repeated_observation(noisy, image=2, point=int(noisy.obs_point[-1]), shift=0.7)
    (dense, dense_sum), (sparse, sparse_sum) = [
        solve(noisy, BAOptions(device="cpu", linear_solver=ls, function_tolerance=1e-12, max_num_iterations=30))
        for ls in ("dense", "sparse")]
    assert (dense_sum.linear_solver, sparse_sum.linear_solver) == ("dense", "sparse")
    assert sparse_sum.num_iterations == dense_sum.num_iterations
    assert sparse_sum.final_cost == pytest.approx(dense_sum.final_cost, rel=1e-10)
    assert sparse_sum.final_cost < 0.5 * sparse_sum.initial_cost
    torch.testing.assert_close(sparse.points, dense.points, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(sparse.camera_params, dense.camera_params, rtol=1e-9, atol=0)


def test_auto_solver_choice_follows_the_size_limits():
    """``auto``: dense up to ``dense_max_size`` rows, sparse up to ``sparse_max_size``, PCG beyond
    or when the point pairs exceed ``schur_max_pairs``."""
    noisy, _ = ring_scene(seed=7, n_img=6, n_pt=40)  # 6 images x (6 + 3) rows, 40 * 15 pairs
    limits = [(dict(), "dense"), (dict(dense_max_size=10), "sparse"),
              (dict(dense_max_size=10, sparse_max_size=40), "pcg"), (dict(schur_max_pairs=599), "pcg")]
    for options, expected in limits:
        summary = solve(noisy, BAOptions(device="cpu", max_num_iterations=1, **options))[1]
        assert summary.linear_solver == expected, options


def test_small_problems_run_on_one_thread_and_the_caller_keeps_its_setting():
    """Below SERIAL_MAX_OBSERVATIONS the solve runs on one thread whatever ``num_threads`` asks;
    at or above it on ``num_threads``; either way the caller's torch thread count is restored."""
    before = torch.get_num_threads()
    for n_pt, expected in [(100, 1), (SERIAL_MAX_OBSERVATIONS // 8, 2)]:  # 8 images see every point
        noisy, _ = ring_scene(seed=8, n_pt=n_pt)
        summary = solve(noisy, BAOptions(device="cpu", num_threads=2, max_num_iterations=1))[1]
        assert (noisy.num_observations < SERIAL_MAX_OBSERVATIONS) == (expected == 1)
        assert summary.num_threads == expected
        assert torch.get_num_threads() == before


def test_thread_plan_keeps_per_observation_ops_serial_below_a_million_observations():
    """Small problems run on one thread; mid-sized ones split their GEMMs and factorisations over
    the threads asked for but keep torch's per-observation ops on one; the largest use them all."""
    assert thread_plan(SERIAL_MAX_OBSERVATIONS - 1, 2) == ThreadPlan(ops=1, split=1, factor=1)
    assert thread_plan(SERIAL_MAX_OBSERVATIONS, 2) == ThreadPlan(ops=1, split=2, factor=2)
    assert thread_plan(PARALLEL_OPS_MIN_OBSERVATIONS - 1, 4) == ThreadPlan(ops=1, split=4, factor=4)
    assert thread_plan(PARALLEL_OPS_MIN_OBSERVATIONS, 4) == ThreadPlan(ops=4, split=4, factor=4)


@pytest.mark.parametrize("plan, lapack_max_rows", [(ThreadPlan(1, 1, 1), 0), (ThreadPlan(1, 2, 2), 100),
                                                    (ThreadPlan(1, 2, 2), 0)], ids=["lapack", "lapack-small", "torch"])
def test_dense_cholesky_solves_from_the_upper_triangle_and_rejects_indefinite(monkeypatch, plan, lapack_max_rows):
    """Both factorisation routes (scipy's LAPACK and torch's) read only the upper triangle, solve
    to float64 precision and return None for a matrix that is not positive definite."""
    monkeypatch.setattr(solver, "_plan", plan)
    monkeypatch.setattr(solver, "LAPACK_MAX_ROWS", lapack_max_rows)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((50, 50))
    spd = a @ a.T + 50 * np.eye(50)
    rhs = rng.standard_normal(50)
    upper_only = np.triu(spd) + np.tril(np.full((50, 50), np.nan), -1)
    x = solver.dense_cholesky_solve(torch.from_numpy(upper_only), torch.from_numpy(rhs))
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(spd, rhs), rtol=1e-10, atol=1e-12)
    indefinite = spd - 200 * np.eye(50)
    assert solver.dense_cholesky_solve(torch.from_numpy(indefinite), torch.from_numpy(rhs)) is None


def test_constant_blocks_stay_bit_identical():
    """Constant poses, intrinsics, principal points and points are returned bit for bit."""
    noisy, _ = synthetic_bal(10, 300, seed=3)
    noisy.pose_constant[[2, 5]] = True
    noisy.camera_constant[4] = True  # all intrinsics of camera 4
    noisy.point_constant[::7] = True
    out, summary = solve(noisy, BAOptions(device="cpu", max_num_iterations=5))
    assert summary.num_successful_steps > 0
    for a, b in [(out.rotations[[2, 5]], noisy.rotations[[2, 5]]), (out.translations[[2, 5]], noisy.translations[[2, 5]]),
                 (out.camera_params[4], noisy.camera_params[4]), (out.camera_params[:, 1:3], noisy.camera_params[:, 1:3]),
                 (out.points[::7], noisy.points[::7])]:
        assert torch.equal(a, b)
    assert not torch.equal(out.points[1::7], noisy.points[1::7])  # the rest did move


def test_gauge_fixing_keeps_the_cost_and_fixes_seven_dofs():
    """TWO_CAMS_FROM_WORLD: first pose and one translation entry of the second stay put; the
    optimum's cost is the same as without gauge fixing (the gauge is a symmetry of the cost)."""
    noisy, _ = synthetic_bal(10, 300, noise_px=0.5, outlier_ratio=0.0, seed=4)
    free_out, free_sum = solve(noisy, BAOptions(device="cpu", function_tolerance=1e-12, max_num_iterations=200))
    fixed = noisy.clone()
    fixed.pose_constant = gauge_two_cams(noisy.rotations, noisy.translations, noisy.pose_constant)
    assert int(fixed.pose_constant.sum()) == 7
    fixed_out, fixed_sum = solve(fixed, BAOptions(device="cpu", function_tolerance=1e-12, max_num_iterations=200))
    assert torch.equal(fixed_out.rotations[0], noisy.rotations[0])
    assert torch.equal(fixed_out.translations[fixed.pose_constant[:, 3:]], noisy.translations[fixed.pose_constant[:, 3:]])
    assert abs(fixed_sum.final_cost / free_sum.final_cost - 1) < 1e-6


def synthetic_reconstruction(model: str):
    """pycolmap's exact synthetic scene, with poses, points and intrinsics perturbed."""
    options = pycolmap.SyntheticDatasetOptions()
    options.num_rigs, options.num_cameras_per_rig, options.num_frames_per_rig = 1, 1, 8
    options.num_points3D = 150
    options.camera_model_id = getattr(pycolmap.CameraModelId, model)
    options.camera_params = {"SIMPLE_RADIAL": [1280.0, 512.0, 384.0, 0.05],
                             "OPENCV": [1280.0, 1260.0, 512.0, 384.0, 0.05, -0.01, 0.001, 0.002]}[model]
    rec = pycolmap.synthesize_dataset(options)
    noise = pycolmap.SyntheticNoiseOptions()
    noise.point2D_stddev, noise.point3D_stddev = 0.5, 0.05
    noise.rig_from_world_translation_stddev, noise.rig_from_world_rotation_stddev = 0.05, 0.5
    pycolmap.synthesize_noise(noise, rec)
    rng = np.random.default_rng(0)
    for camera in rec.cameras.values():
        camera.params = camera.params * (1 + 0.01 * rng.normal(size=len(camera.params)))
    return rec


def pycolmap_ba(rec, loss: str, refine_pp: bool) -> float:
    options = pycolmap.BundleAdjustmentOptions()
    options.print_summary = False
    options.refine_principal_point = refine_pp
    options.ceres.loss_function_type = getattr(pycolmap.LossFunctionType, loss.upper())
    options.ceres.loss_function_scale = 2.0
    solver = options.ceres.solver_options
    solver.function_tolerance, solver.gradient_tolerance, solver.parameter_tolerance = 1e-12, 1e-12, 1e-12
    solver.max_num_iterations = 200
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in rec.reg_image_ids():
        config.add_image(image_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    return pycolmap.create_default_bundle_adjuster(options, config, rec).solve().ceres_summary.final_cost


@pytest.mark.parametrize("model,loss,refine_pp", [("SIMPLE_RADIAL", "trivial", False), ("OPENCV", "cauchy", True)])
def test_final_cost_equals_pycolmap_bundle_adjustment(model, loss, refine_pp):
    """Same reconstruction, same options: final costs agree within 1e-6 relative."""
    rec = synthetic_reconstruction(model)
    theirs_rec = pycolmap.Reconstruction(rec)
    theirs = pycolmap_ba(theirs_rec, loss, refine_pp)
    options = BAOptions(device="cpu", loss=loss, loss_scale=2.0, refine_principal_point=refine_pp,
                        function_tolerance=1e-12, gradient_tolerance=1e-12, parameter_tolerance=1e-12,
                        max_num_iterations=200)
    ours = adjust(rec, options)
    assert abs(ours.final_cost / theirs - 1) < 1e-6
    # The model written back is the optimum: its mean reprojection error matches pycolmap's.
    rec.update_point_3d_errors()
    theirs_rec.update_point_3d_errors()
    assert abs(rec.compute_mean_reprojection_error() / theirs_rec.compute_mean_reprojection_error() - 1) < 1e-4


def test_adjust_writes_back_and_keeps_constant_images():
    rec = synthetic_reconstruction("SIMPLE_RADIAL")
    image_ids = sorted(rec.reg_image_ids())
    before = {i: rec.images[i].cam_from_world().matrix() for i in image_ids}
    rec.update_point_3d_errors()
    error_before = rec.compute_mean_reprojection_error()
    summary = adjust(rec, BAOptions(device="cpu", constant_image_ids=(image_ids[3],)))
    assert summary.final_cost < summary.initial_cost
    rec.update_point_3d_errors()
    assert rec.compute_mean_reprojection_error() < 0.5 * error_before
    assert np.array_equal(rec.images[image_ids[3]].cam_from_world().matrix(), before[image_ids[3]])
    assert not np.array_equal(rec.images[image_ids[5]].cam_from_world().matrix(), before[image_ids[5]])


def test_bal_problem_matches_ceres():
    """The BAL shrink problem (behind-camera observations kept, zeroed as COLMAP does): the same
    final cost as pycolmap/Ceres SPARSE_SCHUR within 1e-4 relative."""
    problem = read_bal(shared_path("data", "bal", "problem-49-1800-shrink-pre.txt"))
    _, ours = solve(problem, BAOptions(device="cpu", function_tolerance=1e-8))
    rec = to_reconstruction(problem)
    options = pycolmap.BundleAdjustmentOptions()
    options.print_summary = False
    options.ceres.solver_options.function_tolerance = 1e-8
    options.ceres.solver_options.gradient_tolerance = 1e-10
    options.ceres.solver_options.parameter_tolerance = 1e-8
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in rec.reg_image_ids():
        config.add_image(image_id)
    theirs = pycolmap.create_default_bundle_adjuster(options, config, rec).solve().ceres_summary
    assert abs(ours.initial_cost / theirs.initial_cost - 1) < 1e-12
    assert ours.final_cost <= theirs.final_cost * (1 + 1e-4)


def test_reconstruction_round_trip_keeps_the_problem():
    problem, _ = synthetic_bal(5, 50, seed=5)
    back = from_reconstruction(to_reconstruction(problem), gauge="none")
    assert torch.allclose(back.rotations, problem.rotations, atol=1e-12)
    assert torch.equal(back.points, problem.points)
    assert back.num_observations == problem.num_observations


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    noisy, _ = ring_scene(seed=6)
    cpu = solve(noisy, BAOptions(device="cpu"))[1].final_cost
    cuda = solve(noisy, BAOptions(device="cuda"))[1].final_cost
    assert abs(cuda / cpu - 1) < 1e-8
