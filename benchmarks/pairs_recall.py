"""Pair selection benchmark: does the MASt3R-SfM scene graph keep the pairs that matter, cheaply?

Four parts (``python benchmarks/pairs_recall.py {synthetic,features,reconstruct,scaling}``):

* ``synthetic`` - a 500-view scene with exact geometry (a ring-shaped wall of 3D points seen from
  cameras inside it; each point has a descriptor, each observation adds noise; clutter tokens).
  Strong pairs = for every image, the 5 partners with which it shares the most visible 3D points,
  counted directly from the geometry. The views' features go into a real ``features.h5`` and the
  registered strategies run on it exactly as in the pipeline. Reports recall of the strong pairs
  and pairs as a fraction of exhaustive for ``mast3r_graph`` (our rule), the reference settings
  (Na = 20, official kNN counting the image itself, S not symmetrised) and exhaustive.
* ``features`` - the same on a real collection: ``--features features.h5`` (e.g. SIFT on
  ``shared/data/ngp_fox``) and ``--model`` the exhaustive reconstruction whose shared 3D points
  define the strong pairs.
* ``reconstruct`` - a benchmark scene (default ``fox``, ``shared/data/ngp_fox``) reconstructed with
  exhaustive pairs and with ``mast3r_graph`` in one folder (the graph run reuses the features and
  matches): strong pairs from the exhaustive model, recall / pair fraction, registration and
  AUC@1/5/10/20 of both runs against the ground truth.
* ``scaling`` - time and peak memory of the whole graph (codebook training included) on
  synthetic tokens (300 per image) for N = 1k, 3k, 10k at dim 128 and N = 1k, 3k at dim 1024,
  each in its own process so peak RSS is per run; prints the time split (codebook / quantise +
  aggregate / inverted file / graph) and the growth exponent between sizes.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon.graph import PAIR_STRATEGIES, PairsContext  # noqa: E402
from recon.graph.asmk import ASMKParams, Codebook, aggregate_collection, asmk_similarity, auto_codebook_size  # noqa: E402
from recon.graph.retrieval import covisibility_counts  # noqa: E402
from recon.graph.scene_graph import (auto_coarse_size, auto_graph_size, graph_pairs, image_similarity,  # noqa: E402
                                     scene_graph, token_source)
from recon.heap import reuse_freed_memory  # noqa: E402
from recon.io.h5 import H5Writer, list_names, write_features  # noqa: E402

STRONG_PARTNERS = 5


# --- ground truth ------------------------------------------------------------------------------

def strong_pairs(counts: np.ndarray, partners: int = STRONG_PARTNERS) -> set[tuple[int, int]]:
    """For every image its ``partners`` images with most shared points (> 0), as unordered pairs."""
    counts = counts.copy()
    np.fill_diagonal(counts, -1)
    best = np.argsort(-counts, axis=1, kind="stable")[:, :partners]
    return {(min(i, j), max(i, j)) for i in range(len(counts)) for j in best[i] if counts[i, j] > 0}


def evaluate(pairs: list[tuple[str, str]], names: list[str], strong: set[tuple[int, int]]) -> dict:
    index = {n: i for i, n in enumerate(names)}
    chosen = {(min(index[a], index[b]), max(index[a], index[b])) for a, b in pairs}
    total = len(names) * (len(names) - 1) // 2
    return {"pairs": len(chosen), "fraction": len(chosen) / total, "recall": len(chosen & strong) / len(strong)}


# --- synthetic scene with exact geometry -------------------------------------------------------

def ring_scene(num_views: int, seed: int, num_points: int = 60_000, dim: int = 128):
    """Points on a cylinder wall (radius 10, height 3) seen from cameras inside it.

    Returns per-view (keypoints (n, 2), descriptors (n, D), visible point ids (n,)) and the
    (N, N) co-visibility counts. A camera sees a point in front of it, inside a 60-degree
    horizontal / 45-degree vertical field of view (640 x 480 pinhole), closer than 14 m.
    """
    rng = np.random.default_rng(seed)
    saliency = rng.uniform(0, 1, num_points)  # a detector's response: a property of the point, hence repeatable
    angle = rng.uniform(0, 2 * np.pi, num_points)
    points = np.stack([10 * np.cos(angle), 10 * np.sin(angle), rng.uniform(0, 3, num_points)], 1)
    point_descriptors = rng.standard_normal((num_points, dim)).astype(np.float32)
    radius = 6 * np.sqrt(rng.uniform(0, 1, num_views))
    where = rng.uniform(0, 2 * np.pi, num_views)
    centres = np.stack([radius * np.cos(where), radius * np.sin(where), np.full(num_views, 1.5)], 1)
    yaw = rng.uniform(0, 2 * np.pi, num_views)
    focal, width, height = 554.0, 640, 480
    views, visible_sets = [], []
    for c, a in zip(centres, yaw):
        forward = np.array([np.cos(a), np.sin(a), 0.0])
        right = np.array([np.sin(a), -np.cos(a), 0.0])
        down = np.array([0.0, 0.0, -1.0])
        rel = points - c
        z = rel @ forward
        u = focal * (rel @ right) / np.maximum(z, 1e-6) + width / 2
        v = focal * (rel @ down) / np.maximum(z, 1e-6) + height / 2
        visible = np.nonzero((z > 0.5) & (z < 14) & (u >= 0) & (u < width) & (v >= 0) & (v < height))[0]
        visible = visible[np.argsort(-saliency[visible])[:1500]]  # a detector's budget, strongest first
        clutter = rng.standard_normal((200, dim)).astype(np.float32)
        noisy = point_descriptors[visible] + 0.5 * rng.standard_normal((len(visible), dim)).astype(np.float32)
        descriptors = np.concatenate([noisy, clutter])
        descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
        keypoints = np.concatenate([np.stack([u[visible], v[visible]], 1),
                                    rng.uniform(0, [width, height], (200, 2))]).astype(np.float32)
        scores = np.concatenate([saliency[visible] + 0.1 * rng.uniform(0, 1, len(visible)), rng.uniform(0, 1.1, 200)])
        views.append((keypoints, descriptors, scores.astype(np.float32)))
        visible_sets.append(visible)
    incidence = np.zeros((num_views, num_points), dtype=np.float32)
    for i, visible in enumerate(visible_sets):
        incidence[i, visible] = 1
    return views, incidence @ incidence.T


def write_views(path: Path, names: list[str], views) -> None:
    with H5Writer(path) as writer:
        for name, (keypoints, descriptors, scores) in zip(names, views):
            write_features(writer, name, keypoints, descriptors.T, scores, (640, 480))


def compare_strategies(names: list[str], features: Path, strong: set, seed: int,
                       counts: np.ndarray | None = None, overrides: dict | None = None) -> None:
    """Print recall / pair fraction for our graph, the reference settings and exhaustive; with
    ``counts``, also the same graph rule on the true co-visibility (the similarity's upper bound).

    The ASMK similarity is computed once, exactly as the ``mast3r_graph`` strategy computes it
    (same functions, its options with ``overrides``), and every graph rule is applied to it:
    the strategy's (with query expansion when configured, and the same rule without it), the
    reference settings, and the rule on the true co-visibility.
    """
    num = len(names)
    conf = PAIR_STRATEGIES.conf("mast3r_graph", overrides or {})
    context = PairsContext(image_dir=features.parent, output_dir=features.parent, features_path=features, seed=seed)
    start = time.perf_counter()
    similarity = image_similarity(token_source(conf, context, names), names, conf, seed, progress=False)
    print(f"ASMK similarity of {num} images: {time.perf_counter() - start:.1f} s")
    na, k = auto_graph_size(num)
    plain = {**conf, "expansion": 0}
    runs = {f"mast3r_graph (Na={conf['num_keyframes'] or na}, k={conf['num_neighbors'] or k}, "
            f"expansion {conf['expansion']})": (similarity, conf),
            # the official kNN counts the image itself among its k = 10
            "reference settings (Na=20, k=10 incl. self, S rows)":
                (similarity, {**plain, "num_keyframes": 20, "num_neighbors": 9, "symmetrize": False})}
    if conf["expansion"]:
        runs["the same without query expansion"] = (similarity, plain)
    if counts is not None:
        runs["same graph rule on true co-visibility (upper bound)"] = (torch.from_numpy(counts / counts.max()), plain)
    print(f"{'strategy':56s} {'pairs':>7s} {'of exh.':>8s} {'recall':>7s}")
    for label, (matrix, options) in runs.items():
        pairs = graph_pairs(matrix, options, seed)
        result = evaluate([(names[i], names[j]) for i, j in pairs.tolist()], names, strong)
        print(f"{label:56s} {result['pairs']:7d} {result['fraction']:8.3f} {result['recall']:7.3f}")
    exhaustive = [(names[i], names[j]) for i in range(num) for j in range(i + 1, num)]
    result = evaluate(exhaustive, names, strong)
    print(f"{'exhaustive':56s} {result['pairs']:7d} {result['fraction']:8.3f} {result['recall']:7.3f}")


def run_synthetic(args) -> None:
    views, counts = ring_scene(args.views, args.seed)
    names = [f"view_{i:04d}.png" for i in range(args.views)]
    strong = strong_pairs(counts)
    overlap = (counts[np.triu_indices(args.views, 1)] >= 50).mean()
    print(f"synthetic ring scene: {args.views} views, {len(strong)} strong pairs, "
          f"{overlap:.1%} of all pairs share >= 50 points")
    with tempfile.TemporaryDirectory() as tmp:
        features = Path(tmp) / "features.h5"
        write_views(features, names, views)
        compare_strategies(names, features, strong, args.seed, counts)


def model_strong_pairs(model, features: Path) -> tuple[list[str], np.ndarray, set]:
    """Names (registered and in ``features``), their shared-3D-point counts in ``model`` and the
    strong pairs; prints the collection's summary."""
    names = sorted(set(list_names(features)) & {im.name for im in model.images.values()})
    ids = {im.name: i for i, im in model.images.items()}
    counts = covisibility_counts(model, [ids[n] for n in names]).numpy()
    strong = strong_pairs(counts)
    overlap = (counts[np.triu_indices(len(names), 1)] >= 50).mean()
    print(f"{features}: {len(names)} images, {len(strong)} strong pairs, {overlap:.1%} of pairs share >= 50 points")
    return names, counts, strong


def graph_overrides(items: list[str]) -> dict:
    """``key=value`` options of the mast3r_graph strategy (values parsed as YAML scalars)."""
    import yaml

    return {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in items)}


