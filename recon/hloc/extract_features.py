"""hloc's ``extract_features`` on recon's extractors."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matchers
from ..io.images import list_image_files
from ..match import extract_features
from .common import image_names_from

logger = logging.getLogger(__name__)

# hloc's names for the same extractors; options that have no counterpart are dropped with a log line.
MODEL_NAMES = {"dog": "sift", "sift": "sift", "aliked": "aliked", "disk": "disk", "superpoint": "superpoint"}

confs: dict[str, dict[str, Any]] = {
    "sift": {"output": "feats-sift", "model": {"name": "dog"},
             "preprocessing": {"grayscale": True, "resize_max": 1600}},
    "aliked-n16": {"output": "feats-aliked-n16", "model": {"name": "aliked", "model_name": "aliked-n16"},
                   "preprocessing": {"grayscale": False, "resize_max": 1024}},
    "disk": {"output": "feats-disk", "model": {"name": "disk", "max_keypoints": 5000},
             "preprocessing": {"grayscale": False, "resize_max": 1600}},
    "superpoint_max": {"output": "feats-superpoint-n4096-rmax1600",
                       "model": {"name": "superpoint", "nms_radius": 3, "max_keypoints": 4096},
                       "preprocessing": {"grayscale": True, "resize_max": 1600}},
    "superpoint_aachen": {"output": "feats-superpoint-n4096-r1024",
                          "model": {"name": "superpoint", "nms_radius": 3, "max_keypoints": 4096},
                          "preprocessing": {"grayscale": True, "resize_max": 1024}},
    # OmniGlue's extractor: sp_v6 SuperPoint + DINOv2 features, on the original images.
    "omniglue": {"output": "feats-omniglue-n1024",
                 "model": {"name": "omniglue_superpoint", "max_num_keypoints": 1024},
                 "preprocessing": {"grayscale": False, "resize_max": 0}},
}


def stage_conf(conf: dict[str, Any]) -> dict[str, Any]:
    """An hloc extraction conf as a recon ``features`` stage conf (unknown options dropped)."""
    model = dict(conf["model"])
    hloc_name = model.pop("name")
    name = MODEL_NAMES.get(hloc_name, hloc_name)
    defaults = matchers.model_class(name).default_conf
    dropped = sorted(set(model) - set(defaults))
    if dropped:
        logger.info("extract_features: options %s of hloc's '%s' have no recon counterpart; ignored", dropped, hloc_name)
    stage = {"name": name, **{k: v for k, v in model.items() if k in defaults}}
    stage["resize_max"] = int(conf.get("preprocessing", {}).get("resize_max") or 0)
    stage["weights"] = "official"
    return stage


def main(conf: dict, image_dir: Path, export_dir: Path | None = None, as_half: bool = True,
         image_list: Path | list[str] | None = None, feature_path: Path | None = None,
         overwrite: bool = False) -> Path:
    """Extract features of every image into ``feature_path`` (default ``export_dir/<output>.h5``).

    ``as_half`` is accepted for compatibility: recon stores float32, which hloc reads unchanged.
    Images already in the file are skipped unless ``overwrite``.
    """
    if feature_path is None:
        if export_dir is None:
            raise ValueError("Provide either an export_dir or a feature_path.")
        feature_path = Path(export_dir, conf["output"] + ".h5")
    feature_path = Path(feature_path)
    names = image_names_from(image_list) if image_list is not None else list_image_files(image_dir)
    if overwrite:
        feature_path.unlink(missing_ok=True)
    extract_features(Path(image_dir), names, stage_conf(conf), feature_path, matchers.resolve_device("auto"))
    return feature_path
