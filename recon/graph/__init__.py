"""Pair selection: which image pairs get matched.

Every strategy is registered in :data:`PAIR_STRATEGIES` with its typed options and is called as
``strategy(names, conf, context) -> list[(name0, name1)]``; the pipeline deduplicates and writes
``pairs.txt``. ``context`` (:class:`PairsContext`) gives what strategies that look at image content
need: the image folder, ``features.h5`` when local features exist, the device, the seed, and the
matcher stage's options (a network token source such as MASt3R's encodes with the matcher's own
checkpoint and input size, so the matcher can reuse the tokens).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import torch

from ..stages import StageRegistry

PAIR_STRATEGIES = StageRegistry("pairs")


@dataclass
class PairsContext:
    image_dir: Path
    output_dir: Path
    features_path: Path | None = None
    device: torch.device = torch.device("cpu")
    seed: int = 0
    matcher: dict[str, Any] = field(default_factory=dict)


from . import basic  # noqa: E402,F401  (registers exhaustive, sequential, from_file)
from . import scene_graph  # noqa: E402,F401  (registers mast3r_graph)
from . import retrieval  # noqa: E402,F401  (registers retrieval, sequential_retrieval, covisibility, poses)


def reads_features(conf: dict[str, Any], num_images: int) -> bool:
    """Whether pair strategy ``conf`` reads the pipeline's ``features.h5`` for ``num_images``
    images, so that ``recon pairs`` extracts local features only when they are used: the order- and
    file-based strategies never read them, nor do the ASMK ones when a network encodes the tokens
    (and no global descriptors replace them) or when a small collection is matched exhaustively."""
    from .scene_graph import NETWORK_TOKENS, matches_all_pairs

    if conf["name"] in ("exhaustive", "sequential", "from_file"):
        return False
    if conf.get("tokens") in NETWORK_TOKENS and not conf.get("global_descriptors"):
        return False
    return not (conf["name"] == "mast3r_graph" and matches_all_pairs(num_images, conf))
