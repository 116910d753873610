"""COLMAP's own mappers through pycolmap: the references every recon mapper is measured against."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pycolmap
import torch

from . import MAPPERS


def largest(models: dict[int, pycolmap.Reconstruction], mapper: str) -> pycolmap.Reconstruction:
    if not models:
        raise RuntimeError(f"{mapper}: no model could be built (too few verified matches between images?)")
    return max(models.values(), key=lambda rec: rec.num_reg_images())


@MAPPERS.register("colmap_incremental", min_model_size=3, min_num_matches=15, init_min_num_inliers=100,
                  abs_pose_min_num_inliers=30, refine_focal_length=True, refine_principal_point=False,
                  refine_extra_params=True, multiple_models=True, num_threads=-1)
def colmap_incremental(database_path: Path, image_dir: Path, output_dir: Path, conf: dict[str, Any],
                       device: torch.device, seed: int = 0) -> pycolmap.Reconstruction:
    """COLMAP's incremental mapper (image by image, with repeated bundle adjustment)."""
    options = pycolmap.IncrementalPipelineOptions()
    options.min_model_size = conf["min_model_size"]
    options.min_num_matches = conf["min_num_matches"]
    options.multiple_models = conf["multiple_models"]
    options.num_threads = conf["num_threads"]
    options.random_seed = seed
    options.ba_refine_focal_length = conf["refine_focal_length"]
    options.ba_refine_principal_point = conf["refine_principal_point"]
    options.ba_refine_extra_params = conf["refine_extra_params"]
    options.mapper.init_min_num_inliers = conf["init_min_num_inliers"]
    options.mapper.abs_pose_min_num_inliers = conf["abs_pose_min_num_inliers"]
    options.mapper.random_seed = seed
    return run_incremental(database_path, image_dir, output_dir, options)


def run_incremental(database_path: Path, image_dir: Path, output_dir: Path,
                    options: pycolmap.IncrementalPipelineOptions) -> pycolmap.Reconstruction:
    """pycolmap's incremental mapping into a scratch folder; the largest model is returned."""
    with tempfile.TemporaryDirectory(dir=output_dir) as scratch:
        models = pycolmap.incremental_mapping(database_path, image_dir, scratch, options=options)
        return largest(models, "colmap_incremental")


@MAPPERS.register("colmap_global", min_model_size=3, min_num_matches=15, refine_focal_length=True,
                  refine_principal_point=False, refine_extra_params=True, num_threads=-1)
def colmap_global(database_path: Path, image_dir: Path, output_dir: Path, conf: dict[str, Any],
                  device: torch.device, seed: int = 0) -> pycolmap.Reconstruction:
    """COLMAP's global mapper (GLOMAP: rotation averaging, global positioning, bundle adjustment)."""
    options = pycolmap.GlobalPipelineOptions()
    options.min_model_size = conf["min_model_size"]
    options.min_num_matches = conf["min_num_matches"]
    options.num_threads = conf["num_threads"]
    options.random_seed = seed
    mapper = options.mapper
    mapper.random_seed = seed
    mapper.rotation_averaging.random_seed = seed
    mapper.global_positioning.random_seed = seed
    mapper.global_positioning.use_gpu = device.type == "cuda" and pycolmap.has_cuda
    mapper.bundle_adjustment.ceres.use_gpu = device.type == "cuda" and pycolmap.has_cuda
    mapper.bundle_adjustment.refine_focal_length = conf["refine_focal_length"]
    mapper.bundle_adjustment.refine_principal_point = conf["refine_principal_point"]
    mapper.bundle_adjustment.refine_extra_params = conf["refine_extra_params"]
    with tempfile.TemporaryDirectory(dir=output_dir) as scratch:
        models = pycolmap.global_mapping(database_path, image_dir, scratch, options=options)
        return largest(models, "colmap_global")
