"""Evaluation math against hand-made poses whose errors are known exactly."""
from __future__ import annotations

import json

import numpy as np
import pycolmap
import pytest
from scipy.spatial.transform import Rotation

from recon.datasets import GroundTruth, GroundTruthImage, load_ground_truth
from recon.evaluate import (
    accuracy,
    direction_angle_deg,
    evaluate,
    format_table,
    mean_average_accuracy,
    pair_errors,
    pose_auc,
    rotation_angle_deg,
    umeyama,
)
from recon.evaluate.cli import main

from conftest import shared_path


def rot(axis: str, degrees: float) -> np.ndarray:
    return Rotation.from_euler(axis, degrees, degrees=True).as_matrix()


def random_rotation(seed: int) -> np.ndarray:
    return Rotation.random(random_state=seed).as_matrix()


def pose_from_center(R: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cam_from_world (R, t) of a camera with orientation R and centre C."""
    return R, -R @ C


def apply_gauge(R: np.ndarray, t: np.ndarray, scale: float, Q: np.ndarray, T: np.ndarray):
    """Poses after moving the world by x' = scale Q x + T (what an SfM gauge freedom does)."""
    R_new = R @ Q.T
    return R_new, scale * t - R_new @ T


PINHOLE = pycolmap.Camera(model="PINHOLE", width=640, height=480, params=[500.0, 500.0, 320.0, 240.0])


def make_gt(poses: dict[str, tuple[np.ndarray, np.ndarray]]) -> GroundTruth:
    return GroundTruth([GroundTruthImage(n, R, t, PINHOLE) for n, (R, t) in poses.items()])


# --- angles ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("degrees", [1e-7, 0.5, 37.0, 90.0, 179.9999])
def test_rotation_angle_is_the_angle_of_the_rotation_between(degrees):
    R_a = random_rotation(0)
    axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    R_b = R_a @ Rotation.from_rotvec(np.radians(degrees) * axis).as_matrix()
    assert rotation_angle_deg(R_a, R_b) == pytest.approx(degrees, rel=1e-8, abs=1e-12)
    assert rotation_angle_deg(R_b, R_a) == pytest.approx(degrees, rel=1e-8, abs=1e-12)


def test_direction_angle_ignores_length_and_spans_0_to_180():
    a = np.array([1.0, 0.0, 0.0])
    b = 7.0 * np.array([np.cos(np.radians(30)), np.sin(np.radians(30)), 0.0])
    assert direction_angle_deg(a, b) == pytest.approx(30.0, abs=1e-12)
    assert direction_angle_deg(a, -b) == pytest.approx(150.0, abs=1e-12)
    assert direction_angle_deg(a, 1e-9 * a) == pytest.approx(0.0, abs=1e-12)


# --- pairwise errors on hand-made poses ----------------------------------------------------------

def hand_made_scene():
    """GT: three cameras. Estimate (up to an arbitrary similarity): camera b has a rotation error
    of 10 deg and the direction a->b off by 25 deg; camera c is not registered."""
    R_a, C_a = random_rotation(1), np.array([0.5, -1.0, 2.0])
    R_b, C_b = random_rotation(2), np.array([2.0, 0.5, 1.0])
    R_c, C_c = random_rotation(3), np.array([-1.0, 3.0, 0.0])
    gt = {"a": pose_from_center(R_a, C_a), "b": pose_from_center(R_b, C_b), "c": pose_from_center(R_c, C_c)}

    R_b_est = rot("y", 10.0) @ R_b  # relative rotation b_from_a off by 10 deg
    t_ba_gt = R_b @ (C_a - C_b)  # direction of a seen from b, in b's frame
    t_ba_est = 3.0 * Rotation.from_rotvec(np.radians(25.0) * np.cross(t_ba_gt, [0.0, 0.0, 1.0])
                                          / np.linalg.norm(np.cross(t_ba_gt, [0.0, 0.0, 1.0]))).apply(t_ba_gt)
    C_b_est = C_a - R_b_est.T @ t_ba_est  # so that R_b_est (C_a - C_b_est) = t_ba_est
    est = {"a": pose_from_center(R_a, C_a), "b": pose_from_center(R_b_est, C_b_est)}
    scale, Q, T = 0.37, random_rotation(4), np.array([10.0, -4.0, 2.5])
    est = {name: apply_gauge(R, t, scale, Q, T) for name, (R, t) in est.items()}
    return gt, est


def as_model(est: dict[str, tuple[np.ndarray, np.ndarray]], camera: pycolmap.Camera = PINHOLE) -> pycolmap.Reconstruction:
    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera(model=camera.model.name, width=camera.width, height=camera.height,
                          params=np.asarray(camera.params), camera_id=1)
    rec.add_camera_with_trivial_rig(cam)
    for image_id, (name, (R, t)) in enumerate(sorted(est.items()), start=1):
        rec.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=1, image_id=image_id),
                                         pycolmap.Rigid3d(pycolmap.Rotation3d(R), t))
    return rec