def run_features(args) -> None:
    import pycolmap

    names, counts, strong = model_strong_pairs(pycolmap.Reconstruction(args.model), Path(args.features))
    compare_strategies(names, Path(args.features), strong, args.seed, counts, graph_overrides(args.graph))


def run_reconstruct(args) -> None:
    """Exhaustive and mast3r_graph reconstructions of a benchmark scene in one output folder.

    The graph's pairs are a subset of the exhaustive ones, so its run reuses features.h5 and
    matches.h5 (both resume per entry) and only rebuilds the database and maps. Strong pairs come
    from the exhaustive model; prints recall and pair fraction, then registration and AUC of both.
    """
    from scenes import HEADER, format_row, run_recon

    output = Path(args.output)
    extra = list(args.set)
    results = {"exhaustive": run_recon(args.scene, args.preset, output, [*extra, "pairs.name=exhaustive"])}
    import pycolmap

    names, counts, strong = model_strong_pairs(pycolmap.Reconstruction(output / "sparse" / "0"),
                                               output / "features.h5")
    compare_strategies(names, output / "features.h5", strong, args.seed, counts, graph_overrides(args.graph))
    graph = [f"pairs.{item}" for item in args.graph]
    results["mast3r_graph"] = run_recon(args.scene, args.preset, output, [*extra, "pairs.name=mast3r_graph", *graph])
    chosen = [tuple(line.split()) for line in (output / "pairs.txt").read_text().splitlines() if line.strip()]
    result = evaluate(chosen, names, strong)
    print(f"\nmast3r_graph run: {result['pairs']} pairs ({result['fraction']:.3f} of exhaustive), "
          f"strong-pair recall {result['recall']:.3f}")
    print(f"{args.scene}: {HEADER}")
    for label, row in results.items():
        print(format_row(label, row))


