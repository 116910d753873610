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
