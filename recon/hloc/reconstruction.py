"""hloc's ``reconstruction``: features + matches -> COLMAP database -> incremental mapping."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pycolmap

from ..colmap.database import build_database
from ..config import DATABASE_DEFAULTS
from ..io.h5 import list_names
from ..io.images import scan_images
from ..io.pairs import read_pairs, unique_pairs
from ..mapping.colmap_mappers import run_incremental
from ..priors.exif import exif_priors
from .common import image_names_from

logger = logging.getLogger(__name__)
CAMERA_MODES = {pycolmap.CameraMode.AUTO: "auto", pycolmap.CameraMode.SINGLE: "single",
                pycolmap.CameraMode.PER_FOLDER: "per_folder", pycolmap.CameraMode.PER_IMAGE: "per_image"}


def main(sfm_dir: Path, image_dir: Path, pairs: Path, features: Path, matches: Path,
         camera_mode: pycolmap.CameraMode = pycolmap.CameraMode.AUTO, verbose: bool = False,
         skip_geometric_verification: bool = False, min_match_score: float | None = None,
         image_list: list[str] | None = None, image_options: dict[str, Any] | None = None,
         mapper_options: dict[str, Any] | None = None) -> pycolmap.Reconstruction | None:
    """Build ``sfm_dir/database.db`` and the model in ``sfm_dir`` exactly where hloc puts them.

    Differences from hloc, all fixes: keypoints and matches go through recon's atomic database
    writer; ``skip_geometric_verification`` writes two-view geometries WITH a configuration (hloc
    writes none and pycolmap 4.2.1 then builds no model); only images that have features are
    imported. ``image_options`` takes ``camera_model`` and ``camera_params`` (COLMAP's
    ImageReaderOptions names). Returns None when no model could be built, like hloc.
    """
    for path in (features, pairs, matches):
        if not Path(path).exists():
            raise FileNotFoundError(path)
    sfm_dir = Path(sfm_dir)
    sfm_dir.mkdir(parents=True, exist_ok=True)
    names = image_names_from(image_list) if image_list is not None else list_names(features)
    infos, bad = scan_images(image_dir, names)
    if bad:
        raise FileNotFoundError(f"unreadable images: {bad[:3]}")
    image_options = dict(image_options or {})
    conf = {**DATABASE_DEFAULTS, "camera_mode": CAMERA_MODES[camera_mode],
            "camera_model": image_options.pop("camera_model", DATABASE_DEFAULTS["camera_model"]),
            "camera_params": image_options.pop("camera_params", "")}
    if image_options:
        logger.info("reconstruction: image_options %s are not used by recon", sorted(image_options))
    pair_list = unique_pairs(read_pairs(pairs))
    database = sfm_dir / "database.db"
    build_database(database, infos, exif_priors(infos, {}), Path(features), Path(matches), pair_list, conf,
                   verify=not skip_geometric_verification, min_match_score=min_match_score)
    options = pycolmap.IncrementalPipelineOptions(mapper_options or {})
    try:
        model = run_incremental(database, Path(image_dir), sfm_dir, options)
    except RuntimeError as error:
        logger.error("Could not reconstruct any model! (%s)", error)
        return None
    model.write(sfm_dir)
    logger.info("Reconstruction statistics:\n%s\n\tnum_input_images = %d", model.summary(), len(infos))
    return model
