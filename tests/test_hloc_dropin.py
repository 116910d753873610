"""recon.hloc: an hloc script's calls, unchanged, produce hloc's files and a model."""
from __future__ import annotations

import inspect

import h5py
import numpy as np
import pycolmap

from helpers import temple_subset
from recon.hloc import extract_features, match_features, pairs_from_exhaustive, reconstruction


def test_signatures_match_hloc_1_5():
    """Parameter names and order as in hloc 1.5 (hloc is not installable here to compare live)."""
    assert list(inspect.signature(extract_features.main).parameters) == [
        "conf", "image_dir", "export_dir", "as_half", "image_list", "feature_path", "overwrite"]
    assert list(inspect.signature(match_features.main).parameters) == [
        "conf", "pairs", "features", "export_dir", "matches", "features_ref", "overwrite"]
    assert list(inspect.signature(pairs_from_exhaustive.main).parameters) == [
        "output", "image_list", "features", "ref_list", "ref_features"]
    assert list(inspect.signature(reconstruction.main).parameters) == [
        "sfm_dir", "image_dir", "pairs", "features", "matches", "camera_mode", "verbose",
        "skip_geometric_verification", "min_match_score", "image_list", "image_options", "mapper_options"]


def test_hloc_script_runs_unchanged(tmp_path):
    images = temple_subset(tmp_path / "images", count=4)
    outputs = tmp_path / "outputs"
    feature_conf = extract_features.confs["sift"]
    matcher_conf = match_features.confs["NN-ratio"]

    features = extract_features.main(feature_conf, images, outputs)
    assert features == outputs / "feats-sift.h5"
    pairs = outputs / "pairs-exhaustive.txt"
    pairs_from_exhaustive.main(pairs, features=features)
    assert len(pairs.read_text().splitlines()) == 6
    matches = match_features.main(matcher_conf, pairs, feature_conf["output"], outputs)
    assert matches == outputs / "feats-sift_matches-NN-mutual-ratio.8_pairs-exhaustive.h5"

    # The files as hloc's readers see them.
    with h5py.File(features, "r") as f:
        group = f["templeR0013.png"]
        assert group["descriptors"].shape[0] == 128 and group["keypoints"].shape[1] == 2
        np.testing.assert_array_equal(group["image_size"][()], [640, 480])
    with h5py.File(matches, "r") as f:
        assert "matches0" in f["templeR0013.png"]["templeR0014.png"]

    model = reconstruction.main(outputs / "sfm", images, pairs, features, matches)
    assert model is not None and model.num_reg_images() == 4
    assert (outputs / "sfm" / "database.db").is_file() and (outputs / "sfm" / "images.bin").is_file()
    assert pycolmap.Reconstruction(outputs / "sfm").num_reg_images() == 4

    # hloc's skip_geometric_verification path builds a model here (hloc's own builds none).
    unverified = reconstruction.main(outputs / "sfm_raw", images, pairs, features, matches,
                                     skip_geometric_verification=True, min_match_score=0.5)
    assert unverified is not None and unverified.num_reg_images() >= 3
