"""Sparse global alignment (recon.align) on a synthetic scene with known geometry: exact canonical
pointmaps (random per-image scale, as a pair network gives) and exact matches must give back the
cameras; noisy ones must stay close; the final BA brings a free principal point back."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from align_synthetic import rotation_errors, synthetic_scene
from recon.align import AlignmentOptions, gamma_loss, sparse_global_alignment
from recon.align.model import ModelLayout, to_reconstruction
from recon.align.sparse_ga import chain_poses, depth_prior_loss, pair_scores, project, spanning_tree
from recon.ba import BAOptions, adjust

# 300 + 300 iterations (the MASt3R demo's counts; the reference function defaults to 500 + 500).
FAST = dict(niter1=300, niter2=300, progress=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_gamma_loss_has_unit_slope_at_zero_and_is_robust_below_one():
    d = torch.tensor([0.0, 1e-4, 100.0])
    for gamma in (0.4, 1.1):
        loss = gamma_loss(d, gamma)
        assert float(loss[0]) == 0.0
        assert float(loss[1]) == pytest.approx(1e-4, rel=1e-2)
    assert float(gamma_loss(d, 0.4)[2]) < 20.0  # grows like d^0.4, not d


def test_reprojections_are_not_clipped_at_high_resolution():
    # a point 4000 px right of the principal point of a 8000-px-wide camera (the reference clipped at 2000)
    uv = project(torch.eye(3)[None], torch.zeros(1, 3), torch.tensor([1000.0]), torch.tensor([[4000.0, 3000.0]]),
                 torch.tensor([[4.0, 0.0, 1.0]]))
    assert uv[0].tolist() == pytest.approx([8000.0, 3000.0])


def test_pose_chain_on_exact_pointmaps_puts_matched_anchors_on_one_world_point():
    """The initial poses alone (spanning tree, one Procrustes per edge) are exact on exact input:
    every match's two anchors land on the same world point, and the rotations are the true ones."""
    scene = synthetic_scene(num_images=6, num_points=400, seed=3)
    data = scene.data
    used = torch.ones(len(data.match0), dtype=torch.bool)
    order, parent = spanning_tree(pair_scores(data, used))
    scale, rotation, centre = chain_poses(data, used, order, parent)
    image = data.anchor_image
    world = (rotation[image] @ (scale[image, None] * data.points)[..., None])[..., 0] + centre[image]
    gap = (world[data.match0] - world[data.match1]).norm(dim=-1)
    assert gap.max() < 1e-5 * world.std(0).norm()
    # degrees; arccos of float32 rotations resolves angles to ~0.03 degree
    assert rotation_errors(rotation.transpose(1, 2).double().numpy(), scene.rotations).max() < 0.05


def test_exact_pointmaps_and_matches_give_back_the_cameras():
    scene = synthetic_scene(num_images=5, num_points=500, seed=0)
    result = sparse_global_alignment(scene.data, AlignmentOptions(opt_pp=False, **FAST))
    errors = rotation_errors(result.rotation.double().numpy(), scene.rotations)
    assert errors.max() < 0.1  # degrees, every pair
    assert abs(float(result.focal[0]) / scene.focals[0] - 1) < 0.005


def test_noisy_pointmaps_and_keypoints_stay_close():
    """1% depth noise on the pointmaps, 0.5 px on the keypoints. Measured on this scene: max pair
    rotation error 0.37 degree, focal error 0.18%; bundle adjustment of the same observations
    reaches 0.26 degree and 0.31%, i.e. this is the pixel-noise floor of a 256x192 scene (the
    depth noise alone is removed entirely by the fine stage: 0.00 degree)."""
    scene = synthetic_scene(num_images=5, num_points=500, depth_noise=0.01, pixel_noise=0.5, seed=1)
    result = sparse_global_alignment(scene.data, AlignmentOptions(opt_pp=False, **FAST))
    errors = rotation_errors(result.rotation.double().numpy(), scene.rotations)
    assert errors.max() < 0.5
    assert abs(float(result.focal[0]) / scene.focals[0] - 1) < 0.02


