"""``recon localize MODEL QUERIES OUT``: query images -> poses in the model's frame.

Stages, each a file in ``OUT`` (hloc's names; rerunning resumes like the reconstruction):
``features.h5`` (query features, the map's extractor configuration), ``pairs.txt`` (query,
retrieved database image), ``matches.h5``, then ``results.txt`` (hloc's results format, one line
per LOCALIZED query) and ``localization.json`` (per query: success, reason of a failure,
inliers, retrieved images, covisibility clusters, camera, pose). Names in ``results.txt`` are the
query names as given (paths relative to the query folder); hloc's ``localize_sfm`` writes the
file name only, which :mod:`recon.hloc.localize_sfm` reproduces.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import h5py

import matchers
from ..evaluate.report import load_model
from ..fingerprint import fingerprint
from ..io.images import scan_images
from ..io.jsonfile import write_json
from ..io.pairs import unique_pairs, write_pairs
from ..match import extract_features, match_pairs
from .covisibility import MapIndex
from .localize import QueryResult, check_map_features, failed, localize_queries
from .queries import Query, query_cameras
from .results import write_results
from .retrieval import make_retrieval

logger = logging.getLogger(__name__)


def map_features_path(model_path: Path, given: Path | None = None) -> Path:
    """The database features of a model: ``given``, else ``features.h5`` of the recon output
    folder the model belongs to (``OUT`` or ``OUT/sparse/0``)."""
    if given is not None:
        if not Path(given).is_file():
            raise FileNotFoundError(f"map features {given} do not exist")
        return Path(given)
    for folder in (model_path, model_path.parent.parent):
        if (folder / "features.h5").is_file():
            return folder / "features.h5"
    raise FileNotFoundError(f"no features.h5 next to the model {model_path}; pass the map's features "
                            "(--map-features) from which the model was built")


def check_extractor(map_features: Path, features_conf: dict[str, Any]) -> None:
    """Queries must be described like the map: the same extractor configuration (recorded by
    recon in the features file; a file without the record, e.g. hloc's, is trusted)."""
    with h5py.File(map_features, "r") as f:
        stamp = f.attrs.get("recon_fingerprint")
    if stamp is not None and stamp != fingerprint("features", features_conf):
        raise ValueError(f"{map_features} was extracted with another features configuration than this run's "
                         f"({features_conf}); pass the map's config (--config / --set features.*)")


def localize(model_path: str | os.PathLike, queries: list[Query], image_dir: str | os.PathLike,
             output_dir: str | os.PathLike, config: dict[str, Any],
             map_features: str | os.PathLike | None = None) -> dict[str, QueryResult]:
    """Localize ``queries`` (images under ``image_dir``) against the model; write ``output_dir``.

    Returns the result per query (also in ``localization.json``; poses in ``results.txt``).
    """
    start = time.perf_counter()
    model_path, output_dir, image_dir = Path(model_path), Path(output_dir), Path(image_dir)
    conf, seed = config["localize"], int(config["seed"])
    device = matchers.resolve_device(config["device"])
    model = load_model(model_path)
    database_features = map_features_path(model_path, Path(map_features) if map_features else None)
    index = MapIndex(model)
    if not index.ids_by_name:
        raise ValueError(f"{model_path}: the model has no registered image")
    check_map_features(index, database_features)
    check_extractor(database_features, config["features"])

    infos, unreadable = scan_images(image_dir, [q.name for q in queries])
    cameras = query_cameras(queries, {info.name: info for info in infos}, config["priors"], conf)
    names = [info.name for info in infos]
    output_dir.mkdir(parents=True, exist_ok=True)
    query_features = output_dir / "features.h5"
    timings = {}
    timings["features"] = _timed(extract_features, image_dir, names, config["features"], query_features, device)

    tic = time.perf_counter()
    retrieval = make_retrieval(conf, sorted(index.ids_by_name), database_features, query_features, seed)
    retrieved = {name: retrieval.retrieve(name, conf["num_retrieved"]) for name in names}
    pairs = unique_pairs((q, d) for q in names for d in retrieved[q])
    write_pairs(output_dir / "pairs.txt", pairs)
    timings["retrieval"] = time.perf_counter() - tic
    timings["matches"] = _timed(match_pairs, pairs, query_features, config["matcher"], output_dir / "matches.h5",
                                device, features_ref=database_features)

    tic = time.perf_counter()
    results = localize_queries(names, cameras, retrieved, index, query_features, output_dir / "matches.h5", conf, seed)
    for name, reason in unreadable:
        results[name] = failed(name, "unreadable_image", reason)
    results = {q.name: results[q.name] for q in queries}
    timings["pose"] = time.perf_counter() - tic
    timings["total"] = time.perf_counter() - start
    write_outputs(output_dir, results, {"model": str(model_path), "map_features": str(database_features),
                                        "timings": {k: round(v, 3) for k, v in timings.items()}, "config": config})
    return results


def _timed(function, *args, **kwargs) -> float:
    tic = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - tic


def write_outputs(output_dir: Path, results: dict[str, QueryResult], extra: dict[str, Any]) -> None:
    """``results.txt`` (localized queries only) and ``localization.json`` (every query)."""
    write_results(output_dir / "results.txt", {n: r.best.pose for n, r in results.items() if r.success})
    localized = sum(r.success for r in results.values())
    write_json(output_dir / "localization.json", {
        "num_queries": len(results), "num_localized": localized,
        "failed": sorted(n for n, r in results.items() if not r.success),
        "queries": {n: r.to_json() for n, r in results.items()}, **extra})
    logger.info("localized %d / %d queries -> %s", localized, len(results), output_dir / "results.txt")
