"""Mapping time and peak memory of the mappers on synthetic databases of growing size.

Each database comes from ``pycolmap.synthesize_dataset``: one camera with a known focal length,
``--points`` 3D points, keypoints with ``--noise`` pixels of Gaussian noise, ``--outliers`` of
every pair's matches wrong (and still listed as verified inliers, the harder case), and a random
``--pair-fraction`` of all image pairs matched. Every mapper runs in its own process on a copy,
so its peak resident memory (``ru_maxrss``) is its own. Prints registration, AUC@1/5/10 and
median camera-centre error against the exact ground truth, wall time, peak memory, and the time
ratio against COLMAP's global mapper. Run from the repository root:

    PYTHONPATH=. python benchmarks/mapper_scale.py --sizes 200 1000 3000
    PYTHONPATH=. python benchmarks/mapper_scale.py --sizes 200 --mappers colmap_global recon_global
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pycolmap

from mappers import print_mapper_table

MAPPER_NAMES = ("colmap_incremental", "colmap_global", "recon_global")

CHILD = """
import json, resource, sys, time
from pathlib import Path
import pycolmap
sys.path[:0] = [{root!r}, {root!r} + "/benchmarks"]
from benchmarks.mappers import run_mapper
from scenes import score
pycolmap.logging.minloglevel = 2
work = Path({work!r})
model, seconds = run_mapper({mapper!r}, work / "database.db", work, work / "run_{mapper}", 0)
result = score(model, work / "gt")
result["time"] = seconds
result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(result))
"""


def synthesize(work: Path, num_images: int, num_points: int, outliers: float, noise: float, pair_fraction: float,
               seed: int) -> None:
    """``work/database.db`` and its exact ground truth ``work/gt`` (COLMAP binary)."""
    work.mkdir(parents=True, exist_ok=True)
    options = pycolmap.SyntheticDatasetOptions()
    options.num_rigs, options.num_cameras_per_rig, options.num_frames_per_rig = 1, 1, num_images
    options.num_points3D = num_points
    options.camera_has_prior_focal_length = True
    options.inlier_match_ratio = 1.0 - outliers
    options.match_config = pycolmap.SyntheticDatasetMatchConfig.SPARSE
    options.match_sparsity = 1.0 - pair_fraction
    pycolmap.set_random_seed(seed)
    database = work / "database.db"
    database.unlink(missing_ok=True)
    with pycolmap.Database.open(database) as db:
        truth = pycolmap.synthesize_dataset(options, db)
        if noise > 0:
            noise_options = pycolmap.SyntheticNoiseOptions()
            noise_options.point2D_stddev = noise
            pycolmap.synthesize_noise(noise_options, truth, db)
    (work / "gt").mkdir(exist_ok=True)
    truth.write(work / "gt")


def run_child(mapper: str, work: Path, num_images: int) -> dict:
    code = CHILD.format(root=str(Path(__file__).resolve().parents[1]), work=str(work), mapper=mapper)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
        print(line)  # e.g. a mapper's failure message
    print(done.stderr[-2000:])
    return {"registered": 0, "num_images": num_images, "time": float("nan"), "peak_rss_mb": float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[200, 1000, 3000])
    parser.add_argument("--mappers", nargs="*", default=list(MAPPER_NAMES), choices=list(MAPPER_NAMES))
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--outliers", type=float, default=0.2)
    parser.add_argument("--noise", type=float, default=0.5, help="keypoint noise, pixels")
    parser.add_argument("--pair-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        for size in args.sizes:
            work = root / f"synthetic_{size}"
            synthesize(work, size, args.points, args.outliers, args.noise, args.pair_fraction, args.seed)
            rows = {mapper: run_child(mapper, work, size) for mapper in args.mappers}
            results[size] = rows
            print_mapper_table(f"{size} images, {args.points} points, {args.outliers:.0%} wrong matches, "
                               f"{args.noise} px noise, {args.pair_fraction:.0%} of pairs", rows, "colmap_global",
                               "x global")
            if args.work is None:
                shutil.rmtree(work)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
