"""recon's default pipeline against pycolmap's own (extract_features + match_exhaustive +
incremental_mapping) on the same images, in one process.

Prints, per scene: wall time per stage, registered images, AUC@1/5/10/20 (when ground truth is
known), and the ratio of recon's time to pycolmap's. Run from the repository root:

    python benchmarks/pipeline_vs_pycolmap.py                     # every scene below that exists
    python benchmarks/pipeline_vs_pycolmap.py --scenes temple_ring --json out.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pycolmap

from recon.config import load_config
from recon.datasets.sample import SAMPLE_DIR
from recon.evaluate import evaluate
from recon.pipeline import reconstruct

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# name -> (images, ground truth or None, extra recon overrides)
SCENES = {
    "sample": (SAMPLE_DIR / "images", SAMPLE_DIR / "gt", []),
    "temple_ring": (SHARED / "middlebury_temple/templeRing_partial", SHARED / "middlebury_temple/templeRing_partial/gt_colmap_text", []),
    "temple_sparse": (SHARED / "middlebury_temple/templeSparseRing", SHARED / "middlebury_temple/templeSparseRing/gt_colmap_text", []),
    "fountain": (SHARED / "strecha_fountain_p11/images", SHARED / "strecha_fountain_p11/gt_colmap_text", []),
    "sacre_coeur": (SHARED / "hloc_sacre_coeur/mapping", None, ["database.camera_mode=per_image"]),
}


def run_pycolmap(images: Path, work: Path, per_image: bool) -> tuple[pycolmap.Reconstruction | None, dict]:
    """pycolmap's standard pipeline with its defaults (the reference users compare against)."""
    database = work / "database.db"
    timings = {}
    start = time.perf_counter()
    mode = pycolmap.CameraMode.PER_IMAGE if per_image else pycolmap.CameraMode.AUTO
    pycolmap.extract_features(database, images, camera_mode=mode, device=pycolmap.Device.cpu)
    timings["features"] = time.perf_counter() - start
    start = time.perf_counter()
    pycolmap.match_exhaustive(database, device=pycolmap.Device.cpu)
    timings["matches+verification"] = time.perf_counter() - start
    start = time.perf_counter()
    models = pycolmap.incremental_mapping(database, images, work / "sparse")
    timings["mapping"] = time.perf_counter() - start
    model = max(models.values(), key=lambda m: m.num_reg_images()) if models else None
    return model, timings


def scores(model, gt: Path | None, num_images: int) -> dict:
    if model is None:
        return {"registered": 0, "num_images": num_images}
    result = {"registered": model.num_reg_images(), "num_images": num_images}
    if gt is not None:
        metrics = evaluate(model, gt)
        result.update({f"auc@{k}": v for k, v in metrics["auc"].items()})
        result["focal_error_median"] = metrics["focal_error_median"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", nargs="*", default=list(SCENES), choices=list(SCENES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    pycolmap.logging.minloglevel = 2
    rows = []
    for name in args.scenes:
        images, gt, overrides = SCENES[name]
        if not images.is_dir():
            print(f"skipping {name}: {images} not found")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "colmap").mkdir()
            ref_model, ref_times = run_pycolmap(images, work / "colmap", "database.camera_mode=per_image" in overrides)
            num_images = len(list(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".png")))
            start = time.perf_counter()
            model, report = reconstruct(images, work / "recon", load_config("default", overrides))
            total = time.perf_counter() - start
            rows.append({
                "scene": name,
                "pycolmap": {**scores(ref_model, gt, num_images), "time": ref_times, "total": sum(ref_times.values())},
                "recon": {**scores(model, gt, report["num_images"]), "time": report["timings"], "total": total},
            })
        print_row(rows[-1])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def print_row(row: dict) -> None:
    print(f"\n== {row['scene']}")
    print(f"{'':10} {'registered':>10} {'AUC@1':>7} {'AUC@5':>7} {'AUC@10':>7} {'AUC@20':>7} {'focal err':>9} {'time s':>8}")
    for side in ("pycolmap", "recon"):
        r = row[side]
        aucs = " ".join(f"{r.get(f'auc@{k}', float('nan')):7.3f}" for k in ("1", "5", "10", "20"))
        focal = r.get("focal_error_median")
        print(f"{side:10} {r['registered']:>4}/{r['num_images']:<5} {aucs} {focal if focal is None else f'{focal:9.2%}'} {r['total']:8.1f}")
    ratio = row["recon"]["total"] / row["pycolmap"]["total"]
    stages = ", ".join(f"{k} {v:.1f}" for k, v in row["recon"]["time"].items())
    ref_stages = ", ".join(f"{k} {v:.1f}" for k, v in row["pycolmap"]["time"].items())
    print(f"time ratio recon/pycolmap: {ratio:.2f}  (recon: {stages}; pycolmap: {ref_stages})")


if __name__ == "__main__":
    main()
