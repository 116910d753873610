"""Evaluation of localization results against ground-truth poses (``recon evaluate-localization``).

Definitions:

* Position error: distance between the estimated and the ground-truth camera centres
  (``C = -R^T t``), in ground-truth units. Rotation error: angle of ``R_gt^T R_est`` in degrees.
* Queries: every query that has ground truth counts (the others, e.g. images of another scene
  that must fail, are listed in ``queries_without_gt`` and not scored); a query without a pose in the results (failed) has infinite
  errors, so it lowers the recall and is below no threshold. The medians are over all queries
  (a failed query counts as infinite, as in the long-term localization benchmarks), and the
  ``*_localized`` medians over the localized ones only.
* Recall at ``(d, a)``: fraction of queries with position error ``< d`` AND rotation error ``< a``.
  Defaults (0.25 m, 2 deg), (0.5 m, 5 deg), (5 m, 10 deg): the Aachen/InLoc bins, for metric
  ground truth.
* Non-metric ground truth (``relative=True``): the position thresholds (and errors) are fractions
  of the scene extent, the diagonal of the bounding box of all ground-truth camera centres; e.g.
  ``0.01`` = 1% of the scene.
* A map in another frame than the ground truth (e.g. an SfM map of a scene whose reference poses
  are in their own frame): ``align_to`` gives the map model; the similarity (Umeyama, least
  squares over the camera centres of the map images that have ground truth) is applied to the
  query poses before scoring. Without it, the results must be in the ground truth's frame.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pycolmap

from ..datasets.ground_truth import GroundTruth
from ..evaluate.geometry import Sim3, extent, rotation_angle_deg, umeyama
from .results import read_results

DEFAULT_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


def map_alignment(model: pycolmap.Reconstruction, gt: GroundTruth) -> Sim3:
    """Similarity from the map's frame to the ground truth's, over the common registered images."""
    names = [im.name for im in model.images.values() if im.has_pose and im.name in gt]
    if len(names) < 3:
        raise ValueError(f"only {len(names)} map image(s) have ground truth; the alignment needs 3")
    by_name = {im.name: im for im in model.images.values()}
    centers = np.stack([by_name[n].projection_center() for n in names])
    return umeyama(centers, np.stack([gt[n].center for n in names]))


def pose_errors(poses: dict[str, pycolmap.Rigid3d], gt: GroundTruth, queries: list[str],
                sim3: Sim3 | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(Q,) position and (Q,) rotation errors of ``queries`` (``inf`` when not localized).

    A pose in the map frame is mapped by ``sim3`` (``x_gt = s R x_map + t``): its centre goes to
    ``s R C + t`` and its rotation to ``R_cam R^T``.
    """
    position = np.full(len(queries), np.inf)
    rotation = np.full(len(queries), np.inf)
    for k, name in enumerate(queries):
        if name not in poses:
            continue
        R = np.asarray(poses[name].rotation.matrix())
        center = -R.T @ np.asarray(poses[name].translation)
        if sim3 is not None:
            center = sim3.apply(center[None])[0]
            R = R @ sim3.rotation.T
        position[k] = np.linalg.norm(center - gt[name].center)
        rotation[k] = rotation_angle_deg(gt[name].rotation, R)
    return position, rotation


def evaluate_localization(results: str | Path | dict[str, pycolmap.Rigid3d], gt: GroundTruth,
                          queries: Iterable[str] | None = None,
                          thresholds: Iterable[tuple[float, float]] = DEFAULT_THRESHOLDS,
                          relative: bool = False, align_to: pycolmap.Reconstruction | None = None) -> dict:
    """Score localization results (a results file or poses by name); JSON-ready dict.

    ``queries`` defaults to the names in the results (then no failure can be counted: pass the
    query list to count them). Keys: ``num_queries``, ``num_localized``, ``position_unit``
    (``gt`` or ``extent``), ``scene_extent``, ``median_position_error``, ``median_rotation_error``
    (over all queries, ``None`` when infinite), ``median_*_localized``, ``recall`` (list of
    ``{position, rotation, recall}``), ``per_query``.
    """
    poses = read_results(results) if isinstance(results, (str, Path)) else dict(results)
    queries = sorted(poses) if queries is None else list(queries)
    without_gt = [q for q in queries if q not in gt]
    queries = [q for q in queries if q in gt]
    if not queries:
        raise ValueError(f"none of the queries has ground truth (e.g. {without_gt[:3]}): are the names the same?")
    sim3 = map_alignment(align_to, gt) if align_to is not None else None
    position, rotation = pose_errors(poses, gt, queries, sim3)
    scene = extent(gt.centers())
    if relative:
        position = position / scene
    localized = np.isfinite(position)
    recall = [{"position": float(d), "rotation": float(a),
               "recall": float(np.mean((position < d) & (rotation < a))) if queries else 0.0}
              for d, a in thresholds]
    return {
        "num_queries": len(queries),
        "num_localized": int(localized.sum()),
        "queries_without_gt": without_gt,
        "position_unit": "extent" if relative else "gt",
        "scene_extent": scene,
        "aligned": sim3 is not None,
        "median_position_error": _finite(np.median(position)) if queries else None,
        "median_rotation_error": _finite(np.median(rotation)) if queries else None,
        "median_position_error_localized": _finite(np.median(position[localized])) if localized.any() else None,
        "median_rotation_error_localized": _finite(np.median(rotation[localized])) if localized.any() else None,
        "recall": recall,
        "per_query": {n: {"position": _finite(p), "rotation": _finite(r)}
                      for n, p, r in zip(queries, position, rotation)},
    }


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def format_localization_table(result: dict) -> str:
    unit = "x extent" if result["position_unit"] == "extent" else "(GT units)"

    def show(value: float | None, fmt: str) -> str:
        return "failed" if value is None else format(value, fmt)

    lines = [f"localized {result['num_localized']}/{result['num_queries']} queries"
             + (" (map aligned to the ground truth by Sim3)" if result["aligned"] else "")
             + (f"; {len(result['queries_without_gt'])} without ground truth not scored"
                if result["queries_without_gt"] else ""),
             f"median position error {show(result['median_position_error_localized'], '.4g')} {unit}, "
             f"rotation {show(result['median_rotation_error_localized'], '.4g')} deg (localized queries); "
             f"over all queries {show(result['median_position_error'], '.4g')} / "
             f"{show(result['median_rotation_error'], '.4g')} deg",
             f"{'position ' + unit:>22} {'rotation deg':>13} {'recall':>8}"]
    lines += [f"{r['position']:>22g} {r['rotation']:>13g} {r['recall']:>8.3f}" for r in result["recall"]]
    return "\n".join(lines)
