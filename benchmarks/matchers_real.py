"""Learned sparse matching on real images (issue 7): ALIKED + LightGlue against SIFT + NN.

Printed in one run:

1. with ``--reconstruct SCENE ...``: SIFT+NN (the default preset) against ALIKED+LightGlue (the
   aliked_lightglue preset: rotation voting, ``features.rotations: 4``, and a 2 px RANSAC
   threshold) and variants that undo one of the preset's choices (``aliked_4px``: COLMAP's 4 px;
   ``aliked_upright``: ``features.rotations=1``) on the same scenes - registered images,
   AUC@1/5/10 and wall time, one table over all scenes, and per ground-truth scene whether the
   learned rows reach SIFT's AUC@5 (scenes: temple_sparse, fountain, sacre_coeur, fox, ...; see
   benchmarks/scenes.py). ``--methods`` picks the learned rows. ``--set KEY=VALUE`` applies to
   every method. Each preset's default pairs are the scene graph of its own features (every pair
   up to 25 images); for the same pairs on a larger scene give all methods one pairs file:
   ``--set pairs.name=from_file pairs.path=PAIRS``. ``--work DIR`` keeps every run in
   ``DIR/SCENE/PRESET-HASH`` (the hash of the features, matcher, pairs and priors options): a
   rerun resumes (features and matches per image and pair), and variants that change only
   database (verification) or mapper options - ``aliked_4px`` - reuse the features and matches:
   the database is rebuilt from them and re-verified, nothing is re-extracted or re-matched. Each
   stage's time is recorded in ``benchmark-times.json`` by the run that did its work, so reused
   stages still count in a method's time.
2. matching throughput in pairs per second at 1024 px (longest side) and 2048 keypoints per image,
   with the official weights, on CPU and on CUDA when a GPU is present: LightGlue with its
   adaptive defaults (early stopping + point pruning) and with all 9 layers on all points, against
   a reference measured in the same process on the same descriptors (brute-force mutual nearest
   neighbour, what SIFT+NN-style matching costs). ALIKED extraction throughput (images per
   second) is printed too. ``--no-throughput`` skips it.

What the preset's choices rest on (2 shared, heavily loaded CPU cores, Nov 2026; database +
mapper reruns on the same features and matches):

- RANSAC threshold (``database.max_error``), AUC@1/5/10:
  temple_sparse (640x480): 1 px 16/16 .150/.795/.898, 1.5 px 16/16 .118/.777/.888,
  2 px 16/16 .104/.759/.879, 3 px 11/16 .023/.152/.225, 4 px 9/16 .039/.179/.233
  (above 2 px pairs between symmetric views of the temple survive verification);
  fountain (3072x2048, keypoints found at 1024 px): 1, 2, 4 and 6 px all 11/11 at
  .679/.936/.968 within 0.001. Nothing calls for a threshold relative to the image size (the large
  images do not care); 2 px rather than 1 px keeps a margin for blurrier scenes.
- rotation voting: temple_sparse turns views 12-16 by 180 degrees (16/16 registered; 10/16 with
  ``rotations=1`` at 4 px in an earlier run); fountain stays upright and its features are bit-identical to ``rotations=1``. Cost on
  fountain: 4 x 512 px candidates took 456 s for 11 images against 249 s for the 1024 px
  extraction (1.8x; LightGlue's 55 pairs took 392 s); sacre_coeur (10 images, all upright):
  129 s against 69 s (1.9x; 45 pairs 765 s). sacre_coeur registers 10/10 at 1, 2 and 4 px.
  fox's 67 images all stay upright too (so its features are those of ``rotations=1``); the
  preset on fox (356 shared pairs): 67/67, AUC .440/.8865/.943, 3422 s (features with the votes
  2349 s, LightGlue 1001 s, mapper 61 s) against SIFT+NN's 67/67, .439/.8864/.943 (SIFT ran
  after the other jobs had stopped: the 12x time ratio of that table is mostly load).

The official ALIKED and LightGlue weights must be findable (``RECON_WEIGHTS``, default
``../shared/weights``).

    PYTHONPATH=. python benchmarks/matchers_real.py [--repeats 5] [--threads 2]
    PYTHONPATH=. python benchmarks/matchers_real.py --reconstruct temple_sparse fountain sacre_coeur
        --methods aliked aliked_4px --no-throughput --work /tmp/matchers_real
    PYTHONPATH=. python -m recon pairs ../shared/data/ngp_fox/images /tmp/fox_pairs   # the default graph on SIFT
    PYTHONPATH=. python benchmarks/matchers_real.py --reconstruct fox --methods aliked --no-throughput
        --work /tmp/matchers_real --set pairs.name=from_file pairs.path=/tmp/fox_pairs/pairs.txt
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

import matchers
from matchers.keypoints import resize_longest_side

SHARED = Path(os.environ.get("RECON_SHARED", Path(__file__).resolve().parents[2] / "shared"))
PAIR = ("data/hloc_sacre_coeur/mapping/03903474_1471484089.jpg",
        "data/hloc_sacre_coeur/mapping/10265353_3838484249.jpg")


def load_image(path: Path) -> torch.Tensor:
    """(1, 3, H, W) RGB float in [0, 1], read like cvg/LightGlue's ``load_image``."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read {path} (set RECON_SHARED to the shared folder)")
    return torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(2, 0, 1).float()[None] / 255.0


