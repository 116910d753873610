"""Mapping time and peak memory of the mappers on synthetic databases of growing size.

Each database is an aerial survey synthesised here (:func:`synthesize`): ``N`` cameras on a
jittered grid at height ``HEIGHT`` (in grid spacings) over a scene of 3D points up to
``0.3 * HEIGHT`` high, every camera looking down with a random tilt of up to 30 degrees and a
random roll; one SIMPLE_RADIAL camera with a known focal length (a prior, so every pair is
CALIBRATED). A point is seen by the cameras it projects into (about ``--points-per-image`` per
image, tracks of about ten images, as in a real survey); every keypoint gets ``--noise`` pixels
of Gaussian noise and each image 10 % keypoints of nothing. Each image is matched with the
``--pairs-per-image`` images that see most of its points (as a retrieval front end would pick
them); each pair's matches are its common points plus ``--outliers`` of wrong ones (random
keypoints of the two images: 20 % of the raw matches by default). Verification is the ideal
RANSAC's: the inliers of the pair's CALIBRATED two-view geometry (exact E and F) are the matches
within ``MAX_EPIPOLAR_ERROR`` px (Sampson, COLMAP's default RANSAC threshold) of it - so, as in
a real database, the wrong matches that happen to lie near their epipolar line stay verified
inliers (their share is printed) and the mappers have to reject them.

Why not ``pycolmap.synthesize_dataset``: it puts every point in every image (tracks of N views:
COLMAP's global mapper keeps no track longer than ``track_max_num_views_per_track`` = 100 views
and so built no model at 200 images; with the limit raised it took 433 s there), it writes the
wrong matches only to the raw matches table and never to the verified inliers that the mappers
read, and its sparse pairs (one connectivity check per removed pair) and matches (all keypoint
pairs compared) are quadratic: 1,000 or 3,000 images are out of reach.

Every mapper runs in its own process on a copy, so its peak resident memory (``ru_maxrss``,
read before scoring) is its own, and so are its CPU seconds (printed with the load average at its end:
on a shared machine wall times are only comparable at similar loads). Prints registration, AUC@1/5/10 and median camera-centre error
against the exact ground truth, wall time, peak memory, and the time ratio against COLMAP's
global mapper. Run from the repository root:

    PYTHONPATH=. python benchmarks/mapper_scale.py --sizes 200 1000 3000
    PYTHONPATH=. python benchmarks/mapper_scale.py --sizes 3000 --mappers colmap_global recon_global
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pycolmap
from scipy.sparse import csr_matrix
from scipy.spatial import cKDTree
from tqdm import tqdm

from mappers import print_mapper_table

MAPPER_NAMES = ("colmap_incremental", "colmap_global", "recon_global")
HEIGHT = 5.0  # flying height in grid spacings: a nadir image covers 4 x 3 spacings of ground
MAX_TILT = 30.0  # degrees of the optical axis from the vertical
CAMERA = ("SIMPLE_RADIAL", 1024, 768, [1280.0, 512.0, 384.0, 0.05])
DISTRACTORS = 0.1  # keypoints of nothing, as a fraction of each image's visible points
MIN_PAIR_POINTS = 30  # a pair needs this many common points to be matched
MAX_EPIPOLAR_ERROR = 4.0  # px, Sampson: COLMAP's TwoViewGeometryOptions RANSAC max_error

CHILD = """
import json, os, resource, sys, time
from pathlib import Path
import pycolmap
sys.path[:0] = [{root!r}, {root!r} + "/benchmarks"]
from benchmarks.mappers import run_mapper
from scenes import score
pycolmap.logging.minloglevel = 2
work = Path({work!r})
model, seconds = run_mapper({mapper!r}, work / "database.db", work, work / "run_{mapper}", 0)
usage = resource.getrusage(resource.RUSAGE_SELF)  # before scoring's all-pairs arrays
load = os.getloadavg()[1]  # the machine's load over the last 5 minutes
result = score(model, work / "gt")
result.update(time=seconds, peak_rss_mb=usage.ru_maxrss / 1024, cpu_s=usage.ru_utime + usage.ru_stime, load=load)
print("RESULT " + json.dumps(result))
"""


def survey_rotations(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 3, 3) cam_from_world: optical axis down, tilted up to MAX_TILT towards a random azimuth, random roll."""
    tilt = np.radians(rng.uniform(0.0, MAX_TILT, count))
    azimuth = rng.uniform(0.0, 2 * np.pi, count)
    z = np.stack([np.sin(tilt) * np.cos(azimuth), np.sin(tilt) * np.sin(azimuth), -np.cos(tilt)], 1)
    roll = rng.uniform(0.0, 2 * np.pi, count)
    x = np.stack([np.cos(roll), np.sin(roll), np.zeros(count)], 1)
    x -= (x * z).sum(1, keepdims=True) * z
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.stack([x, np.cross(z, x), z], 1)


