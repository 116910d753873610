"""Visual localization of query images against a model (hloc's localize_sfm, without its
borrowed-pose failure mode).

``localize(model, queries, image_dir, out, config)`` -> ``out/results.txt`` (hloc's format) and
``out/localization.json``; :mod:`.queries` (query lists, intrinsics), :mod:`.retrieval` (which
database images to match), :mod:`.covisibility` (model arrays, covisibility clusters),
:mod:`.localize` (2D-3D lifting, PnP, failure reasons), :mod:`.results` (results file),
:mod:`.evaluate` (recall and median errors against ground truth), :mod:`.map` (a map from known
poses).
"""
from .evaluate import DEFAULT_THRESHOLDS, evaluate_localization, format_localization_table
from .map import triangulate_known_poses
from .queries import Query, parse_query_list, read_queries
from .results import read_results, write_results
from .run import localize

__all__ = [
    "DEFAULT_THRESHOLDS",
    "Query",
    "evaluate_localization",
    "format_localization_table",
    "localize",
    "parse_query_list",
    "read_queries",
    "read_results",
    "triangulate_known_poses",
    "write_results",
]