def test_known_rotation_and_translation_errors_are_recovered_exactly():
    gt, est = hand_made_scene()
    result = evaluate(as_model(est), make_gt(gt))
    assert result["num_pairs"] == 3 and result["num_pairs_registered"] == 1
    pair = result["pair_errors"]
    assert pair["rotation"]["median"] == pytest.approx(10.0, abs=1e-9)
    assert pair["translation"]["median"] == pytest.approx(25.0, abs=1e-9)
    assert pair["pose"]["median"] == pytest.approx(25.0, abs=1e-9)
    # the pairs (a, c) and (b, c) fail: c is unregistered
    assert result["num_registered"] == 2 and result["registration_rate"] == pytest.approx(2 / 3)
    assert result["rra15"] == pytest.approx(1 / 3) and result["rta15"] == 0.0
    # pose error 25: below 25 of the 30 thresholds 1..30 for one pair in three
    assert result["maa30"] == pytest.approx((30 - 25) / 30 / 3)
    assert result["auc"]["20"] == 0.0
    # AUC@30 of the single finite error 25 out of three pairs: recall 1/3 from 25 to 30
    assert pose_auc(np.array([25.0, np.inf, np.inf]), (30,))[0] == pytest.approx(
        (25 * (1 / 3) / 2 + 5 * (1 / 3)) / 30)