def synthesize(work: Path, num_images: int, points_per_image: int, outliers: float, noise: float,
               pairs_per_image: int, seed: int) -> dict[str, float]:
    """``work/database.db`` and its exact ground truth ``work/gt`` (COLMAP binary); returns the
    database's size (images, points, observations, pairs, verified matches and the fraction of
    them that is wrong)."""
    rng = np.random.default_rng(seed)
    work.mkdir(parents=True, exist_ok=True)
    side = int(np.ceil(np.sqrt(num_images)))
    grid = np.stack([np.arange(num_images) % side, np.arange(num_images) // side], 1).astype(float)
    centres = np.concatenate([grid + rng.uniform(-0.25, 0.25, grid.shape),
                              HEIGHT + rng.uniform(-0.3, 0.3, (num_images, 1))], 1)
    rotations = survey_rotations(rng, num_images)
    translations = -np.einsum("nij,nj->ni", rotations, centres)
    model, width, height, params = CAMERA
    camera = pycolmap.Camera.create_from_model_name(1, model, params[0], width, height)
    camera.params = params
    camera.has_prior_focal_length = True
    # Points over the cameras' ground footprints, about points_per_image in each nadir image.
    low, high = grid.min(0) - HEIGHT, grid.max(0) + HEIGHT
    density = points_per_image / (HEIGHT * width / params[0] * HEIGHT * height / params[0])
    num_points = int(density * np.prod(high - low))
    points = np.concatenate([rng.uniform(low, high, (num_points, 2)),
                             rng.uniform(0.0, 0.3 * HEIGHT, (num_points, 1))], 1)
    tree = cKDTree(points[:, :2])
    reach = HEIGHT * np.tan(np.radians(MAX_TILT + 40.0))  # beyond the widest tilted field of view
    seen, keypoints, slots, rays = [], [], [], []
    for n in tqdm(range(num_images), desc="synthetic images", unit="img", leave=False):
        near = np.asarray(tree.query_ball_point(centres[n, :2], reach), dtype=np.int64)
        local = (points[near] - centres[n]) @ rotations[n].T
        front = local[:, 2] > 0.1
        near, local = near[front], local[front]
        xy = camera.img_from_cam(local)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] <= width) & (xy[:, 1] >= 0) & (xy[:, 1] <= height)
        near, xy = near[inside], xy[inside]
        xy = np.concatenate([xy + rng.normal(0.0, noise, xy.shape),
                             rng.uniform([0, 0], [width, height], (int(DISTRACTORS * len(xy)), 2))])
        order = rng.permutation(len(xy))  # keypoint k of the image is row order[k]
        slot = np.empty(len(xy), np.int64)
        slot[order] = np.arange(len(xy))
        sort = np.argsort(near)
        seen.append(near[sort])
        slots.append(slot[:len(near)][sort])  # keypoint index of each seen point, by point id
        keypoints.append(xy[order])
        rays.append(camera.cam_from_img(xy[order]))  # undistorted normalised coordinates
    # Pairs: each image with the pairs_per_image images sharing most points with it.
    rows = np.repeat(np.arange(num_images), [len(s) for s in seen])
    visibility = csr_matrix((np.ones(len(rows)), (rows, np.concatenate(seen))), shape=(num_images, num_points))
    shared = (visibility @ visibility.T).tocoo()
    keep = (shared.row != shared.col) & (shared.data >= MIN_PAIR_POINTS)
    i, j, count = shared.row[keep], shared.col[keep], shared.data[keep]
    order = np.lexsort((-count, i))
    rank = np.arange(len(order)) - np.searchsorted(i[order], i[order])
    chosen = order[rank < pairs_per_image]
    pairs = np.unique(np.sort(np.stack([i[chosen], j[chosen]], 1), axis=1), axis=0)
    database = work / "database.db"
    database.unlink(missing_ok=True)
    num_matches = num_wrong = 0
    names = [f"image{n:05d}.png" for n in range(num_images)]
    with pycolmap.Database.open(database) as db:
        with pycolmap.DatabaseTransaction(db):
            camera.camera_id = db.write_camera(camera)
            ids = [db.write_image(pycolmap.Image(name=name, camera_id=camera.camera_id)) for name in names]
            for n in range(num_images):
                db.write_keypoints(ids[n], keypoints[n].astype(np.float32))
        K = camera.calibration_matrix()
        for start in tqdm(range(0, len(pairs), 2000), desc="synthetic pairs", unit="batch", leave=False):
            with pycolmap.DatabaseTransaction(db):
                for a, b in pairs[start:start + 2000]:
                    _, in_a, in_b = np.intersect1d(seen[a], seen[b], assume_unique=True, return_indices=True)
                    inliers = np.stack([slots[a][in_a], slots[b][in_b]], 1)
                    wrong = int(round(len(inliers) * outliers / (1.0 - outliers)))
                    wrong = np.stack([rng.integers(0, len(keypoints[a]), wrong),
                                      rng.integers(0, len(keypoints[b]), wrong)], 1)
                    matches = np.concatenate([inliers, wrong])
                    is_wrong = np.arange(len(matches)) >= len(inliers)
                    shuffle = rng.permutation(len(matches))
                    matches, is_wrong = matches[shuffle].astype(np.uint32), is_wrong[shuffle]
                    R = rotations[b] @ rotations[a].T
                    E = pycolmap.essential_matrix_from_pose(
                        pycolmap.Rigid3d(pycolmap.Rotation3d(R), translations[b] - R @ translations[a]))
                    squared = pycolmap.compute_squared_sampson_error(rays[a][matches[:, 0]], rays[b][matches[:, 1]], E)
                    verified = params[0] * np.sqrt(squared) < MAX_EPIPOLAR_ERROR  # normalised -> pixels
                    geometry = pycolmap.TwoViewGeometry()
                    geometry.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
                    geometry.E = E
                    geometry.F = np.linalg.inv(K).T @ E @ np.linalg.inv(K)
                    geometry.inlier_matches = matches[verified]
                    db.write_matches(ids[a], ids[b], matches)
                    db.write_two_view_geometry(ids[a], ids[b], geometry)
                    num_matches += int(verified.sum())
                    num_wrong += int((verified & is_wrong).sum())
    truth = pycolmap.Reconstruction()
    truth.add_camera_with_trivial_rig(camera)
    for n in range(num_images):
        truth.add_image_with_trivial_frame(pycolmap.Image(name=names[n], camera_id=camera.camera_id, image_id=ids[n]),
                                           pycolmap.Rigid3d(pycolmap.Rotation3d(rotations[n]), translations[n]))
    (work / "gt").mkdir(exist_ok=True)
    truth.write(work / "gt")
    lengths = np.bincount(np.concatenate(seen), minlength=num_points)
    return {"images": num_images, "points": num_points, "observations": int(lengths.sum()),
            "median_track": float(np.median(lengths[lengths >= 2])), "pairs": len(pairs), "matches": num_matches,
            "wrong_verified": num_wrong / max(num_matches, 1)}


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
    parser.add_argument("--points-per-image", type=int, default=800, help="points seen by a nadir image")
    parser.add_argument("--outliers", type=float, default=0.2, help="fraction of wrong matches among each pair's raw matches (before verification)")
    parser.add_argument("--noise", type=float, default=0.5, help="keypoint noise, pixels")
    parser.add_argument("--pairs-per-image", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        for size in args.sizes:
            work = root / f"synthetic_{size}"
            settings = [size, args.points_per_image, args.outliers, args.noise, args.pairs_per_image, args.seed]
            stats_file = work / "database.json"  # a --work rerun with the same settings reuses the database
            if stats_file.is_file() and json.loads(stats_file.read_text())["settings"] == settings:
                stats = json.loads(stats_file.read_text())["database"]
            else:
                stats_file.unlink(missing_ok=True)
                stats = synthesize(work, *settings)
                stats_file.write_text(json.dumps({"settings": settings, "database": stats}))
            rows = {mapper: run_child(mapper, work, size) for mapper in args.mappers}
            results[size] = {"database": stats, "mappers": rows}
            print_mapper_table(f"{size} images, {stats['points']} points, {stats['observations']} observations "
                               f"(median track {stats['median_track']:.0f}), {stats['pairs']} pairs, "
                               f"{args.outliers:.0%} wrong raw matches, {stats['matches']} verified "
                               f"({stats['wrong_verified']:.1%} wrong), {args.noise} px noise", rows, "colmap_global", "x global")
            for mapper, row in rows.items():  # the machine may be shared: CPU time and load say how much
                print(f"  {mapper}: {row.get('cpu_s', float('nan')):.0f} CPU s (process, all threads, incl. imports), "
                      f"load average {row.get('load', float('nan')):.1f} (5 min) at its end")
            if args.work is None:
                shutil.rmtree(work)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
