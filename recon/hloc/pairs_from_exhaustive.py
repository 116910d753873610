"""hloc's ``pairs_from_exhaustive``."""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

from ..io.h5 import list_names
from ..io.pairs import write_pairs
from .common import image_names_from


def main(output: Path, image_list: Path | list[str] | None = None, features: Path | None = None,
         ref_list: Path | list[str] | None = None, ref_features: Path | None = None) -> None:
    """All pairs of the images (from ``image_list`` or ``features``); with references, every
    query against every reference instead."""
    if image_list is not None:
        queries = image_names_from(image_list)
    elif features is not None:
        queries = list_names(features)
    else:
        raise ValueError("Provide either a list of images or a feature file.")
    if ref_list is None and ref_features is None:
        pairs = list(combinations(queries, 2))
    else:
        references = image_names_from(ref_list) if ref_list is not None else list_names(ref_features)
        pairs = [(q, r) for q in queries for r in references if q != r]
    write_pairs(output, pairs)
