"""Ground-truth loaders: each benchmark layout against the same scene written as a COLMAP model."""
from __future__ import annotations

import json

import numpy as np
import pycolmap
import pytest
from PIL import Image

from recon.datasets import (
    load_ground_truth,
    load_middlebury,
    load_strecha,
    load_transforms_json,
)

from conftest import shared_path


def assert_same_poses(a, b, rotation_tol: float, center_tol: float) -> None:
    assert a.names == b.names
    np.testing.assert_allclose(a.rotations(), b.rotations(), atol=rotation_tol, rtol=0)
    np.testing.assert_allclose(a.centers(), b.centers(), atol=center_tol, rtol=0)


def test_strecha_cameras_match_the_colmap_conversion():
    scene = shared_path("data", "strecha_fountain_p11")
    strecha = load_ground_truth(scene / "gt_dense_cameras")
    colmap = load_ground_truth(scene / "gt_colmap_text")
    assert strecha.source.startswith("strecha:") and colmap.source.startswith("colmap:")
    assert len(strecha) == 11 and strecha.names[0] == "0000.jpg"
    # the .camera files print R with 6 digits; the COLMAP text went through a unit quaternion
    extent = np.linalg.norm(np.ptp(colmap.centers(), axis=0))
    assert_same_poses(strecha, colmap, rotation_tol=1e-6, center_tol=1e-6 * extent)
    np.testing.assert_allclose(strecha.translations(), colmap.translations(), atol=1e-6 * extent)
    camera = strecha["0000.jpg"].camera
    assert (camera.model.name, camera.width, camera.height) == ("PINHOLE", 3072, 2048)
    np.testing.assert_allclose(camera.params, colmap["0000.jpg"].camera.params, rtol=1e-12)


def test_strecha_pose_follows_the_file_format(tmp_path):
    """R in the file is camera-to-world and C the centre: COLMAP R = R_file^T, t = -R C."""
    R_file = pycolmap.Rotation3d(np.array([0.1, -0.4, 0.3])).matrix()
    C = np.array([1.5, -2.0, 7.0])
    rows = [[1000, 0, 400], [0, 1001, 300], [0, 0, 1], [0, 0, 0], *R_file.tolist(), C.tolist(), [800, 600]]
    (tmp_path / "a.png.camera").write_text("\n".join(" ".join(f"{v:.17g}" for v in row) for row in rows))
    image = load_strecha(tmp_path)["a.png"]
    np.testing.assert_allclose(image.rotation, R_file.T, atol=1e-15)
    np.testing.assert_allclose(image.translation, -R_file.T @ C, atol=1e-14)
    np.testing.assert_allclose(image.K, [[1000, 0, 400], [0, 1001, 300], [0, 0, 1]])
    rows[3] = [0.1, 0, 0]
    (tmp_path / "a.png.camera").write_text("\n".join(" ".join(map(str, row)) for row in rows))
    with pytest.raises(ValueError, match="distortion"):
        load_strecha(tmp_path)


@pytest.mark.parametrize("subset, count", [("templeRing_partial", 19), ("templeSparseRing", 16)])
def test_middlebury_par_keeps_present_images_and_matches_colmap(subset, count):
    folder = shared_path("data", "middlebury_temple", subset)
    par = load_ground_truth(folder)
    colmap = load_ground_truth(folder / "gt_colmap_text")
    assert len(par) == count == len(list(folder.glob("*.png")))  # the partial par lists 47
    assert_same_poses(par, colmap, rotation_tol=1e-6, center_tol=1e-9)
    np.testing.assert_allclose(par.translations(), colmap.translations(), atol=1e-9)
    camera = par[par.names[0]].camera
    assert (camera.model.name, camera.width, camera.height) == ("PINHOLE", 640, 480)
    np.testing.assert_allclose(camera.params, [1520.4, 1525.9, 302.32, 246.87])


