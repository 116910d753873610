"""Localizing query images against a model: retrieve, match, lift to 2D-3D, estimate the pose.

The model must have been built from the database features given with it (images matched by
name, one model 2D point per keypoint, in order - what recon and hloc both produce): a query
keypoint matched to database keypoint ``j`` of image ``I`` becomes a 2D-3D correspondence with
the 3D point that ``I.points2D[j]`` observes. The absolute pose is COLMAP's LO-RANSAC P3P (or
P4Pf when the focal length is searched) with non-linear refinement
(``pycolmap.estimate_and_refine_absolute_pose``).

A query is localized only when its best pose has at least ``min_num_inliers`` inliers making at
least ``min_inlier_ratio`` of its correspondences (RANSAC "succeeds" on 4 random points);
otherwise it is reported as failed with the reason, never given a borrowed pose.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pycolmap
from tqdm import tqdm

from ..io import h5
from .covisibility import MapIndex, covisibility_clusters
from .queries import QueryCamera, camera_dict
from .results import pose_to_fields

logger = logging.getLogger(__name__)
MIN_PNP_POINTS = 4  # below this no absolute pose solver can run


@dataclass
class Attempt:
    """One PnP over the correspondences of a cluster of retrieved images."""

    images: list[str]
    num_matches: int
    num_correspondences: int
    num_inliers: int = 0
    pose: pycolmap.Rigid3d | None = None
    camera: pycolmap.Camera | None = None
    status: str = "not_run"

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "num_matches": self.num_matches,
                "num_correspondences": self.num_correspondences, "num_inliers": self.num_inliers,
                "status": self.status}


@dataclass
class QueryResult:
    """The outcome for one query; ``reason`` says why it failed (None when localized)."""

    name: str
    retrieved: list[str] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    best: Attempt | None = None
    reason: str | None = None
    message: str = ""
    focal_source: str | None = None

    @property
    def success(self) -> bool:
        return self.best is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"success": self.success, "reason": self.reason, "message": self.message,
                               "num_inliers": self.best.num_inliers if self.best else 0,
                               "num_correspondences": self.best.num_correspondences if self.best else 0,
                               "retrieved": self.retrieved, "clusters": [a.to_json() for a in self.attempts],
                               "focal_source": self.focal_source}
        if self.best is not None:
            fields = pose_to_fields(self.best.pose)
            out["cam_from_world"] = {"qvec_wxyz": fields[:4], "tvec": fields[4:]}
            out["camera"] = camera_dict(self.best.camera)
        return out


def failed(name: str, reason: str, message: str, **kwargs: Any) -> QueryResult:
    return QueryResult(name, reason=reason, message=message, **kwargs)


def check_map_features(index: MapIndex, features_path: Path) -> None:
    """Every registered model image must have features with exactly its number of 2D points."""
    with h5py.File(features_path, "r") as f:
        for name, image_id in index.ids_by_name.items():
            if name not in f:
                raise ValueError(f"model image '{name}' has no features in {features_path}: the model was not "
                                 "built from these features")
            count = f[name]["keypoints"].shape[0]
            expected = index.model.images[image_id].num_points2D()
            if count != expected:
                raise ValueError(f"model image '{name}' has {expected} 2D points but {count} keypoints in "
                                 f"{features_path}: the model was not built from these features")


def lift(query: str, names: list[str], index: MapIndex, matches: h5py.File) -> tuple[np.ndarray, np.ndarray, int]:
    """2D-3D correspondences of a query through the matches to database images ``names``.

    Returns (M,) query keypoint indices, (M,) rows of :attr:`MapIndex.xyz` - each unique
    (keypoint, 3D point) once, whichever images it came through (hloc's rule) - and the number
    of query matches that landed on a triangulated keypoint.
    """
    keypoint, point, lifted = [], [], 0
    for name in names:
        pairs, _ = h5.read_matches(matches, query, name)
        rows = index.point3D_rows(index.ids_by_name[name])[pairs[:, 1]]
        valid = rows >= 0
        lifted += int(valid.sum())
        keypoint.append(pairs[valid, 0])
        point.append(rows[valid])
    if not keypoint:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    unique = np.unique(np.stack([np.concatenate(keypoint), np.concatenate(point)], 1), axis=0)
    return unique[:, 0], unique[:, 1], lifted


def pose_options(conf: dict[str, Any], qcam: QueryCamera, seed: int
                 ) -> tuple[pycolmap.AbsolutePoseEstimationOptions, pycolmap.AbsolutePoseRefinementOptions]:
    estimation = pycolmap.AbsolutePoseEstimationOptions()
    estimation.estimate_focal_length = qcam.estimate_focal
    estimation.ransac.max_error = float(conf["ransac_max_error"])
    estimation.ransac.confidence = float(conf["ransac_confidence"])
    estimation.ransac.min_inlier_ratio = float(conf["min_inlier_ratio"])
    estimation.ransac.random_seed = seed
    refinement = pycolmap.AbsolutePoseRefinementOptions()
    refinement.refine_focal_length = qcam.refine_focal
    refinement.refine_extra_params = qcam.source != "given" and bool(conf["refine_extra_params"])
    return estimation, refinement


def estimate(attempt: Attempt, points2D: np.ndarray, points3D: np.ndarray, qcam: QueryCamera,
             conf: dict[str, Any], seed: int) -> Attempt:
    """Run PnP on (M, 2) COLMAP-convention pixels and (M, 3) world points; fill ``attempt``."""
    needed = max(MIN_PNP_POINTS, int(conf["min_num_inliers"]))
    if len(points2D) < needed:
        attempt.status = "too_few_correspondences"
        return attempt
    camera = copy.copy(qcam.camera)  # the solver writes an estimated focal into it
    estimation, refinement = pose_options(conf, qcam, seed)
    result = pycolmap.estimate_and_refine_absolute_pose(points2D, points3D, camera, estimation, refinement)
    if result is None:
        attempt.status = "pose_estimation_failed"
        return attempt
    attempt.num_inliers = int(result["num_inliers"])
    attempt.pose, attempt.camera = result["cam_from_world"], camera
    if attempt.num_inliers < conf["min_num_inliers"]:
        attempt.status = "too_few_inliers"
    elif attempt.num_inliers < conf["min_inlier_ratio"] * len(points2D):
        attempt.status = "low_inlier_ratio"
    else:
        attempt.status = "localized"
    return attempt


def localize_query(name: str, keypoints: np.ndarray, qcam: QueryCamera, retrieved: list[str], index: MapIndex,
                   matches: h5py.File, conf: dict[str, Any], seed: int) -> QueryResult:
    """Localize one query from its (N, 2) keypoints (hloc convention) and retrieved images.

    With ``conf["covisibility_clustering"]`` one PnP per covisibility cluster of the retrieved
    images (hloc's ``pose_from_cluster``), keeping the localized one with most inliers.
    """
    result = QueryResult(name, retrieved=list(retrieved), focal_source=qcam.source)
    names = [n for n in retrieved if n in index.ids_by_name]
    if not retrieved:
        return _fail(result, "no_retrieved_images", "retrieval returned no database image")
    if not names:
        return _fail(result, "retrieved_not_in_model", "none of the retrieved images is registered in the model")
    if conf["covisibility_clustering"]:
        observed = [np.unique(r[r >= 0]) for r in (index.point3D_rows(index.ids_by_name[n]) for n in names)]
        clusters = [[names[i] for i in members] for members in covisibility_clusters(observed, len(index.xyz))]
    else:
        clusters = [names]
    for cluster in clusters:
        keypoint, rows, lifted = lift(name, cluster, index, matches)
        attempt = Attempt(cluster, lifted, len(rows))
        points2D = keypoints[keypoint].astype(np.float64) + 0.5  # hloc -> COLMAP pixel convention
        result.attempts.append(estimate(attempt, points2D, index.xyz[rows], qcam, conf, seed))
    localized = [a for a in result.attempts if a.status == "localized"]
    if localized:
        result.best = max(localized, key=lambda a: a.num_inliers)
        return result
    closest = max(result.attempts, key=lambda a: (a.num_inliers, a.num_correspondences))
    messages = {
        "too_few_correspondences": f"{closest.num_correspondences} 2D-3D correspondences, fewer than the "
                                   f"{max(MIN_PNP_POINTS, conf['min_num_inliers'])} needed",
        "pose_estimation_failed": f"no pose found from {closest.num_correspondences} 2D-3D correspondences",
        "too_few_inliers": f"best pose has {closest.num_inliers} inliers, fewer than min_num_inliers="
                           f"{conf['min_num_inliers']}",
        "low_inlier_ratio": f"best pose has {closest.num_inliers}/{closest.num_correspondences} inliers, under "
                            f"min_inlier_ratio={conf['min_inlier_ratio']}",
    }
    return _fail(result, closest.status, messages[closest.status])


def _fail(result: QueryResult, reason: str, message: str) -> QueryResult:
    result.reason, result.message = reason, message
    return result


def localize_queries(names: list[str], cameras: dict[str, QueryCamera], retrieved: dict[str, list[str]],
                     index: MapIndex, query_features: Path, matches_path: Path, conf: dict[str, Any],
                     seed: int) -> dict[str, QueryResult]:
    """Localize every query of ``names`` whose features and matches exist; others fail with a reason."""
    results = {}
    with h5py.File(query_features, "r") as features, h5py.File(matches_path, "r") as matches:
        for name in tqdm(names, desc="localize", unit="query"):
            if name not in features:
                results[name] = failed(name, "no_features", f"no features for '{name}' in {query_features}")
                continue
            try:
                keypoints = features[name]["keypoints"][()]
                results[name] = localize_query(name, keypoints, cameras[name], retrieved.get(name, []), index,
                                               matches, conf, seed)
            except KeyError as error:  # a retrieved pair that was never matched
                results[name] = failed(name, "missing_matches", str(error.args[0]),
                                       retrieved=list(retrieved.get(name, [])))
    return results