def test_cameras_keep_their_own_intrinsics_and_ba_refines_the_model():
    """Two cameras (focal 220 and 300) alternate over 6 images; each camera's focal is recovered
    (principal point free, as in the reference), and recon.ba on the model built from the alignment
    (principal point refined: the alignment's Adam leaves it ~1-2 px off) ends with sub-0.1-pixel
    reprojection error and every relative rotation within 0.1 degree."""
    scene = synthetic_scene(num_images=6, num_points=500, focals=(220.0, 300.0), seed=2)
    result = sparse_global_alignment(scene.data, AlignmentOptions(opt_pp=True, **FAST))
    assert np.abs(result.focal.numpy() / np.array([220.0, 300.0]) - 1).max() < 0.01
    layout = ModelLayout([f"im{k}.png" for k in range(6)], list(range(1, 7)), [1, 2], ["PINHOLE", "PINHOLE"])
    model = to_reconstruction(scene.data, result, layout)
    assert model.num_reg_images() == 6 and model.num_points3D() > 300
    summary = adjust(model, BAOptions(refine_principal_point=True, max_num_iterations=50, device="cpu"))
    assert summary.termination != "FAILURE"
    model.update_point_3d_errors()
    assert model.compute_mean_reprojection_error() < 0.1
    rotations = np.stack([model.image(k).cam_from_world().rotation.matrix() for k in range(1, 7)])
    assert rotation_errors(rotations, scene.rotations).max() < 0.1


def sparse_depth_maps(scene, names: list[str], width: int = 256, height: int = 192) -> dict[str, np.ndarray]:
    """Depth maps holding each anchor's true depth at the pixel containing it, 0 (unknown) elsewhere."""
    keypoints, image = scene.data.keypoints.numpy(), scene.data.anchor_image.numpy()
    maps = {name: np.zeros((height, width), np.float32) for name in names}
    for k, name in enumerate(names):  # test data
        cols, rows = np.floor(keypoints[image == k]).astype(int).T
        maps[name][rows, cols] = scene.depths[image == k]
    return maps


@pytest.mark.parametrize("depth_prior_weight", [0.0, 10.0])
def test_mast3r_sga_mapper_reads_the_stage_files(tmp_path, depth_prior_weight):
    """The mapper end to end from files laid out as the MASt3R stage writes them (canonical
    pointmaps with hloc keypoints, hloc matches, pairs.txt) plus a database: exact input gives
    back the cameras, so the pixel conventions and id bookkeeping between the files agree. With
    the depth-prior term on, exact prior depths (priors-depth.h5, as the priors stage writes it)
    keep the answer exact."""
    import pycolmap

    from recon.io import h5
    from recon.io.pairs import write_pairs
    from recon.mapping import MAPPERS

    scene = synthetic_scene(num_images=4, num_points=400, seed=3)
    data, n = scene.data, 4
    names = [f"view{k}.png" for k in range(n)]
    image = data.anchor_image.numpy()
    offsets = np.searchsorted(image, np.arange(n))
    with pycolmap.Database.open(str(tmp_path / "database.db")) as db:
        camera_id = db.write_camera(pycolmap.Camera.create_from_model_name(1, "SIMPLE_RADIAL", 300.0, 256, 192))
        for name in reversed(names):  # database ids in another order than the names
            db.write_image(pycolmap.Image(name=name, camera_id=camera_id))
    with h5.H5Writer(tmp_path / "mast3r-canonical.h5") as writer:
        for k, name in enumerate(names):
            rows = image == k
            group = writer.file.create_group(name)
            group.create_dataset("points", data=data.points[rows].numpy())
            group.create_dataset("confidence", data=data.confidence[rows].numpy())
            group.create_dataset("keypoints", data=data.keypoints[rows].numpy() - 0.5)  # hloc convention
    pairs = [(names[i], names[j]) for i in range(n) for j in range(i + 1, n)]
    write_pairs(tmp_path / "pairs.txt", pairs)
    a, b = data.match0.numpy(), data.match1.numpy()
    with h5.H5Writer(tmp_path / "matches.h5") as writer:
        for i, j in ((i, j) for i in range(n) for j in range(i + 1, n)):
            sel = (image[a] == i) & (image[b] == j)
            matches0 = np.full(np.count_nonzero(image == i), -1)
            matches0[a[sel] - offsets[i]] = b[sel] - offsets[j]
            h5.write_matches(writer, names[i], names[j], matches0, np.where(matches0 >= 0, 10.0, 0.0))
    if depth_prior_weight > 0:
        from recon.priors.depth import DEPTH_FILE, ArrayDepthSource, cache_depths
        cache_depths(lambda: ArrayDepthSource(sparse_depth_maps(scene, names)), names, tmp_path / DEPTH_FILE, "s")
    conf = {**MAPPERS.get("mast3r_sga").defaults, "niter1": 300, "niter2": 300,
            "depth_prior_weight": depth_prior_weight}
    model = MAPPERS.get("mast3r_sga").function(tmp_path / "database.db", tmp_path, tmp_path, conf, torch.device("cpu"))
    assert model.num_reg_images() == n
    by_name = {im.name: im for im in model.images.values()}
    rotations = np.stack([by_name[name].cam_from_world().rotation.matrix() for name in names])
    assert rotation_errors(rotations, scene.rotations).max() < 0.1
    assert abs(model.cameras[camera_id].focal_length / scene.focals[0] - 1) < 0.005
    assert model.compute_mean_reprojection_error() < 0.05


