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

from scenes import HEADER, SCENES, format_row, run_recon, score


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", nargs="*", default=[s for s in SCENES if s != "fox"], choices=list(SCENES))
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
            names = sorted(im.name for im in pycolmap.Database.open(work / "colmap" / "database.db").read_all_images())
            reference = {**score(ref_model, gt, names), "time": ref_times, "total": sum(ref_times.values())}
            rows.append({"scene": name, "pycolmap": reference, "recon": run_recon(name, "default", work / "recon")})
        print_row(rows[-1])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def print_row(row: dict) -> None:
    print(f"\n== {row['scene']}\n{HEADER}")
    for side in ("pycolmap", "recon"):
        print(format_row(side, row[side]))
    ratio = row["recon"]["total"] / row["pycolmap"]["total"]
    stages = ", ".join(f"{k} {v:.1f}" for k, v in row["recon"]["time"].items())
    ref_stages = ", ".join(f"{k} {v:.1f}" for k, v in row["pycolmap"]["time"].items())
    print(f"time ratio recon/pycolmap: {ratio:.2f}  (recon: {stages}; pycolmap: {ref_stages})")


if __name__ == "__main__":
    main()
