"""Focal priors from EXIF, or COLMAP's default guess."""
from __future__ import annotations

from typing import Any

from ..io.images import DEFAULT_FOCAL_FACTOR, ImageInfo
from . import PRIORS

FocalPriors = dict[str, tuple[float, str]]


@PRIORS.register("exif")
def exif_priors(infos: list[ImageInfo], conf: dict[str, Any], context: Any = None) -> FocalPriors:
    """EXIF focal when present (source ``exif``), else 1.2 x max(width, height) (``default``)."""
    return {info.name: (info.exif_focal, "exif") if info.exif_focal else (default_focal(info), "default")
            for info in infos}


@PRIORS.register("none")
def no_priors(infos: list[ImageInfo], conf: dict[str, Any], context: Any = None) -> FocalPriors:
    """Ignore EXIF: every image starts from COLMAP's default focal guess."""
    return {info.name: (default_focal(info), "default") for info in infos}


def default_focal(info: ImageInfo) -> float:
    return DEFAULT_FOCAL_FACTOR * max(info.width, info.height)
