"""Small builders shared by tests (not fixtures: plain functions with explicit inputs)."""
from __future__ import annotations

import shutil
from pathlib import Path

from conftest import shared_path

TEMPLE = ("middlebury_temple", "templeRing_partial")


def temple_subset(destination: Path, count: int = 5, start: int = 13) -> Path:
    """Copy ``count`` consecutive templeRing views (640x480, ~8 degrees apart) into a folder."""
    source = shared_path("data", *TEMPLE)
    destination.mkdir(parents=True, exist_ok=True)
    for index in range(start, start + count):
        shutil.copy(source / f"templeR{index:04d}.png", destination)
    return destination


def count_batches(monkeypatch, owner: type, method: str) -> list[int]:
    """Patch ``owner.method`` to record the batch size of each call (the length of its first
    argument) and still run the real method; returns the list the sizes are appended to."""
    calls: list[int] = []
    real = getattr(owner, method)

    def counting(self, batch, *args, **kwargs):
        calls.append(len(batch))
        return real(self, batch, *args, **kwargs)

    monkeypatch.setattr(owner, method, counting)
    return calls
