"""Dense matches to COLMAP tracks: quantisation, one-to-one pairs, bounded memory, and a full
reconstruction of a rendered scene from exact dense correspondences."""
from __future__ import annotations

import numpy as np
import pytest

from matchers.base import ConfigError
from recon.config import load_config
from recon.datasets.render import render_scene
from recon.evaluate import evaluate
from recon.io import h5
from recon.match.dense import CellAccumulator, one_to_one, quantize
from recon.pipeline import reconstruct


def test_quantize_follows_hloc_pixel_convention():
    # hloc coordinates: pixel (0, 0) spans [-0.5, 0.5); a 4-pixel cell spans [-0.5, 3.5).
    points = np.array([[-0.5, -0.5], [3.49, 0.0], [3.5, 0.0], [0.0, 4.0], [99.5, 0.0], [-0.6, 0.0]])
    cells = quantize(points, 4.0, width=100, height=50)
    assert cells.tolist() == [0, 0, 1, 25, -1, -1]  # 25 columns per row; outside -> -1


def test_one_to_one_keeps_the_best_match_per_cell():
    cells0 = np.array([5, 5, 7, 8])
    cells1 = np.array([1, 2, 2, 3])
    scores = np.array([0.9, 0.95, 0.5, 0.1])
    kept = one_to_one(cells0, cells1, scores)
    assert kept.tolist() == [1, 3]  # cell0 5 -> best is index 1 (0.95), which takes cell1 2 from index 2


def test_cell_accumulator_means_positions_per_cell():
    accumulator = CellAccumulator()
    accumulator.add(np.array([3, 1]), np.array([[1.0, 1.0], [10.0, 10.0]]))
    accumulator.add(np.array([3]), np.array([[2.0, 3.0]]))
    assert accumulator.cells.tolist() == [1, 3]
    np.testing.assert_allclose(accumulator.keypoints(), [[10, 10], [1.5, 2.0]])
    assert accumulator.counts.tolist() == [1, 2]


@pytest.fixture(scope="module")
def rendered_scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("scene") / "scene"
    render_scene(out, num_views=6, width=256, height=192, seed=5, supersample=1, write_depth=True)
    return out


def test_exact_dense_matches_reconstruct_the_scene(rendered_scene, tmp_path):
    """The pipeline with a perfect dense matcher: every view registers, relative poses within a
    degree of the truth for nearly every pair (AUC@1 >= 0.9), and tracks longer than two views."""
    config = load_config("default", ["features.name=none", "matcher.name=ground_truth_dense",
                                     f"matcher.scene={rendered_scene}", "matcher.grid_step=5", "device=cpu"])
    model, report = reconstruct(rendered_scene / "images", tmp_path / "out", config)
    assert report["num_registered"] == 6
    assert report["mean_track_length"] > 3.0
    metrics = evaluate(model, rendered_scene / "gt")
    assert metrics["auc"]["1"] >= 0.9
    # hloc files: one keypoint per touched cell, matches in hloc's layout.
    names = h5.list_names(tmp_path / "out" / "features.h5")
    assert len(names) == 6
    matches, _ = h5.read_matches(tmp_path / "out" / "matches.h5", names[0], names[1])
    assert len(matches) > 100 and len(np.unique(matches[:, 1])) == len(matches)


@pytest.fixture(scope="module")
def larger_scene(tmp_path_factory):
    """512 x 384: RoMa's keypoint distance (0.005 normalised) is 1.3 px here; at 256 x 192 it is
    0.6 px, tighter than SIFT's repeatability on these renders."""
    out = tmp_path_factory.mktemp("scene512") / "scene"
    render_scene(out, num_views=6, width=512, height=384, seed=5, supersample=1, write_depth=True)
    return out


def test_exact_dense_matcher_at_sift_keypoints_reconstructs_the_scene(larger_scene, tmp_path):
    """``at_keypoints``: the dense matcher matches SIFT's keypoints through its (here exact) warp
    with RoMa's default distance. features.h5 stays SIFT's, every match joins keypoints that really
    correspond (within 2 px of the true transfer), and every view registers with AUC@1 >= 0.9."""
    from recon.datasets.oracle import GroundTruthDenseMatcher

    config = load_config("default", ["features.name=sift", "matcher.name=ground_truth_dense",
                                     f"matcher.scene={larger_scene}", "matcher.at_keypoints=true", "device=cpu"])
    out = tmp_path / "out"
    model, report = reconstruct(larger_scene / "images", out, config)
    assert report["num_registered"] == 6
    assert evaluate(model, larger_scene / "gt")["auc"]["1"] >= 0.9
    oracle = GroundTruthDenseMatcher(scene=str(larger_scene))
    names = h5.list_names(out / "features.h5")
    checked = 0
    for name0, name1 in [(names[0], names[1]), (names[2], names[4])]:
        matches, _ = h5.read_matches(out / "matches.h5", name0, name1)
        kp0, kp1 = h5.read_keypoints(out / "features.h5", name0), h5.read_keypoints(out / "features.h5", name1)
        projected, visible = oracle.transfer(name0, name1, kp0[matches[:, 0]].astype(np.float64))
        assert visible.all()
        assert np.abs(projected - kp1[matches[:, 1]]).max() < 2.0
        checked += len(matches)
    assert checked > 100


def test_at_keypoints_needs_an_extractor():
    with pytest.raises(ConfigError, match="at_keypoints"):
        load_config("roma", ["matcher.at_keypoints=true"])
