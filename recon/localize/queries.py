"""Query images and their intrinsics: hloc's query lists, or a folder of images.

hloc's query list (``parse_image_lists(..., with_intrinsics=True)``) has one query per line,
``name MODEL WIDTH HEIGHT PARAMS...`` with COLMAP's camera model and parameter order, e.g.
``query/0001.jpg SIMPLE_RADIAL 1024 768 1280 512 384 0.01``. recon also accepts a line with the
name alone: that query's intrinsics are unknown and are estimated (see :func:`query_cameras`).
A folder of images gives queries with unknown intrinsics, named as recon names images (relative
``/`` paths, sorted).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pycolmap

from ..io.images import ImageInfo, list_image_files
from ..priors import PRIORS


@dataclass(frozen=True)
class Query:
    """One query: its name (relative to the query image folder) and its given camera, if any."""

    name: str
    camera: pycolmap.Camera | None = None


@dataclass
class QueryCamera:
    """The camera a query is localized with, and where its focal length came from.

    source: ``given`` (query list), or the focal prior's source (``exif``, ``default``, ...).
    estimate_focal: the PnP solver searches the focal length (P4Pf) instead of trusting it.
    refine_focal: the focal length is refined with the pose.
    """

    camera: pycolmap.Camera
    source: str
    estimate_focal: bool
    refine_focal: bool


def parse_camera(fields: list[str], where: str) -> pycolmap.Camera:
    """``MODEL WIDTH HEIGHT PARAMS...`` -> a COLMAP camera (parameter count checked)."""
    model, width, height, *params = fields
    if model not in pycolmap.CameraModelId.__members__ or model == "INVALID":
        raise ValueError(f"{where}: unknown camera model '{model}'")
    try:
        camera = pycolmap.Camera.create_from_model_name(0, model, 1.0, int(width), int(height))
        values = [float(v) for v in params]
    except ValueError as error:
        raise ValueError(f"{where}: bad intrinsics {' '.join(fields)!r} ({error})") from None
    if len(values) != len(camera.params):
        raise ValueError(f"{where}: {model} takes {len(camera.params)} parameters ({camera.params_info}), "
                         f"got {len(values)}")
    camera.params = values
    return camera


def parse_query_list(path: str | os.PathLike) -> list[Query]:
    """Queries of an hloc query list; lines ``name`` alone have unknown intrinsics."""
    queries = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        name, rest = fields[0], fields[1:]
        if rest and len(rest) < 4:
            raise ValueError(f"{path}:{number}: expected 'name' or 'name MODEL WIDTH HEIGHT PARAMS...', got {line!r}")
        queries.append(Query(name, parse_camera(rest, f"{path}:{number}") if rest else None))
    names = [q.name for q in queries]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: a query is listed twice")
    if not queries:
        raise ValueError(f"{path}: no queries listed")
    return queries


def read_queries(source: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> tuple[list[Query], Path]:
    """Queries from a folder (unknown intrinsics) or a list file; returns them and their image folder.

    A list's names are relative to ``image_dir`` (default: the list's folder).
    """
    source = Path(source)
    if source.is_dir():
        names = list_image_files(source)
        if not names:
            raise ValueError(f"no query images found under {source}")
        return [Query(name) for name in names], source
    if not source.is_file():
        raise FileNotFoundError(f"queries {source} is neither a folder of images nor a query list")
    return parse_query_list(source), Path(image_dir) if image_dir is not None else source.parent


def query_cameras(queries: list[Query], infos: dict[str, ImageInfo], priors_conf: dict[str, Any],
                  conf: dict[str, Any]) -> dict[str, QueryCamera]:
    """The camera of every readable query.

    Given intrinsics are used as they are (checked against the image size). Otherwise a
    ``conf["camera_model"]`` camera starts from the configured priors stage's focal (EXIF, ...)
    with the principal point at the centre; with ``conf["estimate_focal"]``: ``auto`` the PnP
    solver searches the focal when the prior is COLMAP's default guess and refines a real prior,
    ``always`` searches it for every query without given intrinsics, ``never`` keeps the prior.
    """
    mode = conf["estimate_focal"]
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"localize.estimate_focal must be auto, always or never, got '{mode}'")
    unknown = [infos[q.name] for q in queries if q.camera is None and q.name in infos]
    priors = PRIORS.get(priors_conf["name"]).function(unknown, priors_conf, None) if unknown else {}
    cameras = {}
    for query in queries:
        info = infos.get(query.name)
        if info is None:
            continue
        if query.camera is not None:
            if (query.camera.width, query.camera.height) != (info.width, info.height):
                raise ValueError(f"query {query.name}: the listed camera is {query.camera.width}x{query.camera.height} "
                                 f"but the image is {info.width}x{info.height}")
            cameras[query.name] = QueryCamera(copy.copy(query.camera), "given", False, False)
            continue
        focal, source = priors[query.name]
        camera = pycolmap.Camera.create_from_model_name(0, conf["camera_model"], focal, info.width, info.height)
        search = mode == "always" or (mode == "auto" and source == "default")
        cameras[query.name] = QueryCamera(camera, source, search, mode != "never")
    return cameras


def camera_dict(camera: pycolmap.Camera) -> dict[str, Any]:
    """A camera as JSON (hloc's log layout: model, width, height, params)."""
    return {"model": camera.model_name, "width": camera.width, "height": camera.height,
            "params": [float(v) for v in camera.params]}
