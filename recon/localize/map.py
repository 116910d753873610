"""A map from images with known poses: triangulate a database's verified matches at given poses.

The common "I have poses (GT, a capture rig, another SfM), build me a localization map" case:
COLMAP's point triangulator on a reference model whose image ids are the database's, so each
image's keypoints in the database are its model 2D points and queries can be lifted through
them (:mod:`recon.localize.localize`).
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pycolmap

from ..datasets.ground_truth import GroundTruth

logger = logging.getLogger(__name__)


def reference_model(poses: GroundTruth, database_path: Path) -> pycolmap.Reconstruction:
    """The known poses and cameras as a model with the database's image and camera ids.

    Every database image must have a pose; images that share a database camera must share their
    known intrinsics (else build the database with ``camera_mode=per_image``).
    """
    with pycolmap.Database.open(database_path) as db:
        images = db.read_all_images()
    missing = sorted(im.name for im in images if im.name not in poses)
    if missing:
        raise ValueError(f"{len(missing)} database image(s) have no known pose, e.g. {missing[:3]}")
    model = pycolmap.Reconstruction()
    cameras: dict[int, pycolmap.Camera] = {}
    for image in sorted(images, key=lambda im: im.image_id):
        known = poses[image.name]
        camera = cameras.get(image.camera_id)
        if camera is None:
            camera = copy.copy(known.camera)
            camera.camera_id = image.camera_id
            cameras[image.camera_id] = camera
            model.add_camera_with_trivial_rig(camera)
        elif (camera.model_name, camera.width, camera.height) != (known.camera.model_name, known.camera.width,
                                                                 known.camera.height) or \
                not np.allclose(camera.params, known.camera.params):
            raise ValueError(f"database camera {image.camera_id} is shared by images with different known "
                             f"intrinsics ({image.name}); build the database with camera_mode=per_image")
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(known.rotation), known.translation)
        model.add_image_with_trivial_frame(
            pycolmap.Image(name=image.name, camera_id=image.camera_id, image_id=image.image_id), pose)
    return model


def triangulate_known_poses(poses: GroundTruth, database_path: str | os.PathLike, image_dir: str | os.PathLike,
                            output_path: str | os.PathLike) -> pycolmap.Reconstruction:
    """Triangulate the database's verified matches with the known poses (kept fixed); write the
    model to ``output_path`` (COLMAP binary, replaced atomically) and return it."""
    database_path, output_path = Path(database_path), Path(output_path)
    reference = reference_model(poses, database_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_path.parent) as scratch:
        model = pycolmap.triangulate_points(reference, database_path, Path(image_dir), scratch)
        if model.num_points3D() == 0:
            raise RuntimeError(f"no 3D point triangulated from {database_path} (no verified matches?)")
        staging = output_path.with_name(output_path.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        model.write(staging)
        shutil.rmtree(output_path, ignore_errors=True)
        os.replace(staging, output_path)
    logger.info("triangulated %d points in %d images with known poses", model.num_points3D(), model.num_reg_images())
    return model
