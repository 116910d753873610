"""The COLMAP database writer: camera sharing, hloc's +0.5, verification with a configuration,
and a database that is either complete or absent."""
from __future__ import annotations

import numpy as np
import pycolmap
import pytest

from recon.colmap.database import build_database, group_cameras
from recon.config import DATABASE_DEFAULTS
from recon.io import h5
from recon.io.images import ImageInfo
from recon.priors.exif import exif_priors


def infos_and_priors():
    infos = [ImageInfo("a/1.jpg", 640, 480, None), ImageInfo("a/2.jpg", 640, 480, None),
             ImageInfo("b/3.jpg", 640, 480, 500.0), ImageInfo("b/4.jpg", 480, 640, None)]
    priors = exif_priors(infos, {})
    return infos, priors


def test_camera_modes_group_images_as_colmap_does():
    infos, priors = infos_and_priors()
    auto = group_cameras(infos, priors, "auto")
    assert sorted(len(g.names) for g in auto) == [1, 1, 2]  # a/1+a/2 share; b/3 has EXIF; b/4 portrait
    per_folder = group_cameras(infos, priors, "per_folder")
    assert sorted(g.names for g in per_folder) == [("a/1.jpg", "a/2.jpg"), ("b/3.jpg",), ("b/4.jpg",)]
    assert len(group_cameras(infos, priors, "per_image")) == 4
    exif_camera = next(g for g in auto if g.names == ("b/3.jpg",))
    assert exif_camera.focal == 500.0 and exif_camera.has_prior_focal
    with pytest.raises(ValueError, match="different sizes"):
        group_cameras(infos, priors, "single")


def synthetic_inputs(tmp_path, num_images=6):
    """Exact keypoints and matches from pycolmap's synthetic scene, written as hloc files."""
    options = pycolmap.SyntheticDatasetOptions()
    options.num_rigs, options.num_cameras_per_rig, options.num_frames_per_rig = 1, 1, num_images
    options.num_points3D = 400
    options.camera_model_id = pycolmap.CameraModelId.SIMPLE_PINHOLE
    options.camera_params = [1280.0, 512.0, 384.0]
    truth = pycolmap.synthesize_dataset(options)
    camera = next(iter(truth.cameras.values()))
    images = sorted(truth.images.values(), key=lambda im: im.image_id)
    names = [f"im{im.image_id}.png" for im in images]
    infos = [ImageInfo(n, camera.width, camera.height, float(camera.params[0])) for n in names]
    with h5.H5Writer(tmp_path / "features.h5") as writer:
        for name, image in zip(names, images):
            keypoints = np.array([p.xy for p in image.points2D]) - 0.5  # COLMAP -> hloc convention
            h5.write_features(writer, name, keypoints, None, None, (camera.width, camera.height))
    pairs = []
    with h5.H5Writer(tmp_path / "matches.h5") as writer:
        for i, a in enumerate(images):
            for b in images[i + 1:]:
                index_b = {p.point3D_id: k for k, p in enumerate(b.points2D) if p.has_point3D()}
                matches0 = np.array([index_b.get(p.point3D_id, -1) if p.has_point3D() else -1 for p in a.points2D])
                h5.write_matches(writer, names[a.image_id - 1], names[b.image_id - 1], matches0)
                pairs.append((names[a.image_id - 1], names[b.image_id - 1]))
    return truth, infos, pairs


def test_database_holds_colmap_pixels_and_verified_geometries(tmp_path):
    truth, infos, pairs = synthetic_inputs(tmp_path)
    priors = {i.name: (i.exif_focal, "exif") for i in infos}
    conf = {**DATABASE_DEFAULTS, "camera_model": "SIMPLE_PINHOLE"}
    ids = build_database(tmp_path / "database.db", infos, priors, tmp_path / "features.h5",
                         tmp_path / "matches.h5", pairs, conf)
    with pycolmap.Database.open(tmp_path / "database.db") as db:
        assert db.num_images() == len(infos) and db.num_cameras() == 1
        first = truth.images[1]
        np.testing.assert_allclose(db.read_keypoints(ids["im1.png"])[:, :2], [p.xy for p in first.points2D], atol=1e-4)
        assert db.num_verified_image_pairs() == len(pairs)
        _, geometries = db.read_two_view_geometries()
        assert all(g.config == pycolmap.TwoViewGeometryConfiguration.CALIBRATED for g in geometries)
        assert db.read_all_cameras()[0].has_prior_focal_length


def test_trusted_matches_get_a_configuration(tmp_path):
    """hloc's skip_geometric_verification path, fixed: geometries carry UNCALIBRATED."""
    _, infos, pairs = synthetic_inputs(tmp_path, num_images=4)
    priors = {i.name: (i.exif_focal, "exif") for i in infos}
    build_database(tmp_path / "database.db", infos, priors, tmp_path / "features.h5", tmp_path / "matches.h5",
                   pairs, DATABASE_DEFAULTS, verify=False)
    with pycolmap.Database.open(tmp_path / "database.db") as db:
        _, geometries = db.read_two_view_geometries()
        assert len(geometries) == len(pairs)
        assert all(g.config == pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED for g in geometries)


def test_failed_build_leaves_no_database(tmp_path):
    _, infos, pairs = synthetic_inputs(tmp_path, num_images=3)
    priors = {i.name: (i.exif_focal, "exif") for i in infos}
    bad_pairs = pairs + [("im1.png", "missing.png")]
    with pytest.raises(KeyError):
        build_database(tmp_path / "database.db", infos, priors, tmp_path / "features.h5", tmp_path / "matches.h5",
                       bad_pairs, DATABASE_DEFAULTS)
    assert not (tmp_path / "database.db").exists()