def test_depth_prior_loss_compares_depth_ratios_only():
    """Zero for depths proportional to the prior at any scale (the model's scale is arbitrary);
    otherwise the mean absolute log error about the median ratio."""
    prior = torch.tensor([1.0, 2.0, 4.0, 8.0])
    assert float(depth_prior_loss(3.7 * prior, prior.log())) == pytest.approx(0.0, abs=1e-6)
    off = prior * torch.tensor([1.0, 1.0, 1.0, 1.5])  # one depth 50 % too far
    assert float(depth_prior_loss(0.2 * off, prior.log())) == pytest.approx(np.log(1.5) / 4, rel=1e-5)


def test_depth_prior_helps_where_pointmaps_and_views_are_weak():
    """Three views, pointmap depths 10 % noisy, keypoints 1 px noisy: the reprojection loss alone
    leaves the cameras off (measured: worst pair rotation 1.65 degrees, focal 1.8 % off); with the
    exact metric depth as a prior (depth_weight 10) they improve to 0.98 degree and 0.6 %.
    (With 2 % independent noise on every prior depth the gain shrinks to 1.38 degrees and 1.0 %.)"""
    scene = synthetic_scene(num_images=3, num_points=500, depth_noise=0.1, pixel_noise=1.0, seed=1)
    scene.data.prior_depth = torch.tensor(scene.depths, dtype=torch.float32)
    errors = {}
    for weight in (0.0, 10.0):
        result = sparse_global_alignment(scene.data, AlignmentOptions(opt_pp=False, depth_weight=weight, **FAST))
        errors[weight] = (rotation_errors(result.rotation.double().numpy(), scene.rotations).max(),
                          abs(float(result.focal[0]) / scene.focals[0] - 1))
    assert errors[0.0][0] > 1.0 and errors[0.0][1] > 0.01  # the weak case
    assert errors[10.0][0] < 0.7 * errors[0.0][0]
    assert errors[10.0][1] < 0.5 * errors[0.0][1]


def test_depth_weight_needs_prior_depths():
    scene = synthetic_scene(num_images=3, num_points=100, seed=0)
    with pytest.raises(ValueError, match="prior_depth"):
        sparse_global_alignment(scene.data, AlignmentOptions(depth_weight=1.0, **FAST))


def test_mast3r_sga_reads_prior_depths_at_its_anchors(tmp_path):
    """The mapper's depth prior comes from the priors stage's priors-depth.h5: each anchor gets
    the depth of the pixel containing it (COLMAP pixels), unknown pixels give NaN."""
    from recon.mapping.mast3r_sga import anchor_prior_depths
    from recon.priors.depth import DEPTH_FILE, ArrayDepthSource, cache_depths

    scene = synthetic_scene(num_images=3, num_points=200, seed=4)
    keypoints, image = scene.data.keypoints.numpy(), scene.data.anchor_image.numpy()
    names = [f"im{k}.png" for k in range(3)]
    maps = sparse_depth_maps(scene, names)
    maps["im1.png"][:] = 0  # no prior for one image
    cache_depths(lambda: ArrayDepthSource(maps), names, tmp_path / DEPTH_FILE, stamp="s")
    depth = anchor_prior_depths(tmp_path / DEPTH_FILE, names, scene.data).numpy()
    pixel = image * 10**6 + np.floor(keypoints[:, 1]).astype(int) * 1000 + np.floor(keypoints[:, 0]).astype(int)
    alone = np.isin(pixel, np.flatnonzero(np.bincount(pixel) == 1))  # anchors not sharing their pixel
    known = image != 1
    assert (known & alone).sum() > 300
    np.testing.assert_allclose(depth[known & alone], scene.depths[known & alone], rtol=1e-3)  # float16 storage
    assert np.isnan(depth[~known]).all()
    with pytest.raises(RuntimeError, match="depth priors choice"):
        anchor_prior_depths(tmp_path / "missing.h5", names, scene.data)
