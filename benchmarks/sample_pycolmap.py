"""Reference run: plain pycolmap SfM (SIFT, exhaustive matching, incremental mapping) on a
rendered scene, compared with its exact ground truth.

Why: it is the baseline that ``recon demo`` should match on the bundled sample, and the check
that a rendered scene is reconstructible at all (every view registers, sub-degree rotations).

Usage:
    PYTHONPATH=. python benchmarks/sample_pycolmap.py [SCENE=datasets/sample] [--camera-model PINHOLE]

Prints one table: time per stage, registered/total views, relative rotation errors over all
view pairs (angle of R_est_rel^T R_gt_rel, in degrees) and the focal length error.
"""
from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pycolmap


def relative_rotation_errors(est: pycolmap.Reconstruction, gt: pycolmap.Reconstruction) -> np.ndarray:
    """Degrees (P,) over all pairs of views registered in ``est``, matched to ``gt`` by name."""
    est_poses = {im.name: im.cam_from_world() for im in est.images.values() if im.has_pose}
    gt_poses = {im.name: im.cam_from_world() for im in gt.images.values()}
    errors = []
    for a, b in itertools.combinations(sorted(est_poses), 2):
        rel_est = (est_poses[b] * est_poses[a].inverse()).rotation
        rel_gt = (gt_poses[b] * gt_poses[a].inverse()).rotation
        errors.append(np.degrees(rel_est.angle_to(rel_gt)))
    return np.asarray(errors)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene", nargs="?", type=Path, default=Path("datasets/sample"))
    parser.add_argument("--camera-model", default="PINHOLE", help="COLMAP model of the single shared camera")
    args = parser.parse_args()
    pycolmap.logging.minloglevel = 2
    image_dir = args.scene / "images"
    gt = pycolmap.Reconstruction(str(args.scene / "gt"))
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "database.db"
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = args.camera_model
        start = time.perf_counter()
        pycolmap.extract_features(
            database, image_dir, camera_mode=pycolmap.CameraMode.SINGLE,
            reader_options=reader, device=pycolmap.Device.cpu,
        )
        timings["SIFT extraction"] = time.perf_counter() - start
        start = time.perf_counter()
        pycolmap.match_exhaustive(database, device=pycolmap.Device.cpu)
        timings["exhaustive matching + verification"] = time.perf_counter() - start
        start = time.perf_counter()
        models = pycolmap.incremental_mapping(database, image_dir, Path(tmp) / "sparse")
        timings["incremental mapping"] = time.perf_counter() - start
    if not models:
        print("incremental mapping produced no model")
        return 1
    rec = max(models.values(), key=lambda r: r.num_reg_images())
    errors = relative_rotation_errors(rec, gt)
    focal_est = rec.cameras[next(iter(rec.cameras))].mean_focal_length()
    focal_gt = gt.cameras[next(iter(gt.cameras))].mean_focal_length()

    rows = [(name, f"{seconds:.1f} s") for name, seconds in timings.items()]
    rows += [
        ("total", f"{sum(timings.values()):.1f} s ({os.cpu_count()} CPUs)"),
        ("models", str(len(models))),
        ("registered / total", f"{rec.num_reg_images()} / {gt.num_images()}"),
        ("3D points", str(rec.num_points3D())),
        ("mean reprojection error", f"{rec.compute_mean_reprojection_error():.3f} px"),
        ("rel. rotation error median", f"{np.median(errors):.4f} deg"),
        ("rel. rotation error max", f"{errors.max():.4f} deg"),
        ("focal error", f"{100 * abs(focal_est - focal_gt) / focal_gt:.3f} %"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"pycolmap {pycolmap.__version__} on {args.scene} ({args.camera_model})")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