def test_middlebury_without_images_is_an_error(tmp_path):
    par = shared_path("data", "middlebury_temple", "templeSparseRing", "templeSR_par.txt")
    copy = tmp_path / "templeSR_par.txt"
    copy.write_text(par.read_text())
    with pytest.raises(ValueError, match="none of its 16 images"):
        load_middlebury(copy)


def test_ngp_transforms_match_the_colmap_conversion():
    scene = shared_path("data", "ngp_fox")
    ngp = load_ground_truth(scene / "transforms.json")
    colmap = load_ground_truth(scene / "ref_colmap_text")
    assert len(ngp) == 67 and ngp.names[0] == "0001.jpg"  # file_path images/0001.jpg
    extent = np.linalg.norm(np.ptp(colmap.centers(), axis=0))
    assert_same_poses(ngp, colmap, rotation_tol=1e-6, center_tol=1e-6 * extent)
    camera = ngp["0001.jpg"].camera
    assert (camera.model.name, camera.width, camera.height) == ("OPENCV", 1080, 1920)
    np.testing.assert_allclose(camera.params, colmap["0001.jpg"].camera.params, rtol=1e-12)
    assert load_ground_truth(scene).names == ngp.names  # the folder holding transforms.json


def test_nerf_transforms_conventions(tmp_path):
    """OpenGL camera-to-world -> COLMAP; focal from camera_angle_x; suffix-less file paths."""
    (tmp_path / "train").mkdir()
    Image.new("RGB", (200, 100)).save(tmp_path / "train" / "r_0.png")
    Image.new("RGB", (200, 100)).save(tmp_path / "train" / "r_1.png")
    # r_0: identity in OpenGL = at the origin looking down -z with y up
    # r_1: at (0, 0, 4), also looking down -z (towards the origin)
    c2w_1 = np.eye(4)
    c2w_1[2, 3] = 4.0
    frames = [{"file_path": "./train/r_0", "transform_matrix": np.eye(4).tolist()},
              {"file_path": "./train/r_1", "transform_matrix": c2w_1.tolist()}]
    angle = 2 * np.arctan(0.5)  # w / (2 tan(angle / 2)) = w
    (tmp_path / "transforms_train.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    gt = load_transforms_json(tmp_path / "transforms_train.json")
    assert gt.names == ["r_0.png", "r_1.png"]
    np.testing.assert_allclose(gt["r_0.png"].rotation, np.diag([1.0, -1.0, -1.0]), atol=1e-15)
    np.testing.assert_allclose(gt["r_1.png"].center, [0.0, 0.0, 4.0], atol=1e-15)
    # the origin is 4 units in front of r_1 (COLMAP: +z forward)
    x_cam = gt["r_1.png"].rotation @ np.zeros(3) + gt["r_1.png"].translation
    np.testing.assert_allclose(x_cam, [0.0, 0.0, 4.0], atol=1e-15)
    camera = gt["r_0.png"].camera
    assert (camera.model.name, camera.width, camera.height) == ("PINHOLE", 200, 100)
    np.testing.assert_allclose(camera.params, [200.0, 200.0, 100.0, 50.0])
    named_from_root = load_transforms_json(tmp_path / "transforms_train.json", image_root=tmp_path)
    assert named_from_root.names == ["train/r_0.png", "train/r_1.png"]


def test_to_reconstruction_round_trips_through_colmap_text(tmp_path):
    gt = load_ground_truth(shared_path("data", "ngp_fox", "transforms.json"))
    rec = gt.to_reconstruction()
    assert rec.num_cameras() == 1 and rec.num_reg_images() == 67
    rec.write_text(str(tmp_path))
    back = load_ground_truth(tmp_path)
    assert_same_poses(back, gt, rotation_tol=1e-12, center_tol=1e-12)
    np.testing.assert_allclose(back["0001.jpg"].camera.params, gt["0001.jpg"].camera.params, rtol=1e-12)


def test_unknown_or_missing_ground_truth_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ground truth not found"):
        load_ground_truth(tmp_path / "missing")
    with pytest.raises(ValueError, match="no ground truth layout recognised"):
        load_ground_truth(tmp_path)
