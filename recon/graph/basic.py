"""Pair strategies that need no image content: exhaustive, sequential, from a file."""
from __future__ import annotations

from itertools import combinations

from ..io.pairs import read_pairs
from . import PAIR_STRATEGIES, PairsContext


@PAIR_STRATEGIES.register("exhaustive")
def exhaustive_pairs(names: list[str], conf: dict, context: PairsContext) -> list[tuple[str, str]]:
    """Every unordered pair once, in name order (hloc's pairs_from_exhaustive)."""
    return list(combinations(names, 2))


@PAIR_STRATEGIES.register("sequential", overlap=10, quadratic_overlap=True)
def sequential_pairs(names: list[str], conf: dict, context: PairsContext) -> list[tuple[str, str]]:
    """Each image with its ``overlap`` successors in name order (video frames), as COLMAP's
    sequential matcher; with ``quadratic_overlap`` also with the successors at distance 2^k for
    k < overlap, which closes longer gaps at logarithmic cost."""
    overlap = conf["overlap"]
    if overlap < 1:
        raise ValueError(f"pairs.sequential: overlap must be >= 1, got {overlap}")
    pairs = []
    for i, name in enumerate(names):
        steps = set(range(1, overlap + 1))
        if conf["quadratic_overlap"]:
            steps |= {2**k for k in range(overlap)}
        pairs.extend((name, names[i + step]) for step in sorted(steps) if i + step < len(names))
    return pairs


@PAIR_STRATEGIES.register("from_file", path="")
def pairs_from_file(names: list[str], conf: dict, context: PairsContext) -> list[tuple[str, str]]:
    """Pairs listed in an hloc pairs file (``name0 name1`` per line); names must be images we have."""
    if not conf["path"]:
        raise ValueError("pairs.from_file needs pairs.path=<pairs file>")
    pairs = read_pairs(conf["path"])
    known = set(names)
    unknown = sorted({n for pair in pairs for n in pair if n not in known})
    if unknown:
        raise ValueError(f"{conf['path']} names {len(unknown)} image(s) not in the image folder, e.g. {unknown[:3]}")
    return pairs