def mutual_nearest_neighbour(data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference matcher: mutual nearest neighbours of L2-normalised descriptors (B, N, D)."""
    similarity = data["descriptors0"] @ data["descriptors1"].transpose(1, 2)
    nn01, nn10 = similarity.argmax(2), similarity.argmax(1)
    mutual = nn10.gather(1, nn01) == torch.arange(nn01.shape[1], device=nn01.device)[None]
    return {"matches0": torch.where(mutual, nn01, -1)}


def timed(function: Callable[[], dict], device: torch.device, repeats: int) -> tuple[float, float, dict]:
    """Median wall-clock and process-CPU seconds per call after one warm-up call, and the last
    output. CPU time (all threads) is the number to compare on a shared, loaded machine."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.no_grad():
        out = function()
        wall, cpu = [], []
        for _ in range(repeats):
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            out = function()
            sync()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return float(np.median(wall)), float(np.median(cpu)), out


def benchmark(device: torch.device, repeats: int, size: int, keypoints: int) -> list[tuple[str, float, float, int]]:
    """(name, wall seconds, CPU seconds per item, number of matches or keypoints) rows for one device."""
    # Top-k mode (detection_threshold 0) gives exactly `keypoints` keypoints per image.
    extractor = matchers.load("aliked", weights="official", device=device,
                              max_num_keypoints=keypoints, detection_threshold=0.0)
    images = [resize_longest_side(load_image(SHARED / p).to(device), size)[0] for p in PAIR]
    wall, cpu, features = timed(lambda: extractor({"image": images[0]}), device, repeats)
    rows = [(f"ALIKED-n16 extraction {tuple(images[0].shape[-2:])}", wall, cpu, features["keypoints"].shape[1])]
    with torch.no_grad():
        feats = [extractor({"image": image}) for image in images]
    data = {f"{key}{i}": f[key] for i, f in enumerate(feats) for key in ("keypoints", "descriptors")}
    data.update({f"image_size{i}": torch.tensor([im.shape[-1], im.shape[-2]], device=device)[None]
                 for i, im in enumerate(images)})
    wall, cpu, out = timed(lambda: mutual_nearest_neighbour(data), device, repeats)
    rows.append(("mutual NN (reference)", wall, cpu, int((out["matches0"] > -1).sum())))
    for label, conf in (("LightGlue adaptive (defaults)", {}),
                        ("LightGlue full (9 layers, no pruning)", {"depth_confidence": -1, "width_confidence": -1})):
        matcher = matchers.load("aliked_lightglue", weights="official", device=device, **conf)
        wall, cpu, out = timed(lambda: matcher(data), device, repeats)
        rows.append((label, wall, cpu, int((out["matches0"] > -1).sum())))
    return rows


# key: (label, preset, overrides) of the compared methods; the first is the reference. The
# variants undo one of the aliked_lightglue preset's choices each (rotation voting, 2 px RANSAC).
METHODS = {"sift": ("SIFT + NN", "default", []),
           "aliked": ("ALIKED + LightGlue", "aliked_lightglue", []),
           "aliked_4px": ("ALIKED + LG, 4 px", "aliked_lightglue", ["database.max_error=4.0"]),
           "aliked_upright": ("ALIKED + LG, rotations=1", "aliked_lightglue", ["features.rotations=1"])}
FRONT_END_STAGES = ("images", "priors", "features", "pairs", "matches")
TIMES_FILE = "benchmark-times.json"


def front_end_folder(scene: str, preset: str, overrides: list[str]) -> str:
    """Work folder name of a method on ``scene``: methods whose features, matcher, pairs and priors
    resolve to the same configuration share it, so those differing only in database (verification)
    or mapper options reuse its features and matches, and a preset that adopts an override shares
    the folder of the runs made with that override."""
    from scenes import SCENES

    from recon.config import load_config
    from recon.fingerprint import fingerprint

    config = load_config(preset, [*SCENES[scene][2], *overrides])
    return f"{preset}-{fingerprint(*(config[stage] for stage in ('features', 'matcher', 'pairs', 'priors')))[:8]}"


def method_seconds(folder: Path, label: str, result: dict) -> float:
    """The method ``label``'s wall time in ``folder``: every stage's time from the last run that did
    its work (recorded in ``folder/benchmark-times.json``), so a rerun that reuses the features and
    matches (``--work``) still counts them. Front-end stages are shared by the folder's methods, the
    database, mapping and pictures stages are the method's own. A stage resumed after a kill counts
    only its resumed part."""
    from recon.io.jsonfile import write_json

    path = folder / TIMES_FILE
    times = json.loads(path.read_text()) if path.exists() else {}
    for stage, seconds in result["time"].items():
        owner = times.setdefault("front_end" if stage in FRONT_END_STAGES else label, {})
        if result["computed"].get(stage) == 0 and stage in owner:
            continue  # skipped: its output was up to date
        owner[stage] = seconds
    write_json(path, times)
    return sum(times.get("front_end", {}).values()) + sum(times.get(label, {}).values())


def compare_reconstructions(scenes: list[str], overrides: list[str], keys: list[str], work: Path | None) -> None:
    """The methods ``keys`` of :data:`METHODS` (SIFT, the reference, always first) on each scene;
    one table over all scenes, then the issue's AUC@5 check.

    Each method runs in ``work/SCENE/`` :func:`front_end_folder` (a temporary folder without
    ``work``): a rerun resumes there (recon skips or resumes stages made with the same
    configuration), and methods that differ only in database / mapper options reuse the features
    and matches (only the geometric verification and the mapper run again)."""
    import tempfile

    from scenes import SCENES, run_recon

    from recon.io.images import list_image_files

    methods = [METHODS["sift"], *(METHODS[key] for key in keys if key != "sift")]
    results: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = work or Path(tmp)
        for scene in scenes:
            for label, preset, extra in methods:
                folder = root / scene / front_end_folder(scene, preset, [*extra, *overrides])
                start = time.perf_counter()
                try:
                    result = run_recon(scene, preset, folder, [*extra, *overrides])
                    result["total"] = method_seconds(folder, label, result)
                except RuntimeError as error:  # e.g. the mapper built no model: a row, not a crash
                    print(f"{scene} / {label}: {error}")
                    result = {"registered": 0, "num_images": len(list_image_files(SCENES[scene][0])),
                              "time": {}, "total": time.perf_counter() - start}
                results[scene, label] = result
                print(f"{scene} / {label}: {folder}")
    print(f"\nreconstructions{' with ' + ' '.join(overrides) if overrides else ''}")
    print(f"{'scene':14} {'method':26} {'registered':>10} {'AUC@1':>7} {'AUC@5':>7} {'AUC@10':>7} "
          f"{'time s':>8} {'x SIFT':>7}")
    for scene in scenes:
        reference = results[scene, methods[0][0]]
        for label, _, _ in methods:
            r = results[scene, label]
            aucs = " ".join(f"{r.get(f'auc@{k}', float('nan')):7.3f}" for k in (1, 5, 10))
            print(f"{scene:14} {label:26} {r['registered']:>4}/{r['num_images']:<5} {aucs} "
                  f"{r['total']:8.1f} {r['total'] / reference['total']:7.2f}")
    for scene in scenes:
        if SCENES[scene][1] is None:
            continue
        sift = results[scene, methods[0][0]].get("auc@5", 0.0)
        for label, _, _ in methods[1:]:
            r = results[scene, label]
            verdict = "reaches" if r.get("auc@5", 0.0) >= sift else "is BELOW"
            print(f"{scene}: {label} AUC@5 {r.get('auc@5', 0.0):.4f} {verdict} SIFT's {sift:.4f}; "
                  f"registered {r['registered']}/{r['num_images']}")


def print_throughput(args: argparse.Namespace) -> None:
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
        print(f"\n{name}: {args.size} px, {args.keypoints} keypoints, median of {args.repeats}")
        rows = benchmark(device, args.repeats, args.size, args.keypoints)
        reference = next(wall for label, wall, _, _ in rows if label.startswith("mutual NN"))
        print(f"{'step (pairs, or images for extraction)':42s} {'wall ms':>9s} {'per s':>8s} {'cpu ms':>9s} "
              f"{'count':>6s} {'x reference':>12s}")
        for label, wall, cpu, count in rows:
            ratio = f"{wall / reference:12.1f}" if "extraction" not in label else f"{'':12s}"
            print(f"{label:42s} {wall * 1e3:9.1f} {1 / wall:8.2f} {cpu * 1e3:9.1f} {count:6d} {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--size", type=int, default=1024, help="longest image side")
    parser.add_argument("--keypoints", type=int, default=2048)
    parser.add_argument("--reconstruct", nargs="*", default=[], metavar="SCENE",
                        help="compare SIFT+NN and ALIKED+LightGlue reconstructions of these scenes")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS),
                        help="methods of --reconstruct (SIFT, the reference, always runs)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="config overrides applied to every method of --reconstruct")
    parser.add_argument("--work", type=Path, help="keep each method's work folder here (work/SCENE/PRESET-HASH): "
                        "a rerun resumes and reuses it (default: a temporary folder)")
    parser.add_argument("--no-throughput", action="store_true", help="skip the throughput table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("RECON_WEIGHTS", str(SHARED / "weights"))
    if args.reconstruct:
        compare_reconstructions(args.reconstruct, args.overrides, args.methods, args.work)
    if not args.no_throughput:
        print_throughput(args)


if __name__ == "__main__":
    main()
