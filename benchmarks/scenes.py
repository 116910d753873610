"""The benchmark scenes (real photos with ground truth, in ../shared/data) and how to score a run.

Shared by the benchmark scripts; run them from the repository root (``python benchmarks/X.py``).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pycolmap

from recon.config import load_config
from recon.datasets.ground_truth import load_ground_truth
from recon.datasets.sample import SAMPLE_DIR
from recon.evaluate import evaluate
from recon.pipeline import reconstruct

SHARED = Path(os.environ.get("RECON_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
# name -> (images, ground truth or None, recon overrides every run of this scene needs)
SCENES: dict[str, tuple[Path, Path | None, list[str]]] = {
    "sample": (SAMPLE_DIR / "images", SAMPLE_DIR / "gt", []),
    "temple_ring": (SHARED / "middlebury_temple/templeRing_partial",
                    SHARED / "middlebury_temple/templeRing_partial/gt_colmap_text", []),
    "temple_sparse": (SHARED / "middlebury_temple/templeSparseRing",
                      SHARED / "middlebury_temple/templeSparseRing/gt_colmap_text", []),
    "fountain": (SHARED / "strecha_fountain_p11/images", SHARED / "strecha_fountain_p11/gt_colmap_text", []),
    "sacre_coeur": (SHARED / "hloc_sacre_coeur/mapping", None, ["database.camera_mode=per_image"]),
    "fox": (SHARED / "ngp_fox/images", SHARED / "ngp_fox/transforms.json", []),
}


def score(model: pycolmap.Reconstruction | None, gt: Path | None, names: list[str] | None = None) -> dict:
    """Registration, and with ground truth AUC@1/5/10/20, camera-centre error after Sim3 and focal
    error, on the run's images ``names`` (default: every ground-truth image)."""
    truth = load_ground_truth(gt) if gt is not None else None
    if names is None:
        names = truth.names if truth is not None else []
    result = {"registered": 0 if model is None else model.num_reg_images(), "num_images": len(names)}
    if model is not None and truth is not None:
        metrics = evaluate(model, truth.subset(names))
        result.update({f"auc@{k}": v for k, v in metrics["auc"].items()})
        result.update(registered=metrics["num_registered"], center_error=metrics["center_error_median"],
                      focal_error_median=metrics["focal_error_median"])
    return result


def run_recon(scene: str, preset: str, output: Path, extra: list[str] = ()) -> dict:
    """recon on one scene with a preset; scores, per-stage times and total wall time."""
    images, gt, overrides = SCENES[scene]
    start = time.perf_counter()
    model, report = reconstruct(images, output, load_config(preset, [*overrides, *extra]))
    total = time.perf_counter() - start
    return {**score(model, gt, list(report["focal_priors"])), "time": report["timings"],
            "computed": report["computed"], "total": total}


def format_row(label: str, result: dict) -> str:
    aucs = " ".join(f"{result.get(f'auc@{k}', float('nan')):7.3f}" for k in ("1", "5", "10", "20"))
    focal = result.get("focal_error_median")
    focal_text = f"{focal:9.2%}" if focal is not None else f"{'-':>9}"
    return (f"{label:22} {result['registered']:>4}/{result['num_images']:<5} {aucs} {focal_text} "
            f"{result['total']:8.1f}")


HEADER = f"{'':22} {'registered':>10} {'AUC@1':>7} {'AUC@5':>7} {'AUC@10':>7} {'AUC@20':>7} {'focal err':>9} {'time s':>8}"
