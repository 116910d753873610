"""Pipeline configuration: YAML presets in ``configs/`` plus ``--set stage.key=value`` overrides.

A config names one choice per stage - ``features``, ``matcher``, ``pairs``, ``priors``,
``mapper`` - each as ``{name: <choice>, <option>: <value>, ...}``, plus the ``database`` options
(cameras and geometric verification), the ``localize`` options (``recon localize``) and the
run-wide ``device`` and ``seed``. Every option has
a typed default in code, next to the code that uses it (a model's ``default_conf``, a stage
choice's registered defaults, :data:`DATABASE_DEFAULTS`); a preset or ``--set`` only overrides
them, and an unknown stage, choice or option is an error that names it.

When ``--set stage.name=X`` switches a stage to another choice than the preset's, the preset's
options for that stage are dropped (they belonged to the other choice).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

import matchers
from matchers.base import ConfigError, merge_conf
from .match.orientation import ROTATION_CHOICES

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
STAGES = ("features", "matcher", "pairs", "priors", "mapper", "database", "localize")
RUN_DEFAULTS: dict[str, Any] = {"device": "auto", "seed": 0}

# Cameras and two-view verification, i.e. everything that goes into database.db.
DATABASE_DEFAULTS: dict[str, Any] = {
    "camera_mode": "auto",      # auto | single | per_folder | per_image
    "camera_model": "SIMPLE_RADIAL",
    "camera_params": "",        # "f,cx,cy,k" etc. to fix known intrinsics (COLMAP's order)
    "max_error": 4.0,           # RANSAC threshold in pixels
    "confidence": 0.999,
    "min_num_inliers": 15,
    "min_inlier_ratio": 0.25,
}

# Visual localization of query images against a model (``recon localize``, recon.localize).
LOCALIZE_DEFAULTS: dict[str, Any] = {
    "retrieval": "auto",            # auto | exhaustive | bow (bag of visual words on the local features)
    "num_retrieved": 20,            # database images matched per query (bow)
    "exhaustive_max": 50,           # auto: every database image when the map has at most this many
    "vocabulary_size": 1024,        # bow: visual words (k-means on the database descriptors)
    "covisibility_clustering": True,  # hloc's pose_from_cluster: one PnP per covisible cluster
    "ransac_max_error": 12.0,       # PnP RANSAC threshold in pixels (hloc's default)
    "ransac_confidence": 0.99999,
    "min_num_inliers": 20,          # fewer PnP inliers -> failed (RANSAC "succeeds" on 4 random points)
    "min_inlier_ratio": 0.1,        # of the 2D-3D correspondences
    "estimate_focal": "auto",       # auto (when no focal is given or known from EXIF) | always | never
    "camera_model": "SIMPLE_RADIAL",  # model of queries without given intrinsics
    "refine_extra_params": False,   # refine distortion of queries without given intrinsics
}

FIXED_SECTIONS = {"database": DATABASE_DEFAULTS, "localize": LOCALIZE_DEFAULTS}  # options only, no choice

# Options every extractor / matcher stage has besides its model's own ``default_conf``
# (an extractor class may set ``default_resize_max``, e.g. 1024 for ALIKED as in hloc).
# ``rotations``: in-plane rotations (1, 2, 4) tried per image for a common orientation (recon.match.orientation).
FEATURES_EXTRA: dict[str, Any] = {"resize_max": 1600, "rotations": 1, "weights": "official"}
MATCHER_EXTRA: dict[str, Any] = {"weights": "official", "batch_size": 0}  # 0: auto (see recon.match)
# Dense matchers also sample, resize and quantise, or (at_keypoints) match an extractor's
# keypoints through their warp with RoMa's rule (see recon.match.dense).
DENSE_EXTRA: dict[str, Any] = {"resize_max": 1024, "max_matches": 10000, "min_score": 0.0, "cell_size": 2.0,
                               "at_keypoints": False, "keypoint_max_distance": 0.005, "keypoint_min_certainty": 0.0}
# Pair networks (MASt3R) take their architecture from the checkpoint; the stage's options are
# the network's input size, the anchor grid, the match confidence floor and the encoder batch
# (see recon.match.mast3r).
PAIR_MODEL_EXTRA: dict[str, Any] = {"weights": "official", "size": 512, "subsample": 8, "min_conf": 0.0,
                                    "encoder_batch": 4}


def stage_defaults(stage: str, name: str) -> dict[str, Any]:
    """Typed defaults of choice ``name`` of ``stage`` (without the ``name`` key)."""
    if stage in FIXED_SECTIONS:
        return dict(FIXED_SECTIONS[stage])
    if stage in ("features", "matcher"):
        if stage == "features" and name == "none":
            return {}
        cls = _model_class(stage, name)
        if cls.kind == "pair_model":
            return dict(PAIR_MODEL_EXTRA)
        extra = FEATURES_EXTRA if stage == "features" else MATCHER_EXTRA
        if stage == "features":
            extra = {**extra, "resize_max": getattr(cls, "default_resize_max", extra["resize_max"])}
        if cls.kind == "dense_matcher":
            extra = {**extra, **DENSE_EXTRA}
        return {**cls.default_conf, **extra}
    return dict(_registry(stage).get(name).defaults)


def _model_class(stage: str, name: str):
    kinds = ("extractor",) if stage == "features" else ("matcher", "dense_matcher", "pair_model")
    try:
        cls = matchers.model_class(name)
    except KeyError as error:
        raise ConfigError(f"{stage}: {error.args[0]}") from None
    if cls.kind not in kinds:
        raise ConfigError(f"{stage}: '{name}' is a {cls.kind} model; {stage} takes {' or '.join(kinds)} models")
    return cls


def _registry(stage: str):
    if stage == "pairs":
        from .graph import PAIR_STRATEGIES
        return PAIR_STRATEGIES
    if stage == "mapper":
        from .mapping import MAPPERS
        return MAPPERS
    if stage == "priors":
        from .priors import PRIORS
        return PRIORS
    raise ConfigError(f"unknown stage '{stage}' (stages: {', '.join(STAGES)})")


def preset_path(preset: str | os.PathLike) -> Path:
    """A preset name (``default``, ``aliked_lightglue``) or a path to a YAML file."""
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = CONFIG_DIR / f"{preset}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config '{preset}' is neither a YAML file nor a preset in {CONFIG_DIR} ({known})")


def parse_override(text: str) -> tuple[str, str, Any]:
    """``stage.key=value`` -> (stage, key, value); the value is parsed as YAML (numbers, bools)."""
    if "=" not in text:
        raise ConfigError(f"--set expects stage.key=value, got '{text}'")
    path, raw = text.split("=", 1)
    if path in RUN_DEFAULTS:
        return "", path, yaml.safe_load(raw) if raw else raw
    if "." not in path:
        raise ConfigError(f"--set expects stage.key=value, got '{text}'")
    stage, key = path.split(".", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    return stage, key, value


def load_config(preset: str | os.PathLike | None = "default", overrides: list[str] = (),
                **run: Any) -> dict[str, Any]:
    """Read a preset, apply ``--set`` overrides and ``run`` keywords, validate every key.

    Returns ``{"features": {"name": ..., **options}, ..., "device": ..., "seed": ...}`` with
    every option filled from its typed default.
    """
    raw: dict[str, Any] = {}
    if preset is not None:
        path = preset_path(preset)
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of stages")
    raw = copy.deepcopy(raw)
    for text in overrides:
        stage, key, value = parse_override(text)
        if not stage:
            raw[key] = value
            continue
        section = raw.setdefault(stage, {})
        if not isinstance(section, dict):
            raise ConfigError(f"{stage}: expected a mapping, got {section!r}")
        if key == "name" and section.get("name") not in (None, value):
            section.clear()
        section[key] = value
    raw.update({k: v for k, v in run.items() if v is not None})
    return validate_config(raw)


def default_choice(stage: str) -> str:
    return {"features": "sift", "matcher": "nearest_neighbor", "pairs": "mast3r_graph",
            "priors": "exif", "mapper": "colmap_incremental"}[stage]


def validate_config(raw: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(STAGES) - set(RUN_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown} (stages: {', '.join(STAGES)}; run keys: "
                          f"{', '.join(RUN_DEFAULTS)})")
    config: dict[str, Any] = merge_conf(RUN_DEFAULTS, {k: raw[k] for k in RUN_DEFAULTS if k in raw}, "config")
    for stage in STAGES:
        section = dict(raw.get(stage) or {})
        if stage in FIXED_SECTIONS:
            config[stage] = merge_conf(FIXED_SECTIONS[stage], section, stage)
            continue
        name = str(section.pop("name", default_choice(stage)))
        config[stage] = {"name": name, **merge_conf(stage_defaults(stage, name), section, f"{stage}.{name}")}
    if config["matcher"].get("at_keypoints") and not hasattr(_model_class("matcher", config["matcher"]["name"]),
                                                             "match_keypoints"):
        raise ConfigError(f"matcher.at_keypoints: {config['matcher']['name']} has no dense warp to match given "
                          "keypoints through (only warp-based matchers such as RoMa, GIM_RoMa, GIM_DKM do)")
    if config["features"].get("rotations", 1) not in ROTATION_CHOICES:
        raise ConfigError(f"features.rotations must be one of {ROTATION_CHOICES}, got {config['features']['rotations']!r}")
    if "tokens" in config["pairs"]:  # the ASMK strategies (mast3r_graph, sequential_retrieval)
        from .graph.scene_graph import check_token_options
        check_token_options(config["pairs"])
    if config["matcher"].get("at_keypoints") and config["features"]["name"] == "none":
        raise ConfigError(f"matcher.at_keypoints: {config['matcher']['name']} matches an extractor's keypoints, "
                          "but features.name is none (e.g. --set features.name=sift)")
    return config
