"""Localization on a synthetic scene with exact answers: 2D-3D lifting, PnP with given and
unknown intrinsics, failure reporting (no borrowed pose), hloc's files, covisibility clusters,
retrieval, evaluation."""
from __future__ import annotations

import json

import numpy as np
import pycolmap
import pytest

from localize_scene import build_scene
from recon.config import LOCALIZE_DEFAULTS
from recon.datasets.ground_truth import GroundTruth
from recon.evaluate.geometry import Sim3
from recon.hloc import localize_sfm
from recon.io import h5
from recon.io.images import ImageInfo
from recon.localize import evaluate_localization, parse_query_list, read_results, write_results
from recon.localize.covisibility import covisibility_clusters
from recon.localize.queries import query_cameras
from recon.localize.retrieval import BagOfWordsRetrieval, ExhaustiveRetrieval


def rotation_error_deg(a: pycolmap.Rigid3d, b: pycolmap.Rigid3d) -> float:
    return float(np.degrees(a.rotation.angle_to(b.rotation)))


def center(pose: pycolmap.Rigid3d) -> np.ndarray:
    return -np.asarray(pose.rotation.matrix()).T @ np.asarray(pose.translation)


def hloc_parse_results(path) -> dict[str, pycolmap.Rigid3d]:
    """Read a results file as hloc's evaluation scripts do: name, qvec (w first), tvec."""
    poses = {}
    for line in path.read_text().splitlines():
        name, *values = line.split()
        qw, qx, qy, qz, tx, ty, tz = map(float, values)
        poses[name] = pycolmap.Rigid3d(pycolmap.Rotation3d([qx, qy, qz, qw]), [tx, ty, tz])
    return poses


def write_query_list(path, scene, known: list[str], unknown: list[str]) -> None:
    camera = scene.truth.cameras[1]
    params = " ".join(repr(float(v)) for v in camera.params)
    path.write_text("".join(f"{n} {camera.model_name} {camera.width} {camera.height} {params}\n" for n in known)
                    + "".join(f"{n}\n" for n in unknown))


