"""Building a COLMAP database from hloc files: cameras, images, keypoints, verified matches.

The database is built under a temporary name and renamed into place only when complete, and
writes are grouped in transactions, so a killed run leaves either no ``database.db`` or a
complete one - never a half-filled file a mapper would silently use.

Keypoints get hloc's +0.5 on the way in (hloc's h5 convention puts the centre of the top-left
pixel at (0, 0), COLMAP's at (0.5, 0.5)). Verification runs COLMAP's own two-view geometry
estimation (pycolmap.verify_matches) with a seeded RANSAC, and every two-view geometry it writes
carries its configuration: pycolmap 4.2.1's mappers ignore geometries written without one.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pycolmap
from tqdm import tqdm

from ..io import h5
from ..io.images import ImageInfo
from ..io.pairs import write_pairs

logger = logging.getLogger(__name__)
CAMERA_MODES = ("auto", "single", "per_folder", "per_image")


@dataclass(frozen=True)
class CameraGroup:
    """Images that share one camera, with the intrinsics it starts from."""

    names: tuple[str, ...]
    width: int
    height: int
    focal: float
    has_prior_focal: bool


def group_cameras(infos: list[ImageInfo], priors: dict[str, tuple[float, str]], mode: str) -> list[CameraGroup]:
    """Decide which images share a camera.

    ``single``: all images (they must have one size); ``per_folder``: one per sub-folder and
    size; ``per_image``: one each; ``auto`` (COLMAP's rule): same folder, same size and same
    focal prior. A shared camera starts from the median of its images' focal priors.
    """
    if mode not in CAMERA_MODES:
        raise ValueError(f"database.camera_mode must be one of {CAMERA_MODES}, got '{mode}'")
    groups: dict[tuple, list[ImageInfo]] = defaultdict(list)
    for info in infos:
        folder = str(PurePosixPath(info.name).parent)
        key = {
            "single": (),
            "per_folder": (folder, info.width, info.height),
            "per_image": (info.name,),
            "auto": (folder, info.width, info.height, round(priors[info.name][0], 3), priors[info.name][1]),
        }[mode]
        groups[key].append(info)
    cameras = []
    for members in groups.values():
        sizes = {(m.width, m.height) for m in members}
        if len(sizes) > 1:
            raise ValueError(f"camera_mode={mode} puts images of different sizes {sorted(sizes)} in one camera; "
                             "use camera_mode=auto or per_image")
        focal = float(np.median([priors[m.name][0] for m in members]))
        known = all(priors[m.name][1] != "default" for m in members)
        cameras.append(CameraGroup(tuple(m.name for m in members), members[0].width, members[0].height, focal, known))
    return cameras


def make_camera(group: CameraGroup, model: str, params: str) -> pycolmap.Camera:
    """A COLMAP camera of ``model`` at the group's focal prior, principal point at the centre,
    distortion zero; ``params`` (COLMAP's order, comma-separated) fixes all of them instead."""
    camera = pycolmap.Camera.create_from_model_name(0, model, group.focal, group.width, group.height)
    if params:
        values = [float(v) for v in params.split(",")]
        if len(values) != len(camera.params):
            raise ValueError(f"{model} takes {len(camera.params)} parameters ({camera.params_info}), got {len(values)}")
        camera.params = values
    camera.has_prior_focal_length = bool(params) or group.has_prior_focal
    return camera


def verification_options(conf: dict[str, Any], seed: int) -> pycolmap.TwoViewGeometryOptions:
    options = pycolmap.TwoViewGeometryOptions()
    options.min_num_inliers = conf["min_num_inliers"]
    options.ransac.max_error = conf["max_error"]
    options.ransac.confidence = conf["confidence"]
    options.ransac.min_inlier_ratio = conf["min_inlier_ratio"]
    options.ransac.random_seed = seed
    return options


def build_database(database_path: Path, infos: list[ImageInfo], priors: dict[str, tuple[float, str]],
                   features_path: Path, matches_path: Path, pairs: list[tuple[str, str]],
                   conf: dict[str, Any], seed: int = 0, verify: bool = True,
                   min_match_score: float | None = None) -> dict[str, int]:
    """Write cameras, images, keypoints and matches, verify the pairs, publish atomically.

    ``verify=False`` trusts the matches as they are (already verified elsewhere): each pair's
    matches become its inliers under an UNCALIBRATED two-view geometry - hloc writes these with no
    configuration, which pycolmap 4.2.1's mappers silently ignore. ``min_match_score`` drops
    matches scored below it. Returns the database image id of every image name.
    """
    tmp = database_path.with_name(database_path.name + ".tmp")
    for stale in (tmp, Path(str(tmp) + "-journal"), Path(str(tmp) + "-wal")):
        stale.unlink(missing_ok=True)
    groups = group_cameras(infos, priors, conf["camera_mode"])
    with pycolmap.Database.open(tmp) as db:
        image_ids = write_cameras_and_images(db, groups, conf)
        write_keypoints(db, image_ids, features_path)
        write_matches(db, image_ids, matches_path, pairs, trusted=not verify, min_score=min_match_score)
    if verify:
        pairs_file = database_path.with_name(database_path.name + ".pairs.tmp")
        write_pairs(pairs_file, pairs)
        logger.info("geometric verification of %d pairs", len(pairs))
        pycolmap.verify_matches(tmp, pairs_file, options=verification_options(conf, seed))
        pairs_file.unlink()
    os.replace(tmp, database_path)
    return image_ids


def write_cameras_and_images(db: pycolmap.Database, groups: list[CameraGroup], conf: dict[str, Any]) -> dict[str, int]:
    image_ids = {}
    with pycolmap.DatabaseTransaction(db):
        for group in groups:
            camera_id = db.write_camera(make_camera(group, conf["camera_model"], conf["camera_params"]))
            for name in group.names:
                image_ids[name] = db.write_image(pycolmap.Image(name=name, camera_id=camera_id))
    return image_ids


def write_keypoints(db: pycolmap.Database, image_ids: dict[str, int], features_path: Path) -> None:
    with pycolmap.DatabaseTransaction(db), h5.opened(features_path) as features:
        for name, image_id in tqdm(sorted(image_ids.items()), desc="database keypoints", unit="img", leave=False):
            keypoints = h5.read_keypoints(features, name) + 0.5  # hloc -> COLMAP pixel convention
            db.write_keypoints(image_id, keypoints.astype(np.float32))


def write_matches(db: pycolmap.Database, image_ids: dict[str, int], matches_path: Path,
                  pairs: list[tuple[str, str]], trusted: bool = False, min_score: float | None = None,
                  batch: int = 1000) -> None:
    """Matches of every pair, committed every ``batch`` pairs; ``trusted`` also writes them as
    the inliers of an UNCALIBRATED two-view geometry (no verification will run)."""
    with h5.opened(matches_path) as file:
        for start in tqdm(range(0, len(pairs), batch), desc="database matches", unit="batch", leave=False):
            with pycolmap.DatabaseTransaction(db):
                for name0, name1 in pairs[start:start + batch]:
                    matches, scores = h5.read_matches(file, name0, name1)
                    if min_score is not None:
                        matches = matches[scores >= min_score]
                    matches = matches.astype(np.uint32)
                    id0, id1 = image_ids[name0], image_ids[name1]
                    db.write_matches(id0, id1, matches)
                    if trusted:
                        db.write_two_view_geometry(id0, id1, trusted_geometry(matches))


def trusted_geometry(matches: np.ndarray) -> pycolmap.TwoViewGeometry:
    geometry = pycolmap.TwoViewGeometry()
    geometry.inlier_matches = matches
    geometry.config = pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED
    return geometry
