"""hloc's ``localize_sfm``: queries + retrieval + features + matches + a model -> results file.

Same signature, inputs and results file as hloc (``name qw qx qy qz tx ty tz``, the name without
its folders unless ``prepend_camera_name``). Differences, all deliberate:

* A query whose pose cannot be estimated (or has fewer than ``min_num_inliers`` inliers) has NO
  line in the results; hloc writes the pose of the first retrieved database image as if it were
  a result. Failures and their reasons are logged and written to ``{results}_logs.json`` (hloc
  pickles its internal logs to ``{results}_logs.pkl``; ours are JSON, per query as in recon's
  ``localization.json``).
* A query list line may omit the intrinsics: the image size is read from the features file and
  the focal length is searched by the PnP solver.
* ``config`` takes hloc's ``{"estimation": {...}, "refinement": {...}}`` pycolmap options (the
  ones recon maps: ``ransac.max_error``, ``ransac.confidence``, ``ransac.min_inlier_ratio``,
  ``estimate_focal_length``, ``refine_focal_length``, ``refine_extra_params``) and any of recon's
  ``localize`` options (``min_num_inliers``, ...) at its top level.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import h5py
import pycolmap

from ..config import LOCALIZE_DEFAULTS
from ..io.images import ImageInfo
from ..io.jsonfile import write_json
from ..localize.covisibility import MapIndex
from ..localize.localize import check_map_features, localize_queries
from ..localize.queries import parse_query_list, query_cameras
from ..localize.results import write_results
from ..localize.retrieval import ListRetrieval

logger = logging.getLogger(__name__)


def localize_conf(ransac_thresh: float, covisibility_clustering: bool, config: dict | None) -> dict[str, Any]:
    """hloc's arguments and ``config`` as recon's ``localize`` options."""
    config = dict(config or {})
    estimation = dict(config.pop("estimation", {}))
    refinement = dict(config.pop("refinement", {}))
    ransac = dict(estimation.pop("ransac", {}))
    conf = {**LOCALIZE_DEFAULTS, "ransac_max_error": float(ransac.pop("max_error", ransac_thresh)),
            "covisibility_clustering": bool(covisibility_clustering)}
    for key, target in (("confidence", "ransac_confidence"), ("min_inlier_ratio", "min_inlier_ratio")):
        if key in ransac:
            conf[target] = float(ransac.pop(key))
    if "estimate_focal_length" in estimation:
        conf["estimate_focal"] = "always" if estimation.pop("estimate_focal_length") else "never"
    if "refine_extra_params" in refinement:
        conf["refine_extra_params"] = bool(refinement.pop("refine_extra_params"))
    if refinement.pop("refine_focal_length", None) is False:
        conf["estimate_focal"] = "never"
    unknown = {k: v for k, v in config.items() if k not in LOCALIZE_DEFAULTS}
    conf.update({k: v for k, v in config.items() if k in LOCALIZE_DEFAULTS})
    ignored = {**unknown, **{f"estimation.{k}": v for k, v in estimation.items()},
               **{f"estimation.ransac.{k}": v for k, v in ransac.items()},
               **{f"refinement.{k}": v for k, v in refinement.items()}}
    if ignored:
        logger.info("localize_sfm: options %s are not used by recon", sorted(ignored))
    return conf


def result_name(name: str, prepend_camera_name: bool) -> str:
    """hloc's results naming: the file name, with its folder when ``prepend_camera_name``."""
    parts = name.split("/")
    return "/".join(parts[-2:]) if prepend_camera_name else parts[-1]


def main(reference_sfm: Path | pycolmap.Reconstruction, queries: Path, retrieval: Path, features: Path,
         matches: Path, results: Path, ransac_thresh: int = 12, covisibility_clustering: bool = False,
         prepend_camera_name: bool = False, config: dict | None = None) -> None:
    """Localize the listed queries; write ``results`` (localized queries only) and its logs."""
    for path in (retrieval, features, matches):
        if not Path(path).exists():
            raise FileNotFoundError(path)
    model = reference_sfm if isinstance(reference_sfm, pycolmap.Reconstruction) else pycolmap.Reconstruction(
        str(reference_sfm))
    conf = localize_conf(ransac_thresh, covisibility_clustering, config)
    query_list = parse_query_list(queries)
    index = MapIndex(model)
    check_map_features(index, Path(features))
    with h5py.File(features, "r") as f:
        infos = {q.name: ImageInfo(q.name, *(int(v) for v in f[q.name]["image_size"][()]), None)
                 for q in query_list if q.name in f}
    cameras = query_cameras(query_list, infos, {"name": "none"}, conf)
    lists = ListRetrieval(retrieval)
    retrieved = {q.name: lists.retrieve(q.name, 0) for q in query_list}
    outcome = localize_queries([q.name for q in query_list], cameras, retrieved, index, Path(features),
                               Path(matches), conf, seed=0)
    poses = {result_name(name, prepend_camera_name): r.best.pose for name, r in outcome.items() if r.success}
    logger.info("Localized %d / %d images.", len(poses), len(query_list))
    write_results(results, poses)
    write_json(f"{results}_logs.json", {"features": str(features), "matches": str(matches),
                                        "retrieval": str(retrieval), "loc": {n: r.to_json() for n, r in outcome.items()}})
