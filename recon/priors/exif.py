"""The priors stage's choices: focal priors from EXIF, Depth Pro, or COLMAP's default guess.

All of them apply one precedence rule, :func:`recon.priors.focal.focal_prior`
(EXIF > depth network > 1.2 x max(width, height)).
"""
from __future__ import annotations

from typing import Any

from ..io.images import ImageInfo, read_image
from . import PRIORS
from .focal import focal_prior

FocalPriors = dict[str, tuple[float, str]]


@PRIORS.register("exif")
def exif_priors(infos: list[ImageInfo], conf: dict[str, Any], context: Any = None) -> FocalPriors:
    """EXIF focal when present (source ``exif``), else 1.2 x max(width, height) (``default``)."""
    return {i.name: focal_prior(i.name, i.exif_focal, None, i.width, i.height) for i in infos}


@PRIORS.register("none")
def no_priors(infos: list[ImageInfo], conf: dict[str, Any], context: Any = None) -> FocalPriors:
    """Ignore EXIF: every image starts from COLMAP's default focal guess."""
    return {i.name: focal_prior(i.name, None, None, i.width, i.height) for i in infos}


@PRIORS.register("depth_pro", weights="official", use_exif=True)
def depth_pro_priors(infos: list[ImageInfo], conf: dict[str, Any], context: Any) -> FocalPriors:
    """EXIF focal when present (and ``use_exif``), else Depth Pro's field-of-view estimate.

    ``context`` is the pipeline (its image folder and device). Depth Pro runs only on images
    without a usable EXIF focal.
    """
    import matchers
    from tqdm import tqdm

    from .depth import DepthProSource

    pending = [i for i in infos if not (conf["use_exif"] and i.exif_focal)]
    source = None
    if pending:
        model = matchers.load("depth_pro", weights=conf["weights"] or None, device=context.device)
        source = DepthProSource(model, lambda name: read_image(context.image_dir / name))
    priors = {}
    for info in tqdm(infos, desc="depth_pro priors", unit="img", disable=not pending):
        exif = info.exif_focal if conf["use_exif"] else None
        priors[info.name] = focal_prior(info.name, exif, source, info.width, info.height)
    return priors
