"""Focal prior of an image: EXIF, else a depth source's estimate, else COLMAP's default.

Precedence of the focal prior of each image (:func:`focal_prior`):

1. EXIF (focal length converted to pixels by the image reader) - the camera told us;
2. a :class:`~recon.priors.depth.DepthSource` with a focal estimate (Depth Pro's FOV head);
3. COLMAP's default, ``1.2 * max(width, height)`` (``ImageReaderOptions.default_focal_length_factor``).

The chosen value becomes the camera's prior focal in the database and its source is recorded in
report.json. After mapping, :mod:`recon.priors.scale` turns the same depth source into a metric
scale for the model.
"""
from __future__ import annotations

import math

from .depth import DepthSource

DEFAULT_FOCAL_FACTOR = 1.2  # COLMAP's default_focal_length_factor


def _usable(focal: float | None) -> bool:
    return focal is not None and math.isfinite(focal) and focal > 0


def focal_prior(name: str, exif_focal: float | None, depth_source: DepthSource | None,
                width: int, height: int) -> tuple[float, str]:
    """Focal length in pixels for image ``name`` (``width`` x ``height``) and where it came from.

    Returns ``(focal, source)`` with source ``"exif"``, the depth source's ``name`` (e.g.
    ``"depth_pro"``) or ``"default"``. Missing, non-finite or non-positive values fall through
    to the next rule.
    """
    if _usable(exif_focal):
        return float(exif_focal), "exif"
    if depth_source is not None:
        estimate = depth_source.focal_px(name)
        if _usable(estimate):
            return float(estimate), depth_source.name
    return DEFAULT_FOCAL_FACTOR * max(width, height), "default"

