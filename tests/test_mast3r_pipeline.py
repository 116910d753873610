"""The whole configs/mast3r.yaml pipeline on the CPU with the tiny seeded MASt3R checkpoint: MASt3R
anchors and matches in hloc's files, canonical pointmaps, the database, the sparse global alignment
mapper with BA, and the model. The tiny network's geometry is meaningless: this checks the wiring,
shapes and file formats, not accuracy."""
from __future__ import annotations

import h5py
import numpy as np
import PIL.Image
import pycolmap
import pytest

from conftest import shared_path
from helpers import temple_subset
from recon.config import load_config
from recon.io import h5
from recon.io.pairs import read_pairs
from recon.pipeline import reconstruct

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WIDTH, HEIGHT, SIZE = 160, 120, 160  # network input 160x112 after the patch crop: 20x14 anchors


def small_temple(tmp_path):
    raw = temple_subset(tmp_path / "raw", count=3)
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(raw.iterdir()):
        PIL.Image.open(path).resize((WIDTH, HEIGHT), PIL.Image.LANCZOS).save(images / path.name)
    return images


def test_mast3r_preset_runs_end_to_end(tmp_path):
    images = small_temple(tmp_path)
    weights = shared_path("fixtures", "mast3r", "tiny_ckpt.pth")
    config = load_config("mast3r", [f"matcher.weights={weights}", f"matcher.size={SIZE}", "device=cpu",
                                    "mapper.matching_conf_thr=0", "mapper.niter1=20", "mapper.niter2=20"])
    out = tmp_path / "out"
    model, report = reconstruct(images, out, config)

    names = sorted(p.name for p in images.iterdir())
    pairs = read_pairs(out / "pairs.txt")
    assert len(pairs) == 3  # exhaustive
    anchors = (112 // 8) * (160 // 8)
    for name in names:
        features = h5.read_features(out / "features.h5", name)
        assert features["keypoints"].shape == (anchors, 2)
        assert features["image_size"].tolist() == [WIDTH, HEIGHT]
        kp = features["keypoints"]  # anchors in original pixels: inside the image, on a regular grid
        assert kp.min() >= 0 and kp[:, 0].max() < WIDTH and kp[:, 1].max() < HEIGHT
    with h5py.File(out / "matches.h5", "r") as f:
        for a, b in pairs:
            key, _ = h5.find_pair(f, a, b)
            assert f[key]["matches0"].dtype == np.int32 and f[key]["matches0"].shape == (anchors,)
            assert f[key]["matching_scores0"].shape == (anchors,)
    with h5py.File(out / "mast3r-canonical.h5", "r") as f:
        assert sorted(f.attrs["pairs"]) == sorted(h5.names_to_pair(a, b) for a, b in pairs)
        for name in names:
            assert f[name]["points"].shape == (anchors, 3) and f[name]["confidence"].shape == (anchors,)
            assert np.isfinite(f[name]["points"][()]).all() and (f[name]["confidence"][()] > 0).all()

    assert report["num_registered"] == 3 and report["num_points"] > 0
    reread = pycolmap.Reconstruction(out / "sparse" / "0")
    assert sorted(im.name for im in reread.images.values()) == names
    assert all(len(im.points2D) == anchors for im in reread.images.values())
    with pycolmap.Database.open(str(out / "database.db")) as db:
        assert {im.name: im.image_id for im in db.read_all_images()} == {im.name: im.image_id for im in reread.images.values()}
    assert (out / "points.ply").exists() and (out / "report.json").exists()

    # a second run reuses every stage's output
    _, again = reconstruct(images, out, config)
    assert again["computed"]["matches"] == 0 and again["computed"]["mapping"] == 0