def test_results_file_is_hlocs_format_with_w_first(tmp_path):
    pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0.1, -0.2, 0.3])), np.array([1.0, -2.0, 3.5]))
    write_results(tmp_path / "results.txt", {"query/a.jpg": pose})
    fields = (tmp_path / "results.txt").read_text().split()
    assert fields[0] == "query/a.jpg" and len(fields) == 8
    x, y, z, w = pose.rotation.quat
    np.testing.assert_allclose([float(v) for v in fields[1:]], [w, x, y, z, 1.0, -2.0, 3.5], atol=1e-15)
    back = read_results(tmp_path / "results.txt")["query/a.jpg"]
    assert rotation_error_deg(back, pose) < 1e-9 and np.allclose(back.translation, pose.translation)
    (tmp_path / "bad.txt").write_text("a.jpg 1 0 0 0 1 2\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        read_results(tmp_path / "bad.txt")


def test_localize_sfm_recovers_exact_poses_and_focal(tmp_path):
    scene = build_scene(tmp_path)
    queries = tmp_path / "queries.txt"
    write_query_list(queries, scene, known=scene.queries[:2], unknown=scene.queries[2:])
    results = tmp_path / "results.txt"
    localize_sfm.main(scene.model_dir, queries, scene.retrieval, scene.features, scene.matches, results,
                      covisibility_clustering=True)
    poses = hloc_parse_results(results)  # readable as hloc reads it, one line per query
    assert sorted(poses) == sorted(scene.queries)
    for name in scene.queries:
        truth = scene.truth.find_image_with_name(name).cam_from_world()
        assert rotation_error_deg(poses[name], truth) < 1e-5  # noise-free: exact up to solver precision
        assert np.linalg.norm(center(poses[name]) - center(truth)) < 1e-6
    logs = json.loads((tmp_path / "results.txt_logs.json").read_text())["loc"]
    unknown = logs[scene.queries[2]]
    assert unknown["focal_source"] == "default" and unknown["success"]
    assert unknown["camera"]["params"][0] == pytest.approx(1280.0, rel=1e-5)  # focal found by P4Pf
    assert logs[scene.queries[0]]["camera"]["params"][0] == 1280.0           # given: kept
    assert logs[scene.queries[0]]["num_inliers"] == 300


def test_failed_query_is_reported_and_has_no_line(tmp_path):
    scene = build_scene(tmp_path)
    broken, unretrieved = scene.queries[0], scene.queries[1]
    rng = np.random.default_rng(0)
    with h5.H5Writer(scene.matches) as writer:  # the broken query's matches become random
        for name in scene.map_names:
            h5.write_matches(writer, broken, name, rng.integers(0, 300, 310))
    lines = [line for line in scene.retrieval.read_text().splitlines() if not line.startswith(unretrieved)]
    scene.retrieval.write_text("\n".join(lines) + "\n")
    queries = tmp_path / "queries.txt"
    write_query_list(queries, scene, known=scene.queries, unknown=[])
    results = tmp_path / "results.txt"
    localize_sfm.main(scene.model_dir, queries, scene.retrieval, scene.features, scene.matches, results)
    assert list(hloc_parse_results(results)) == [scene.queries[2]]   # no borrowed pose for the others
    logs = json.loads((tmp_path / "results.txt_logs.json").read_text())["loc"]
    assert logs[broken]["success"] is False and logs[broken]["reason"] in ("too_few_inliers", "low_inlier_ratio")
    assert logs[broken]["num_inliers"] == 0 and "cam_from_world" not in logs[broken]
    assert logs[unretrieved]["reason"] == "no_retrieved_images"


def test_localize_sfm_names_follow_hloc(tmp_path):
    assert localize_sfm.result_name("night/nexus5x/IMG_1.jpg", False) == "IMG_1.jpg"
    assert localize_sfm.result_name("night/nexus5x/IMG_1.jpg", True) == "nexus5x/IMG_1.jpg"
    conf = localize_sfm.localize_conf(8, True, {"estimation": {"ransac": {"max_error": 5.0}}, "min_num_inliers": 50})
    assert conf["ransac_max_error"] == 5.0 and conf["min_num_inliers"] == 50 and conf["covisibility_clustering"]


def test_query_list_parsing(tmp_path):
    path = tmp_path / "queries.txt"
    path.write_text("# comment\nq/a.jpg SIMPLE_RADIAL 640 480 500 320 240 0.01\nq/b.jpg\n"
                    "c.jpg PINHOLE 100 50 80 81 50 25\n")
    a, b, c = parse_query_list(path)
    assert (a.name, a.camera.model_name, a.camera.width, a.camera.height) == ("q/a.jpg", "SIMPLE_RADIAL", 640, 480)
    np.testing.assert_allclose(a.camera.params, [500, 320, 240, 0.01])
    assert b.camera is None and list(c.camera.params) == [80, 81, 50, 25]
    path.write_text("a.jpg PINHOLE 100 50 80 50 25\n")
    with pytest.raises(ValueError, match="PINHOLE takes 4 parameters"):
        parse_query_list(path)
    path.write_text("a.jpg FANCY 100 50 80\n")
    with pytest.raises(ValueError, match="unknown camera model 'FANCY'"):
        parse_query_list(path)


def test_query_cameras_choose_focal_search_by_source(tmp_path):
    path = tmp_path / "queries.txt"
    path.write_text("given.jpg PINHOLE 100 50 80 81 50 25\nexif.jpg\nnone.jpg\n")
    queries = parse_query_list(path)
    infos = {"given.jpg": ImageInfo("given.jpg", 100, 50, None), "exif.jpg": ImageInfo("exif.jpg", 100, 50, 90.0),
             "none.jpg": ImageInfo("none.jpg", 100, 50, None)}
    cameras = query_cameras(queries, infos, {"name": "exif"}, LOCALIZE_DEFAULTS)
    assert (cameras["given.jpg"].source, cameras["given.jpg"].estimate_focal, cameras["given.jpg"].refine_focal) == \
        ("given", False, False)
    assert (cameras["exif.jpg"].source, cameras["exif.jpg"].estimate_focal, cameras["exif.jpg"].refine_focal) == \
        ("exif", False, True)
    assert cameras["exif.jpg"].camera.params[0] == 90.0
    assert (cameras["none.jpg"].source, cameras["none.jpg"].estimate_focal) == ("default", True)
    assert cameras["none.jpg"].camera.params[0] == pytest.approx(120.0)  # COLMAP's 1.2 x max side
    never = query_cameras(queries, infos, {"name": "exif"}, {**LOCALIZE_DEFAULTS, "estimate_focal": "never"})
    assert not never["none.jpg"].estimate_focal and not never["none.jpg"].refine_focal
    infos["given.jpg"] = ImageInfo("given.jpg", 200, 50, None)
    with pytest.raises(ValueError, match="100x50 but the image is 200x50"):
        query_cameras(queries, infos, {"name": "exif"}, LOCALIZE_DEFAULTS)


def test_covisibility_clusters_are_connected_components():
    # images 0-1 share point 3, 1-3 share point 7 -> {0, 1, 3}; 2 and 4 share point 9; 5 alone.
    observed = [np.array([1, 3]), np.array([3, 7]), np.array([9]), np.array([7, 8]), np.array([9, 10]), np.array([11])]
    assert covisibility_clusters(observed, 12) == [[0, 1, 3], [2, 4], [5]]
    assert covisibility_clusters([], 12) == []


def test_bag_of_words_retrieves_the_image_with_the_same_content(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 200, 32)).astype(np.float32)  # 8 images, each its own 200 "patterns"
    names = [f"db{i}.jpg" for i in range(8)]
    with h5.H5Writer(tmp_path / "db.h5") as writer:
        for name, c in zip(names, centres):
            h5.write_features(writer, name, np.zeros((200, 2)), (c + 0.01 * rng.normal(size=c.shape)).T, None, (9, 9))
    with h5.H5Writer(tmp_path / "q.h5") as writer:  # half of image 5's patterns, half of image 2's
        mixed = np.concatenate([centres[5, :120], centres[2, :80]]) + 0.01 * rng.normal(size=(200, 32))
        h5.write_features(writer, "q.jpg", np.zeros((200, 2)), mixed.T, None, (9, 9))
    retrieval = BagOfWordsRetrieval(tmp_path / "db.h5", names, tmp_path / "q.h5", vocabulary_size=256, seed=0)
    assert retrieval.retrieve("q.jpg", 2) == ["db5.jpg", "db2.jpg"]
    assert ExhaustiveRetrieval(names).retrieve("db3.jpg", 2) == [n for n in names if n != "db3.jpg"]


