"""The bundled sample scene (``datasets/sample`` in the source tree): images and exact GT."""
from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "datasets" / "sample"


def sample_paths() -> tuple[Path, Path]:
    """(images folder, ground-truth COLMAP text model) of the bundled sample."""
    images, gt = SAMPLE_DIR / "images", SAMPLE_DIR / "gt"
    if not images.is_dir() or not gt.is_dir():
        raise FileNotFoundError(f"the bundled sample is not at {SAMPLE_DIR}; recon demo needs a source "
                                "checkout installed with `pip install -e .` (or render one: recon render OUT)")
    return images, gt
