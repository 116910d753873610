"""Fingerprints of stage configurations, so a stage's output is reused only for the same inputs.

Each output file records the fingerprint of the configuration that produced it (an HDF5 root
attribute, or a JSON sidecar). A resumed run with the same fingerprint continues where it
stopped; a different one starts that stage (and everything after it) afresh.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def fingerprint(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts (dict key order does not matter)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def content_digest(path: str | os.PathLike) -> str:
    """SHA-1 of a file's bytes: results cached per image follow the image's content, not its name
    (the MASt3R reference keyed its cache by path, so an edited image kept stale predictions)."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def weights_identity(weights: str | os.PathLike) -> str:
    """What a network's checkpoint is, for cache keys: a registered name (``""``, ``official``,
    a checkpoint name) as given; an existing file as its resolved path, size and modification
    time, so a checkpoint retrained into the same path invalidates what was cached from it
    (hashing a 1-2 GB checkpoint on every run would cost seconds)."""
    path = Path(weights)
    if str(weights) and path.is_file():
        stat = path.stat()
        return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return str(weights)
