"""Focal-length (and later metric-scale) priors per image.

Every priors choice is registered in :data:`PRIORS` and called as
``prior(infos, conf, context) -> {name: (focal_px, source)}``; the database stage writes the
focal as the camera's prior (``has_prior_focal_length`` when it came from a real source) and
report.json records each image's source.
"""
from __future__ import annotations

from ..stages import StageRegistry

PRIORS = StageRegistry("priors")

from . import exif  # noqa: E402,F401  (registers exif, none)
