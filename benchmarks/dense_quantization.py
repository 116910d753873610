"""Peak memory and time of turning dense matches into tracks, as the number of pairs grows.

Synthetic matches (no network): a fixed collection of images, each pair with ``--matches`` random
correspondences whose positions repeat across pairs the way real dense matches of the same
surfaces do (drawn from a fixed pool of surface points per image, plus sub-cell jitter). Pass 1
output (``dense-matches.h5``) is written directly; pass 2 (``write_tracks``, the part whose
memory must not grow with the number of pairs) is measured with tracemalloc (numpy reports its
allocations to it). Pass 2 holds one image's touched cells at a time (plus a small cache of
cell-id arrays), so memory follows the largest image's keypoint count - bounded by the image's
grid, saturating as pairs revisit the same surfaces - not the number of pairs or images: the
bytes per keypoint of the largest image column stays put while the pairs grow 16x.

    python benchmarks/dense_quantization.py [--images 60 --pairs 50 200 800 --matches 10000]
"""
from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from itertools import combinations
from pathlib import Path

import numpy as np

from recon.io import h5
from recon.match.dense import write_raw_pair, write_tracks


def synthetic_raw(path: Path, names: list[str], pairs: list[tuple[str, str]], matches: int, size: tuple[int, int],
                  seed: int) -> None:
    rng = np.random.default_rng(seed)
    pool = {name: rng.uniform(0, size[0] - 1, (matches, 2)) * [1, size[1] / size[0]] for name in names}
    with h5.H5Writer(path) as writer:
        for name0, name1 in pairs:
            pick0 = rng.integers(0, len(pool[name0]), matches)
            pick1 = rng.integers(0, len(pool[name1]), matches)
            kp0 = pool[name0][pick0] + rng.normal(0, 0.3, (matches, 2))
            kp1 = pool[name1][pick1] + rng.normal(0, 0.3, (matches, 2))
            write_raw_pair(writer, name0, name1, kp0, kp1, rng.uniform(0.2, 1, matches).astype(np.float32),
                           2.0, size, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--pairs", type=int, nargs="*", default=[50, 200, 800])
    parser.add_argument("--matches", type=int, default=10000)
    args = parser.parse_args()
    names = [f"im{i:04d}.jpg" for i in range(args.images)]
    all_pairs = list(combinations(names, 2))
    rng = np.random.default_rng(0)
    size = (1024, 768)
    print(f"{'pairs':>6} {'peak MiB':>9} {'seconds':>8} {'keypoints':>10} {'largest image':>14} {'bytes/kp of it':>15}")
    rows = []
    for count in args.pairs:
        pairs = [all_pairs[i] for i in sorted(rng.choice(len(all_pairs), min(count, len(all_pairs)), replace=False))]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            synthetic_raw(tmp / "raw.h5", names, pairs, args.matches, size, seed=count)
            sizes = {name: size for name in names}
            tracemalloc.start()
            start = time.perf_counter()
            write_tracks(pairs, sizes, tmp / "raw.h5", tmp / "features.h5", tmp / "matches.h5", "bench")
            seconds = time.perf_counter() - start
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            counts = [len(h5.read_keypoints(tmp / "features.h5", n)) for n in names]
        rows.append((count, peak / 2**20, seconds, sum(counts)))
        print(f"{count:>6} {peak / 2**20:>9.1f} {seconds:>8.1f} {sum(counts):>10} {max(counts):>14} "
              f"{peak / max(counts):>15.1f}")
    first = rows[0]
    for count, peak, seconds, _ in rows[1:]:
        print(f"{count} vs {first[0]} pairs: {count / first[0]:.0f}x pairs -> {peak / first[1]:.2f}x peak memory, "
              f"{seconds / first[2]:.1f}x time")


if __name__ == "__main__":
    main()
