"""The priors stage's choices: focal priors from EXIF, Depth Pro, or COLMAP's default guess;
and, for testing, the exact depth of a rendered scene (``ground_truth``).

Depth choices (``depth_pro``, ``ground_truth``) also keep every image's metric depth map in
``priors-depth.h5`` for the metric scale after mapping and the alignment's depth term.

All of them apply one precedence rule, :func:`recon.priors.focal.focal_prior`
(EXIF > depth network > 1.2 x max(width, height)).
"""
from __future__ import annotations

from typing import Any, Callable

from ..fingerprint import fingerprint
from ..io.images import ImageInfo, read_image
from . import PRIORS
from .depth import DepthProSource, DepthSource, cache_depths
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


def depth_stamp(conf: dict[str, Any], infos: list[ImageInfo]) -> str:
    """Fingerprint of a depth choice's cached maps: its options except the metric-scale switch
    (turning the scale step on or off must not rerun a network), and the images."""
    options = {k: v for k, v in conf.items() if k != "metric_scale"}
    return fingerprint("priors-depth", options, [(i.name, i.width, i.height, i.exif_focal) for i in infos])


def is_depth_choice(conf: dict[str, Any]) -> bool:
    """Depth choices (they keep metric depth maps) are those with the ``metric_scale`` switch."""
    return "metric_scale" in conf


def depth_priors(infos: list[ImageInfo], conf: dict[str, Any], context: Any,
                 open_source: Callable[[], DepthSource]) -> FocalPriors:
    """The body every depth choice shares: each image's depth and focal computed once into
    ``context.depth_path`` (:func:`~recon.priors.depth.cache_depths`; ``open_source`` is called
    only when some image is missing, so a resumed run loads no network), then the focal prior by
    the precedence rule, the EXIF focal counting only with ``use_exif``."""
    if context is None or not hasattr(context, "depth_path"):
        raise ValueError(f"priors.{conf['name']} runs inside the reconstruction pipeline (it keeps depth maps in "
                         "the output folder); use priors.name=exif or none here")
    names = [i.name for i in infos]
    cached = cache_depths(open_source, names, context.depth_path, depth_stamp(conf, infos))
    return {i.name: focal_prior(i.name, i.exif_focal if conf["use_exif"] else None, cached, i.width, i.height)
            for i in infos}


@PRIORS.register("depth_pro", weights="official", use_exif=True, metric_scale=True)
def depth_pro_priors(infos: list[ImageInfo], conf: dict[str, Any], context: Any) -> FocalPriors:
    """Depth Pro on every image: metric depth kept for the metric scale, focal from EXIF (with
    ``use_exif``) else from Depth Pro's field-of-view head.

    ``context`` is the pipeline (image folder, device, ``depth_path``). The EXIF focal, when
    known and used, is given to the network so its metric depth uses it (as the official CLI
    does). ``metric_scale``: scale the model to metres after mapping (:mod:`recon.priors.scale`).
    """
    def open_source() -> DepthSource:
        import matchers
        model = matchers.load("depth_pro", weights=conf["weights"] or None, device=context.device)
        exif = {i.name: i.exif_focal for i in infos} if conf["use_exif"] else {}
        return DepthProSource(model, lambda name: read_image(context.image_dir / name), exif.get)

    return depth_priors(infos, conf, context, open_source)


@PRIORS.register("ground_truth", scene="", use_exif=True, metric_scale=True)
def ground_truth_priors(infos: list[ImageInfo], conf: dict[str, Any], context: Any) -> FocalPriors:
    """Test oracle: exact depth maps and true focal lengths of a scene written by ``recon render
    --depth`` (``scene`` = its folder), standing where Depth Pro stands so the priors, the metric
    scale and the alignment's depth term are measured against a known answer."""
    from ..datasets.oracle import SceneDepthSource

    return depth_priors(infos, conf, context, lambda: SceneDepthSource(conf["scene"]))
