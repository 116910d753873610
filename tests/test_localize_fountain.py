"""Localization on real photos with metric ground truth: a map of three Strecha fountain views at
their GT poses (triangulated from our SIFT matches), two in-between views as queries (one with
its intrinsics listed, one with the focal length unknown) and a Middlebury temple image that
must be reported as failed. Downscaled (longest side 800 px, 2048 features) to stay fast."""
from __future__ import annotations

import json

import pycolmap

from conftest import shared_path
from recon.cli import main
from recon.config import load_config
from recon.datasets.ground_truth import load_ground_truth
from recon.localize import evaluate_localization, triangulate_known_poses
from recon.pipeline import Pipeline

MAP, QUERIES = ("0000.jpg", "0002.jpg", "0004.jpg"), ("0001.jpg", "0003.jpg")
OPTIONS = ["features.resize_max=800", "features.max_num_features=2048"]


def test_fountain_queries_localized_and_other_scene_fails(tmp_path, capsys):
    data = shared_path("data", "strecha_fountain_p11")
    temple = shared_path("data", "middlebury_temple", "templeRing_partial", "templeR0013.png")
    gt = load_ground_truth(data / "gt_colmap_text")
    map_images, query_images = tmp_path / "map_images", tmp_path / "queries"
    map_images.mkdir(), query_images.mkdir()
    for name in MAP:
        (map_images / name).symlink_to(data / "images" / name)
    for name in QUERIES:
        (query_images / name).symlink_to(data / "images" / name)
    (query_images / "temple.png").symlink_to(temple)

    camera = gt[MAP[0]].camera
    params = ",".join(repr(float(v)) for v in camera.params)
    config = load_config("default", OPTIONS + ["database.camera_mode=single", f"database.camera_model={camera.model_name}",
                                               f"database.camera_params={params}"], device="cpu")
    pipeline = Pipeline(map_images, tmp_path / "map", config)
    for stage in (pipeline.find_images, pipeline.compute_priors, pipeline.extract, pipeline.select_pairs,
                  pipeline.match, pipeline.build_database):
        stage()
    model = triangulate_known_poses(gt.subset(MAP), pipeline.database_path, map_images, pipeline.model_path)
    assert model.num_reg_images() == 3 and model.num_points3D() > 300
    for image in model.images.values():  # the map keeps the known poses exactly
        assert abs(image.cam_from_world().rotation.angle_to(pycolmap.Rotation3d(gt[image.name].rotation))) < 1e-9

    query_list = query_images / "queries.txt"
    query_list.write_text(f"0001.jpg {camera.model_name} {camera.width} {camera.height} "
                          f"{' '.join(params.split(','))}\n0003.jpg\ntemple.png\n")
    out = tmp_path / "loc"
    args = ["localize", str(tmp_path / "map"), str(query_list), str(out), "--device", "cpu"]
    assert main(args + [arg for option in OPTIONS for arg in ("--set", option)]) == 0
    printed = capsys.readouterr().out
    assert "localized 2/3 queries" in printed and "failed temple.png" in printed

    lines = (out / "results.txt").read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == list(QUERIES)  # no line for the failed query
    log = json.loads((out / "localization.json").read_text())
    assert log["failed"] == ["temple.png"] and log["queries"]["temple.png"]["reason"] in (
        "too_few_correspondences", "too_few_inliers", "low_inlier_ratio", "pose_estimation_failed")
    assert log["queries"]["0001.jpg"]["focal_source"] == "given"
    assert log["queries"]["0003.jpg"]["focal_source"] == "default"   # no EXIF: focal searched by P4Pf
    focal = log["queries"]["0003.jpg"]["camera"]["params"][0]
    assert abs(focal - camera.mean_focal_length()) / camera.mean_focal_length() < 0.02

    metrics = evaluate_localization(out / "results.txt", gt, QUERIES)["per_query"]
    # Given K: measured 4 mm / 0.02 deg (one pixel at 800 px is ~2.3 mm on the facade ~5 m away).
    assert metrics["0001.jpg"]["position"] < 0.02 and metrics["0001.jpg"]["rotation"] < 0.1
    # Unknown K: the principal point is assumed at the image centre, 16 px from the true one, and
    # the focal is searched: measured 14 cm / 0.36 deg, a pose error set by the intrinsics.
    assert metrics["0003.jpg"]["position"] < 0.25 and metrics["0003.jpg"]["rotation"] < 1.0

    # The CLI evaluator takes its queries from localization.json next to results.txt.
    assert main(["evaluate-localization", str(out / "results.txt"), "--gt", str(data / "gt_colmap_text"),
                 "--threshold", "0.25,1"]) == 0
    table = capsys.readouterr().out
    assert "localized 2/2 queries; 1 without ground truth not scored" in table
    assert table.strip().splitlines()[-1].split() == ["0.25", "1", "1.000"]