def stacked(poses: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 3) rotations and (N, 3) translations in name order."""
    names = sorted(poses)
    return np.stack([poses[n][0] for n in names]), np.stack([poses[n][1] for n in names])


def test_pair_errors_are_inf_for_unregistered_images():
    gt, _ = hand_made_scene()
    R, t = stacked(gt)
    errors = pair_errors(R, t, R, t, np.array([True, False, True]), 1.0, 1.0)
    assert errors.i.tolist() == [0, 0, 1] and errors.j.tolist() == [1, 2, 2]
    assert errors.registered.tolist() == [False, True, False]
    assert np.isinf(errors.pose[[0, 2]]).all()
    assert np.isinf(errors.rotation[[0, 2]]).all() and np.isinf(errors.translation[[0, 2]]).all()
    assert errors.pose[1] == pytest.approx(0.0, abs=1e-9)


def test_pair_errors_agree_with_pycolmap_pose_algebra():
    """Independent reference: relative poses composed with pycolmap.Rigid3d, angles from
    Rotation3d.angle_to and the arccos of normalised translations (fine away from 0 deg)."""
    rng = np.random.default_rng(3)
    gt = {f"{k}": (random_rotation(10 + k), rng.normal(size=3)) for k in range(6)}
    est = {n: (Rotation.from_rotvec(rng.normal(scale=0.2, size=3)).as_matrix() @ R, t + rng.normal(scale=0.3, size=3))
           for n, (R, t) in gt.items()}
    errors = pair_errors(*stacked(gt), *stacked(est), np.ones(6, bool), 1.0, 1.0)
    rigid = {d: [pycolmap.Rigid3d(pycolmap.Rotation3d(R), t) for _, (R, t) in sorted(poses.items())]
             for d, poses in (("gt", gt), ("est", est))}
    for k, (i, j) in enumerate(zip(errors.i, errors.j)):
        rel_gt = rigid["gt"][j] * rigid["gt"][i].inverse()
        rel_est = rigid["est"][j] * rigid["est"][i].inverse()
        expected_rotation = np.degrees(rel_gt.rotation.angle_to(rel_est.rotation))
        u, v = (r.translation / np.linalg.norm(r.translation) for r in (rel_gt, rel_est))
        expected_translation = np.degrees(np.arccos(np.clip(u @ v, -1.0, 1.0)))
        assert errors.rotation[k] == pytest.approx(expected_rotation, abs=1e-6)
        assert errors.translation[k] == pytest.approx(expected_translation, abs=1e-6)


def test_translation_sign_flip_is_180_deg_unless_sign_ambiguous():
    R = random_rotation(5)
    gt = {"a": pose_from_center(R, np.zeros(3)), "b": pose_from_center(R, np.array([1.0, 2.0, 0.5]))}
    est = {"a": gt["a"], "b": pose_from_center(R, -np.array([1.0, 2.0, 0.5]))}  # b mirrored through a
    strict = evaluate(as_model(est), make_gt(gt))
    folded = evaluate(as_model(est), make_gt(gt), sign_ambiguous=True)
    assert strict["translation_error_median"] == pytest.approx(180.0, abs=1e-9)
    assert folded["translation_error_median"] == pytest.approx(0.0, abs=1e-9)
    assert strict["rotation_error_median"] == pytest.approx(0.0, abs=1e-9)


def test_zero_baseline_scores_rotation_only_and_a_collapsed_estimate_worst():
    C = np.array([1.0, 1.0, 1.0])
    gt = {"a": pose_from_center(np.eye(3), C), "b": pose_from_center(rot("z", 20.0), C),
          "c": pose_from_center(np.eye(3), C + [1.0, 0.0, 0.0])}
    est = {"a": gt["a"], "b": gt["b"], "c": pose_from_center(np.eye(3), C)}  # c collapsed onto a, b
    errors = pair_errors(*stacked(gt), *stacked(est), np.ones(3, bool), 1.0, 1.0)
    # (a, b): GT has no baseline -> translation error 0, rotation 0 (both 20 deg apart)
    assert errors.translation[0] == 0.0 and errors.rotation[0] == pytest.approx(0.0, abs=1e-9)
    # (a, c), (b, c): GT baseline 1, estimate 0 -> the worst direction error
    assert errors.translation[1:].tolist() == [180.0, 180.0]


# --- accuracy measures ----------------------------------------------------------------------------

def test_pose_auc_matches_hand_integration():
    errors = np.array([3.0, 0.5, np.inf, 2.0])
    # recall curve through (0,0) (0.5,.25) (2,.5) (3,.75), flat at .75 afterwards
    at_1 = (0.5 * 0.25 / 2 + 0.5 * 0.25) / 1
    at_5 = (0.5 * 0.25 / 2 + 1.5 * 0.75 / 2 + 1.0 * 1.25 / 2 + 2.0 * 0.75) / 5
    at_20 = (0.5 * 0.25 / 2 + 1.5 * 0.75 / 2 + 1.0 * 1.25 / 2 + 17.0 * 0.75) / 20
    assert pose_auc(errors, (1, 5, 20)) == pytest.approx([at_1, at_5, at_20], abs=1e-15)
    assert at_5 == pytest.approx(0.55)


def test_pose_auc_is_one_for_exact_poses_and_zero_for_failures():
    assert pose_auc(np.zeros(4), (1, 5)) == [1.0, 1.0]
    assert pose_auc(np.full(3, np.inf), (1, 5)) == [0.0, 0.0]


def test_accuracy_is_strictly_below_threshold():
    assert accuracy(np.array([14.999, 15.0, 3.0, np.inf]), 15.0) == 0.5


def test_mean_average_accuracy_over_integer_thresholds():
    errors = np.array([0.5, 1.0, 2.5, 30.0, 45.0, np.inf])
    # below T for T = 1: {0.5}; T = 2: {0.5, 1}; T = 3..29: 3 errors; T = 30 (inclusive): 4
    assert mean_average_accuracy(errors, 30) == pytest.approx((1 + 2 + 27 * 3 + 4) / (6 * 30))


def test_mean_average_accuracy_equals_cumulative_histogram_definition():
    errors = np.random.default_rng(0).uniform(0, 40, size=500)
    histogram, _ = np.histogram(errors, bins=np.arange(31))
    assert mean_average_accuracy(errors, 30) == pytest.approx(np.mean(np.cumsum(histogram) / 500), abs=1e-15)


# --- Umeyama --------------------------------------------------------------------------------------

def test_umeyama_recovers_a_known_similarity_exactly():
    src = np.random.default_rng(1).normal(size=(20, 3))
    scale, R, t = 2.5, random_rotation(6), np.array([1.0, -2.0, 3.0])
    sim = umeyama(src, scale * src @ R.T + t)
    assert sim.scale == pytest.approx(scale, rel=1e-12)
    np.testing.assert_allclose(sim.rotation, R, atol=1e-12)
    np.testing.assert_allclose(sim.translation, t, atol=1e-12)


def test_umeyama_least_squares_agrees_with_pycolmap_on_noisy_points():
    rng = np.random.default_rng(4)
    src = rng.normal(size=(30, 3))
    dst = 2.0 * src @ random_rotation(8).T + 1.0 + rng.normal(scale=0.1, size=(30, 3))
    ours, reference = umeyama(src, dst), pycolmap.estimate_sim3d(src, dst)
    assert ours.scale == pytest.approx(reference.scale, rel=1e-9)
    np.testing.assert_allclose(ours.rotation, reference.rotation.matrix(), atol=1e-9)
    np.testing.assert_allclose(ours.translation, reference.translation, atol=1e-9)


def test_umeyama_never_returns_a_reflection():
    src = np.random.default_rng(2).normal(size=(10, 3))
    sim = umeyama(src, src * np.array([1.0, 1.0, -1.0]))  # a mirror image: best proper rotation
    assert np.linalg.det(sim.rotation) == pytest.approx(1.0)


# --- evaluate() on models -------------------------------------------------------------------------

def test_ground_truth_against_itself_is_perfect():
    gt = load_ground_truth(shared_path("data", "middlebury_temple", "templeRing_partial"))
    result = evaluate(gt.to_reconstruction(), gt)
    assert result["num_registered"] == result["num_images_gt"] == 19
    assert result["num_pairs"] == 19 * 18 // 2
    assert all(value == pytest.approx(1.0, abs=1e-9) for value in result["auc"].values())
    assert result["rra15"] == result["rta15"] == result["maa30"] == 1.0
    assert result["pair_errors"]["pose"]["max"] == pytest.approx(0.0, abs=1e-6)
    assert result["center_error_median_relative"] == pytest.approx(0.0, abs=1e-12)
    assert result["focal_error_median"] == 0.0
    json.dumps(result, allow_nan=False)


def test_similarity_transformed_model_with_a_missing_image_and_wrong_focal():
    gt = load_ground_truth(shared_path("data", "middlebury_temple", "templeRing_partial"))
    model = gt.to_reconstruction()
    model.transform(pycolmap.Sim3d(3.0, pycolmap.Rotation3d(random_rotation(7)), [1.0, 2.0, 3.0]))
    dropped = model.find_image_with_name("templeR0020.png")
    model.deregister_frame(dropped.frame_id)
    for camera in model.cameras.values():
        camera.params = np.asarray(camera.params) * np.array([1.1, 1.1, 1.0, 1.0])  # focal +10 %
    result = evaluate(model, gt)
    good = (19 * 18 // 2 - 18) / (19 * 18 // 2)  # the 18 pairs of the missing image fail
    assert result["num_registered"] == 18
    assert all(value == pytest.approx(good, abs=1e-9) for value in result["auc"].values())
    assert [result["rra15"], result["rta15"], result["maa30"]] == pytest.approx([good] * 3, abs=1e-12)
    assert result["center_error_median"] == pytest.approx(0.0, abs=1e-9)
    assert result["sim3"]["scale"] == pytest.approx(1 / 3.0, rel=1e-9)
    assert result["focal_error_median"] == pytest.approx(0.1, rel=1e-9)
    assert result["per_image"]["templeR0020.png"] == {"registered": False, "center_error": None, "focal_error": None}
    assert "18 / 19" in format_table(result)


def test_focal_error_compares_at_the_ground_truth_image_size():
    gt, est = hand_made_scene()
    half = pycolmap.Camera(model="SIMPLE_PINHOLE", width=320, height=240, params=[260.0, 160.0, 120.0])
    result = evaluate(as_model(est, half), make_gt(gt))  # 260 at half size = 520 vs 500
    assert result["focal_error_median"] == pytest.approx(0.04, rel=1e-12)


def test_empty_model_scores_zero():
    gt, _ = hand_made_scene()
    result = evaluate(pycolmap.Reconstruction(), make_gt(gt))
    assert result["num_registered"] == 0 and result["num_pairs"] == 3
    assert list(result["auc"].values()) == [0.0] * 4
    assert result["rra15"] == result["rta15"] == result["maa30"] == 0.0
    assert result["center_error_median"] is None and result["focal_error_median"] is None
    assert "n/a" in format_table(result)
    json.dumps(result, allow_nan=False)


def test_model_with_foreign_image_names_is_an_error():
    gt, est = hand_made_scene()
    with pytest.raises(ValueError, match="none of the model's 2 registered images"):
        evaluate(as_model({f"images/{n}": p for n, p in est.items()}), make_gt(gt))


# --- command line ---------------------------------------------------------------------------------

def test_cli_prints_table_and_writes_json(tmp_path, capsys):
    gt_dir = shared_path("data", "strecha_fountain_p11", "gt_dense_cameras")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    load_ground_truth(gt_dir).to_reconstruction().write_text(str(model_dir))
    out = tmp_path / "eval" / "result.json"
    assert main([str(model_dir), "--gt", str(gt_dir), "--json", str(out)]) == 0
    assert "11 / 11" in capsys.readouterr().out
    result = json.loads(out.read_text())
    for key in ("num_images_gt", "num_registered", "auc", "rra15", "rta15", "maa30",
                "center_error_median", "focal_error_median"):
        assert key in result
    assert set(result["auc"]) == {"1", "5", "10", "20"}
    assert [p.name for p in out.parent.iterdir()] == ["result.json"]  # no temporary left behind


def test_cli_missing_path_is_one_clear_error(tmp_path, capsys):
    out = tmp_path / "result.json"
    assert main([str(tmp_path / "nope"), "--gt", str(tmp_path), "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model not found" in err and err.count("\n") == 1
    assert not out.exists()
