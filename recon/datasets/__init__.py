"""Dataset code: ground-truth loaders for benchmark layouts, the synthetic scene renderer
(`render`) and the bundled sample (`sample`).

Data itself lives in the top-level ``datasets/`` folder (not a package); this is the code.
"""
from .ground_truth import (
    GroundTruth,
    GroundTruthImage,
    load_colmap,
    load_ground_truth,
    load_middlebury,
    load_strecha,
    load_transforms_json,
)

__all__ = [
    "GroundTruth",
    "GroundTruthImage",
    "load_colmap",
    "load_ground_truth",
    "load_middlebury",
    "load_strecha",
    "load_transforms_json",
]
