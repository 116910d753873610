"""Pairs files: one ``name0 name1`` per line, the query first (hloc's format)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Pairs in file order; blank lines and ``#`` comments are skipped."""
    pairs = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected 'name0 name1', got {line!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def write_pairs(path: str | os.PathLike, pairs: Iterable[tuple[str, str]]) -> None:
    """Write pairs atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    os.replace(tmp, path)


def unique_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop self pairs and repeats of an unordered pair, keeping the first order seen."""
    seen: set[frozenset[str]] = set()
    out = []
    for a, b in pairs:
        key = frozenset((a, b))
        if a == b or key in seen:
            continue
        seen.add(key)
        out.append((a, b))
    return out