# --- scaling -----------------------------------------------------------------------------------

def synthetic_tokens(num_images: int, dim: int, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A collection along a closed trajectory: image i sees tokens of places near i (noisy copies
    of 64 * num_images place descriptors) plus clutter. Returns (M, D) and image ids (M,)."""
    generator = torch.Generator().manual_seed(seed)
    places = torch.randn(64 * num_images, dim, generator=generator)
    centre = torch.arange(num_images) * 64
    offsets = torch.randint(-192, 192, (num_images, tokens), generator=generator)
    chosen = (centre[:, None] + offsets) % len(places)
    descriptors = places[chosen.reshape(-1)]
    descriptors += 0.5 * torch.randn(descriptors.shape, generator=generator)
    clutter = torch.rand(num_images * tokens, generator=generator) < 0.2
    descriptors[clutter] = torch.randn(int(clutter.sum()), dim, generator=generator)
    return descriptors, torch.arange(num_images).repeat_interleave(tokens)


class StageClock:
    """Wall and CPU (all threads) seconds per named stage."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def __call__(self, name: str, function, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function(*args, **kwargs)
        self.wall[name] = time.perf_counter() - wall
        self.cpu[name] = time.process_time() - cpu
        return result


def scaling_worker(num_images: int, dim: int, tokens: int, seed: int, threads: int) -> dict:
    """One scaling run, with freed memory kept in the heap as every ``recon`` CLI command runs."""
    if threads > 0:
        torch.set_num_threads(threads)
    with reuse_freed_memory():
        return _scaling_run(num_images, dim, tokens, seed)


def _scaling_run(num_images: int, dim: int, tokens: int, seed: int) -> dict:
    descriptors, image_ids = synthetic_tokens(num_images, dim, tokens, seed)
    clock = StageClock()
    size = auto_codebook_size(len(descriptors))
    conf = PAIR_STRATEGIES.conf("mast3r_graph", {})  # the strategy's codebook and kernel settings
    codebook = clock("codebook", Codebook.train, descriptors, size, coarse_size=auto_coarse_size(size, conf["probes"]),
                     probes=conf["probes"], seed=seed)
    params = ASMKParams(conf["database_assignments"], conf["query_assignments"], conf["alpha"], conf["threshold"],
                        conf["use_idf"])
    query, database = clock("quantize+aggregate", aggregate_collection, descriptors, image_ids, num_images,
                            codebook, params)
    similarity = clock("inverted file", asmk_similarity, query, database, num_images, num_images, codebook.size,
                       alpha=params.alpha, threshold=params.threshold, use_idf=params.use_idf)
    na, k = auto_graph_size(num_images)
    pairs, _ = clock("graph", scene_graph, similarity, na, k, start=0)
    # neighbours should be images along the trajectory (ids within the token window)
    gap = (pairs[:, 0] - pairs[:, 1]).abs()
    gap = torch.minimum(gap, num_images - gap)
    return {"N": num_images, "D": dim, "K": codebook.size,
            "coarse": 0 if codebook.coarse is None else int(codebook.coarse.shape[0]),
            "pairs": len(pairs), "fraction": len(pairs) / (num_images * (num_images - 1) / 2),
            "entries": [len(query.words), len(database.words)],
            "local": float((gap <= 6).float().mean()), "wall": clock.wall, "cpu": clock.cpu,
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_scaling(args) -> None:
    runs = [(n, 128) for n in args.sizes] + [(n, 1024) for n in args.sizes_1024]
    results = []
    print("CPU seconds per stage (all threads; the machine may be shared, so wall time is shown too)")
    print(f"{'N':>6s} {'D':>5s} {'K':>6s} {'cells':>5s} {'codebook':>8s} {'quant+agg':>9s} {'ivf':>7s} "
          f"{'graph':>6s} {'CPU s':>7s} {'wall s':>7s} {'peak GB':>7s} {'pairs':>7s} {'of exh.':>8s} {'local':>6s}")
    for num, dim in runs:
        out = subprocess.run([sys.executable, __file__, "scaling-worker", "--n", str(num), "--dim", str(dim),
                              "--tokens", str(args.tokens), "--seed", str(args.seed), "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        t = r["cpu"]
        print(f"{r['N']:6d} {r['D']:5d} {r['K']:6d} {r['coarse']:5d} {t['codebook']:8.1f} "
              f"{t['quantize+aggregate']:9.1f} {t['inverted file']:7.1f} {t['graph']:6.1f} {sum(t.values()):7.1f} "
              f"{sum(r['wall'].values()):7.1f} {r['peak_gb']:7.2f} {r['pairs']:7d} {r['fraction']:8.4f} "
              f"{r['local']:6.3f}", flush=True)
    print("\ngrowth exponent of CPU time, log(time ratio) / log(N ratio), between sizes of the same D (2 = quadratic):")
    for a, b in zip(results, results[1:]):
        if a["D"] != b["D"]:
            continue
        ratio = math.log(b["N"] / a["N"])
        parts = {key: math.log(b["cpu"][key] / a["cpu"][key]) / ratio for key in a["cpu"]}
        total = math.log(sum(b["cpu"].values()) / sum(a["cpu"].values())) / ratio
        print(f"  D={a['D']} N {a['N']} -> {b['N']}: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
              + f", total {total:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("synthetic")
    p.add_argument("--views", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("features")
    p.add_argument("--features", required=True, help="features.h5 of the collection")
    p.add_argument("--model", required=True, help="exhaustive reconstruction (COLMAP model folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--graph", nargs="*", default=[], help="mast3r_graph options, e.g. expansion=2")
    p = sub.add_parser("reconstruct")
    p.add_argument("--scene", default="fox", help="a scene of benchmarks/scenes.py")
    p.add_argument("--output", required=True, help="run folder (kept: a rerun reuses features and matches)")
    p.add_argument("--preset", default="default")
    p.add_argument("--set", nargs="*", default=[], help="recon overrides for both runs, e.g. features.max_num_features=2048")
    p.add_argument("--graph", nargs="*", default=[], help="mast3r_graph options, e.g. expansion=2")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("scaling")
    p.add_argument("--sizes", type=int, nargs="*", default=[1000, 3000, 10000])
    p.add_argument("--sizes-1024", type=int, nargs="*", default=[1000, 3000])
    p.add_argument("--tokens", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p = sub.add_parser("scaling-worker")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--tokens", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.part == "synthetic":
        run_synthetic(args)
    elif args.part == "features":
        run_features(args)
    elif args.part == "reconstruct":
        run_reconstruct(args)
    elif args.part == "scaling":
        run_scaling(args)
    else:
        print(json.dumps(scaling_worker(args.n, args.dim, args.tokens, args.seed, args.threads)))


if __name__ == "__main__":
    main()