def _truth_of(poses: dict[str, pycolmap.Rigid3d]) -> GroundTruth:
    model = pycolmap.Reconstruction()
    model.add_camera_with_trivial_rig(pycolmap.Camera.create_from_model_name(1, "PINHOLE", 100.0, 100, 100))
    for image_id, (name, pose) in enumerate(poses.items(), 1):
        model.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=1, image_id=image_id), pose)
    return GroundTruth.from_reconstruction(model)


def test_evaluate_localization_errors_recall_and_alignment():
    rng = np.random.default_rng(1)
    truth = {f"{i}.jpg": pycolmap.Rigid3d(pycolmap.Rotation3d(rng.normal(size=3)), rng.normal(size=3) * 3)
             for i in range(6)}
    gt = _truth_of(truth)
    estimate = {"0.jpg": truth["0.jpg"], "2.jpg": truth["2.jpg"]}
    # 1.jpg: centre 0.3 m off and rotated by 1 degree about the camera's own axis
    tilt = pycolmap.Rotation3d(np.radians([0.0, 0.0, 1.0]))
    rotated = pycolmap.Rigid3d(tilt, np.zeros(3)) * truth["1.jpg"]
    estimate["1.jpg"] = pycolmap.Rigid3d(rotated.rotation, np.asarray(rotated.translation)
                                         - np.asarray(rotated.rotation.matrix()) @ np.array([0.3, 0.0, 0.0]))
    result = evaluate_localization(estimate, gt, queries=["0.jpg", "1.jpg", "2.jpg", "3.jpg"])
    assert result["num_queries"] == 4 and result["num_localized"] == 3
    assert result["per_query"]["1.jpg"]["position"] == pytest.approx(0.3, abs=1e-9)
    assert result["per_query"]["1.jpg"]["rotation"] == pytest.approx(1.0, abs=1e-9)
    assert result["per_query"]["3.jpg"] == {"position": None, "rotation": None}
    assert [r["recall"] for r in result["recall"]] == [0.5, 0.75, 0.75]  # 1.jpg is within (0.5 m, 5 deg)
    extent = result["scene_extent"]
    relative = evaluate_localization(estimate, gt, queries=["1.jpg"], thresholds=[(0.3 / extent * 1.01, 2)], relative=True)
    assert relative["recall"][0]["recall"] == 1.0

    # Results in a map frame related to the GT by a known similarity are scored after alignment.
    sim = Sim3(2.5, np.asarray(pycolmap.Rotation3d(np.array([0.3, -0.1, 0.7])).matrix()), np.array([1.0, 2.0, -3.0]))
    to_map = pycolmap.Sim3d(1 / sim.scale, pycolmap.Rotation3d(sim.rotation.T),
                            -(sim.rotation.T @ sim.translation) / sim.scale)
    map_model = pycolmap.Reconstruction()
    map_model.add_camera_with_trivial_rig(pycolmap.Camera.create_from_model_name(1, "PINHOLE", 100.0, 100, 100))
    for image_id, name in enumerate(["2.jpg", "3.jpg", "4.jpg", "5.jpg"], 1):
        map_model.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=1, image_id=image_id), truth[name])
    map_model.transform(to_map)
    in_map = {}  # the same cameras in the map frame: R_map = R_gt R_sim, C_map = R_sim^T (C_gt - t_sim) / s
    for name in ("0.jpg", "1.jpg"):
        R = np.asarray(truth[name].rotation.matrix()) @ sim.rotation
        c = sim.rotation.T @ (center(truth[name]) - sim.translation) / sim.scale
        in_map[name] = pycolmap.Rigid3d(pycolmap.Rotation3d(R), -R @ c)
    aligned = evaluate_localization(in_map, gt, queries=["0.jpg", "1.jpg"], align_to=map_model)
    assert aligned["aligned"] and aligned["median_position_error"] < 1e-9 and aligned["median_rotation_error"] < 1e-6


