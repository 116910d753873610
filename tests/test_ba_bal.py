"""BAL reader/writer, its mapping to COLMAP's conventions, and the synthetic generator."""
from __future__ import annotations

import pytest
import torch

from recon.ba import BAOptions, read_bal, solve, synthetic_bal, write_bal
from recon.ba.bal import SYNTHETIC_PRESETS, bal_cost_reference
from recon.ba.solver import State, Structure, evaluate
from conftest import shared_path


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def initial_cost(problem) -> float:
    return solve(problem, BAOptions(device="cpu", max_num_iterations=0))[1].initial_cost


def test_bal_mapping_gives_the_bal_objective():
    """Cost through the COLMAP mapping (RADIAL, F = diag(1,-1,-1), (x,-y)) equals the cost in BAL's
    own model (angle-axis, -z forward) computed independently, behind-camera terms excluded, and the
    file's documented reference (SOURCE.txt: 2.344094e+05 after dropping 31 behind-camera observations)."""
    problem = read_bal(shared_path("data", "bal", "problem-49-1800-shrink-pre.txt"))
    assert (problem.num_images, problem.num_points, problem.num_observations) == (49, 1800, 10863)
    ours = initial_cost(problem)
    assert abs(ours / bal_cost_reference(problem) - 1) < 1e-12
    assert abs(ours / 2.345198e5 - 1) > 1e-4  # behind-camera observations are not counted...
    assert abs(ours / 2.344094e5 - 1) < 1e-6  # ...exactly as COLMAP's cost zeroes them


def test_write_then_read_round_trips(tmp_path):
    problem, _ = synthetic_bal(6, 80, seed=0)
    path = tmp_path / "problem.txt"
    write_bal(problem, path)
    back = read_bal(path)
    assert torch.allclose(back.rotations, problem.rotations, atol=1e-12)
    assert torch.allclose(back.translations, problem.translations, atol=1e-12)
    assert torch.allclose(back.points, problem.points, atol=1e-12)
    assert torch.allclose(back.camera_params, problem.camera_params, atol=1e-12)
    assert torch.allclose(back.obs_xy, problem.obs_xy, rtol=1e-9)
    assert abs(initial_cost(back) / initial_cost(problem) - 1) < 1e-8


def test_write_refuses_non_bal_cameras(tmp_path):
    problem, _ = synthetic_bal(4, 20, seed=1)
    problem.camera_params[0, 1] = 5.0  # a principal point BAL cannot express
    with pytest.raises(ValueError, match="BAL needs"):
        write_bal(problem, tmp_path / "x.txt")
    assert not (tmp_path / "x.txt").exists()


def test_read_reports_a_broken_file(tmp_path):
    path = tmp_path / "broken.txt"
    path.write_text("2 1 1\n0 0 1.0 oops\n")
    with pytest.raises(ValueError, match="not a valid BAL file"):
        read_bal(path)


def test_synthetic_generator_statistics():
    """Seeded and reproducible; tracks of 2..2k-2 views; outlier fraction as requested."""
    a, truth = synthetic_bal(50, 2000, mean_track=5, outlier_ratio=0.01, noise_px=0.5, seed=7)
    b, _ = synthetic_bal(50, 2000, mean_track=5, outlier_ratio=0.01, noise_px=0.5, seed=7)
    assert torch.equal(a.obs_xy, b.obs_xy) and torch.equal(a.points, b.points)
    lengths = torch.bincount(a.obs_point)
    assert lengths.min() >= 1 and lengths.max() <= 8 and abs(lengths.float().mean() - 5) < 0.5
    # Residuals at the truth: ~0.5 px noise, plus 1% gross outliers.
    st = Structure(truth, BAOptions(device="cpu"))
    r = evaluate(st, State(truth.rotations, truth.translations, truth.camera_params, truth.points), BAOptions(), False).residuals
    norms = r.norm(dim=-1)
    assert 0.005 < float((norms > 5).float().mean()) < 0.02
    assert abs(float(r[norms < 5].std()) - 0.5) < 0.05
    assert set(SYNTHETIC_PRESETS) == {"0.1M", "1.3M", "5M"}
