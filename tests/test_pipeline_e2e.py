"""End to end on real photos: five templeRing views (640x480, about 8 degrees apart) with
Middlebury's ground truth. The default pipeline must register all of them with relative poses
accurate to a few degrees at worst."""
from __future__ import annotations

import json

from conftest import shared_path
from helpers import TEMPLE, temple_subset
from recon.cli import main
from recon.datasets.ground_truth import load_ground_truth
from recon.evaluate import evaluate


def test_default_pipeline_reconstructs_temple_views(tmp_path, capsys):
    images = temple_subset(tmp_path / "images", count=5)
    out = tmp_path / "out"
    assert main(["reconstruct", str(images), str(out), "--text", "--device", "cpu"]) == 0
    assert "registered 5/5" in capsys.readouterr().out
    for name in ("features.h5", "pairs.txt", "matches.h5", "database.db", "points.ply", "report.json", "cameras.png"):
        assert (out / name).is_file(), name
    assert (out / "sparse/0/images.bin").is_file() and (out / "sparse/0/images.txt").is_file()
    assert len(list((out / "plots").glob("matches-*.png"))) == 2
    report = json.loads((out / "report.json").read_text())
    assert report["num_registered"] == 5 and report["mean_reprojection_error"] < 1.0
    assert set(report["timings"]) >= {"features", "matches", "database", "mapping"}

    truth = load_ground_truth(shared_path("data", *TEMPLE, "gt_colmap_text")).subset(report["focal_priors"])
    metrics = evaluate(out / "sparse/0", truth)
    assert metrics["num_registered"] == 5
    assert metrics["auc"]["5"] > 0.8       # 10 pairs, errors well under 1 degree
    assert metrics["rra15"] == 1.0 and metrics["rta15"] == 1.0
    assert metrics["focal_error_median"] < 0.05

    assert report["computed"] == {"features": 5, "matches": 10, "database": 5, "mapping": 5}
    # A second run reuses every stage (nothing recomputed, same model).
    assert main(["reconstruct", str(images), str(out), "--device", "cpu"]) == 0
    rerun = json.loads((out / "report.json").read_text())
    assert rerun["num_points"] == report["num_points"]
    assert rerun["computed"] == {"features": 0, "matches": 0, "database": 0, "mapping": 0}
