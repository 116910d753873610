"""Camera models and residual Jacobians of recon.ba against finite differences and autodiff."""
from __future__ import annotations

import pytest
import torch

from recon.ba import BAOptions, Problem
from recon.ba.cameras import MODELS, get_model, project
from recon.ba.geometry import so3_exp, so3_log
from recon.ba.solver import State, Structure, _analytic_jacobians, _autodiff_jacobians

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Realistic parameters per model (COLMAP order), distortion large enough to matter.
PARAMS = {
    "SIMPLE_PINHOLE": [800.0, 320.0, 240.0],
    "PINHOLE": [800.0, 780.0, 320.0, 240.0],
    "SIMPLE_RADIAL": [800.0, 320.0, 240.0, -0.08],
    "RADIAL": [800.0, 320.0, 240.0, -0.08, 0.02],
    "OPENCV": [800.0, 780.0, 320.0, 240.0, -0.08, 0.02, 0.001, -0.002],
}


def tiny_problem(model: str, seed: int = 0) -> Problem:
    """3 images of one camera with ``model``, 10 points in front of them, every point seen by all."""
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    n_img, n_pt = 3, 10
    rot = so3_exp(0.1 * torch.randn(n_img, 3, generator=gen, dtype=f64))
    trans = 0.3 * torch.randn(n_img, 3, generator=gen, dtype=f64)
    points = torch.randn(n_pt, 3, generator=gen, dtype=f64) + torch.tensor([0.0, 0.0, 5.0], dtype=f64)
    params = torch.tensor([PARAMS[model]], dtype=f64)
    obs_img = torch.arange(n_img).repeat_interleave(n_pt)
    obs_pt = torch.arange(n_pt).repeat(n_img)
    xy = 300.0 * torch.rand(n_img * n_pt, 2, generator=gen, dtype=f64)
    return Problem(rot, trans, params, [model], torch.zeros(n_img, dtype=torch.long), points, obs_img, obs_pt, xy,
                   torch.zeros(n_img, 6, dtype=torch.bool), torch.zeros_like(params, dtype=torch.bool),
                   torch.zeros(n_pt, dtype=torch.bool))


def projections(st: Structure, x: State) -> torch.Tensor:
    return _analytic_jacobians(st, x)[0]


@pytest.mark.parametrize("model", list(MODELS))
def test_jacobians_match_central_differences(model):
    """Analytic d(pixel)/d(pose tangent, intrinsics, point) equal central differences (rel 1e-6)."""
    prob = tiny_problem(model)
    st = Structure(prob, BAOptions(device="cpu"))
    x = State(prob.rotations, prob.translations, prob.camera_params, prob.points)
    _, _, j_cam, j_pts = _analytic_jacobians(st, x)
    h = 1e-6
    numeric_cam = torch.zeros_like(j_cam)
    for col in range(st.m):  # one perturbation per parameter column, all observations at once
        delta = torch.zeros(st.n_full, dtype=torch.float64)
        pose_cols, intr_cols = st.split_full(delta)
        target = pose_cols[:, col] if col < 6 else intr_cols[:, col - 6]
        target += h
        plus = projections(st, x.retract(st, delta, torch.zeros_like(x.points)))
        minus = projections(st, x.retract(st, -delta, torch.zeros_like(x.points)))
        numeric_cam[:, :, col] = (plus - minus) / (2 * h)
    numeric_pts = torch.zeros_like(j_pts)
    for col in range(3):
        dp = torch.zeros_like(x.points)
        dp[:, col] = h
        zero = torch.zeros(st.n_full, dtype=torch.float64)
        numeric_pts[:, :, col] = (projections(st, x.retract(st, zero, dp)) - projections(st, x.retract(st, zero, -dp))) / (2 * h)
    scale_cam = j_cam.abs().amax(0, keepdim=True).clamp_min(1e-3)
    assert ((j_cam - numeric_cam).abs() / scale_cam).max() < 1e-6
    assert ((j_pts - numeric_pts).abs() / j_pts.abs().max()).max() < 1e-6


@pytest.mark.parametrize("model", list(MODELS))
def test_autodiff_jacobians_equal_analytic(model):
    """Forward-mode autodiff (torch.func) and the analytic Jacobians agree to float64 round-off."""
    prob = tiny_problem(model, seed=1)
    st = Structure(prob, BAOptions(device="cpu"))
    x = State(prob.rotations, prob.translations, prob.camera_params, prob.points)
    analytic = _analytic_jacobians(st, x)
    autodiff = _autodiff_jacobians(st, x)
    for a, b in zip(analytic, autodiff):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("model", list(MODELS))
def test_projection_matches_pycolmap(model):
    """Our projection equals pycolmap's Camera.img_from_cam for the same parameters."""
    import pycolmap
    cam = pycolmap.Camera.create_from_model_name(1, model, 1.0, 640, 480)
    cam.params = PARAMS[model]
    pts = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    pts[:, 2] = pts[:, 2].abs() + 2.0
    ours = project(get_model(model), torch.tensor([PARAMS[model]], dtype=torch.float64).expand(50, -1), pts, with_jac=False)
    theirs = torch.from_numpy(cam.img_from_cam(pts.numpy()))
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-9)


def test_so3_log_inverts_exp():
    """Angle-axis round trip, including angles near pi."""
    w = torch.randn(100, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    w = w / w.norm(dim=-1, keepdim=True) * torch.linspace(1e-8, torch.pi - 1e-6, 100, dtype=torch.float64)[:, None]
    assert torch.allclose(so3_log(so3_exp(w)), w, atol=1e-7)


@pytest.mark.parametrize("model", list(MODELS))
def test_extra_slice_selects_the_extra_parameters(model):
    """project_t reads and writes the distortion parameters through ``extra_slice`` (a view): it
    must select exactly ``extra_idxs``, in order, for every model (none for the pinhole ones)."""
    cam = get_model(model)
    params = torch.arange(10.0)
    assert params[cam.extra_slice].tolist() == [float(i) for i in cam.extra_idxs]