def test_cli_localize_bad_input_is_one_line_and_nonzero(tmp_path, capsys):
    from recon.cli import main

    from PIL import Image

    queries = tmp_path / "queries"
    queries.mkdir()
    assert main(["localize", str(tmp_path), str(queries), str(tmp_path / "out")]) == 2
    assert "no query images found" in capsys.readouterr().err
    assert main(["localize", str(tmp_path), str(tmp_path / "no_queries.txt"), str(tmp_path / "out")]) == 2
    assert "neither a folder of images nor a query list" in capsys.readouterr().err
    Image.new("RGB", (8, 8)).save(queries / "q.png")
    assert main(["localize", str(tmp_path / "no_model"), str(queries), str(tmp_path / "out")]) == 2
    assert "model not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_queries_must_use_the_maps_extractor_configuration(tmp_path):
    from recon.config import load_config
    from recon.localize.run import check_extractor

    config = load_config("default")
    with h5.H5Writer(tmp_path / "features.h5") as writer:
        writer.file.attrs["recon_fingerprint"] = "made-by-another-config"
    with pytest.raises(ValueError, match="another features configuration"):
        check_extractor(tmp_path / "features.h5", config["features"])
    with h5.H5Writer(tmp_path / "hloc.h5") as writer:  # hloc's files carry no record: trusted
        h5.write_features(writer, "a.jpg", np.zeros((1, 2)), np.zeros((4, 1)), None, (9, 9))
    check_extractor(tmp_path / "hloc.h5", config["features"])
