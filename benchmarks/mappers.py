"""The three mappers - COLMAP incremental, COLMAP global (GLOMAP) and recon_global - on the same
database per scene, in one process.

Each scene's database is built once with recon's default front end (COLMAP SIFT, mutual NN +
ratio, the default pairs - every pair on these scenes of at most 25 images -, EXIF priors, COLMAP
verification) through :class:`recon.pipeline.Pipeline`;
every mapper then runs on its own copy. Prints per scene and mapper: registered images,
AUC@1/5/10 (pairwise relative poses against ground truth), median camera-centre error after the
least-squares Sim3 (in ground-truth units), mapping wall time and its ratio to COLMAP
incremental's. Run from the repository root:

    PYTHONPATH=. python benchmarks/mappers.py                       # every scene found (scenes.py)
    PYTHONPATH=. python benchmarks/mappers.py --scenes temple_sparse --work /tmp/mappers
    PYTHONPATH=. python benchmarks/mappers.py --scenes temple_sparse --only-database

``--repeat N`` runs every mapper N times, the mappers taking turns, and reports the fastest
run of each (on a shared machine the load changes from second to second; alternating and the
minimum keep the ratios comparable). ``--work`` keeps the databases (a rerun reuses them); the large-image scenes (fountain 3072x2048,
fox 1080x1920) are extracted at ``features.resize_max=1024``, and fox (67 video frames) is matched
with sequential pairs (overlap 10) instead of all 2,211 pairs.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import pycolmap

from recon.config import load_config
from recon.mapping import MAPPERS
from recon.pipeline import Pipeline
from scenes import SCENES as ALL_SCENES
from scenes import score

MAPPER_NAMES = ("colmap_incremental", "colmap_global", "recon_global")
# Extra front-end overrides per scene: large images at 1024 px; fox's 67 video frames sequentially.
FRONT_END = {"fountain": ["features.resize_max=1024"],
             "fox": ["features.resize_max=1024", "pairs.name=sequential", "pairs.overlap=10"]}
SCENES = {name: (images, gt, [*overrides, *FRONT_END.get(name, [])])
          for name, (images, gt, overrides) in ALL_SCENES.items() if name != "sample"}


def build_scene_database(images: Path, work: Path, overrides: list[str]) -> Path:
    """The default front end up to ``database.db`` (stages skip when their output is current)."""
    pipeline = Pipeline(images, work, load_config("default", overrides))
    pipeline.build_front_end()
    return pipeline.database_path


def run_mapper(name: str, database: Path, images: Path, scratch: Path, seed: int) -> tuple[pycolmap.Reconstruction | None, float]:
    """One mapper on a private copy of the database; returns (model or None, wall seconds)."""
    scratch.mkdir(parents=True, exist_ok=True)
    copy = scratch / "database.db"
    shutil.copy(database, copy)
    config = load_config("default", [f"mapper.name={name}"])
    conf = {k: v for k, v in config["mapper"].items() if k != "name"}
    choice = MAPPERS.get(name)
    device = __import__("matchers").resolve_device(config["device"])
    start = time.perf_counter()
    try:
        model = choice.function(copy, images, scratch, conf, device, seed)
    except RuntimeError as error:
        print(f"  {name} failed: {error}")
        model = None
    return model, time.perf_counter() - start


def print_mapper_table(title: str, rows: dict[str, dict], reference: str, label: str) -> None:
    """One row per mapper: registered, AUC@1/5/10, centre error, time, peak memory when measured,
    and the time as a multiple of ``reference``'s (column ``label``)."""
    memory = any("peak_rss_mb" in r for r in rows.values())
    print(f"\n== {title}")
    print(f"{'mapper':20} {'registered':>10} {'AUC@1':>7} {'AUC@5':>7} {'AUC@10':>7} {'centre err':>11} "
          f"{'time s':>8}" + (f" {'peak MB':>8}" if memory else "") + f" {label:>9}")
    reference_time = rows.get(reference, {}).get("time")
    for name, r in rows.items():
        aucs = " ".join(f"{r.get(f'auc@{k}', float('nan')):7.3f}" for k in ("1", "5", "10"))
        centre = r.get("center_error")
        centre = f"{centre:11.4g}" if centre is not None else f"{'n/a':>11}"
        ratio = f"{r['time'] / reference_time:9.2f}" if reference_time else f"{'n/a':>9}"
        peak = f" {r['peak_rss_mb']:8.0f}" if memory else ""
        print(f"{name:20} {r['registered']:>4}/{r['num_images']:<5} {aucs} {centre} {r['time']:8.2f}{peak} {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", nargs="*", default=list(SCENES), choices=list(SCENES))
    parser.add_argument("--mappers", nargs="*", default=list(MAPPER_NAMES), choices=list(MAPPER_NAMES))
    parser.add_argument("--work", type=Path, help="keep databases here (default: a temporary folder)")
    parser.add_argument("--only-database", action="store_true", help="build the databases and stop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per mapper (mappers alternate); the fastest is reported")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    pycolmap.logging.minloglevel = 2
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for scene in args.scenes:
            images, gt, overrides = SCENES[scene]
            if not images.is_dir():
                print(f"skipping {scene}: {images} not found")
                continue
            database = build_scene_database(images, work / scene, overrides)
            if args.only_database:
                continue
            with pycolmap.Database.open(database) as db:
                names = [image.name for image in db.read_all_images()]
            rows = {}
            for _ in range(args.repeat):  # the mappers take turns, so load changes hit them alike
                for name in args.mappers:
                    model, seconds = run_mapper(name, database, images, work / scene / f"run_{name}", args.seed)
                    rows[name] = {**score(model, gt, names), "time": min(seconds, rows.get(name, {}).get("time", seconds))}
            results[scene] = rows
            print_mapper_table(scene, rows, "colmap_incremental", "x incr.")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
